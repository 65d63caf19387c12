"""A heavy backend stays unimported until a unit of its kind is made (a fresh interpreter checks)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SCRIPT = """
import sys
from pathlib import Path
from enmei.config import load_text
from enmei.engine.loop import Engine
text = '[units.vm]\\nbackend = "qemu"\\n[units.a]\\ncommand = ["/bin/true"]\\n'
loaded = load_text(text, Path("/nonexistent/enmei.toml"))
print(type(loaded.config.units["vm"]).__name__, "enmei.visor.qemu" in sys.modules, "qemu.qmp" in sys.modules)
"""


def test_checking_a_vm_config_imports_neither_the_qemu_backend_nor_qmp() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["QemuUnit", "False", "False"], out.stderr
