"""What the config imports of enmei.detect stays light (a fresh interpreter: this needs a subprocess)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_reading_a_config_loads_no_detector_and_no_numpy() -> None:
    """`enmei check` and the policy sandbox import the config, and with it the detector registry: the
    built-in kinds (and numpy) load only when the registry is asked about kinds."""
    code = ("import sys, enmei.config.load; "
            "print(sorted(m for m in sys.modules if m.startswith('enmei.detect') or m == 'numpy'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    # aging_keys, latency_keys: the aging and latency keys' models and defaults (pydantic and the standard
    # library only).
    assert out.stdout.strip() == ("['enmei.detect', 'enmei.detect.aging_keys', 'enmei.detect.latency_keys', "
                                  "'enmei.detect.protocol', 'enmei.detect.registry']")
    code = ("import sys; from enmei.detect import registry; registry.kinds(); "
            "print('enmei.detect.judges' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "True"
