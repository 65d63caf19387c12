"""Fixtures for policy tests: write a policy file, run it in this process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from enmei.policy.manager import PolicyManager
from enmei.policy.sandbox import InProcessSandbox


@pytest.fixture
def policy_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a policy (Starlark by default) and return its path."""

    def write(text: str, name: str = "policy.star") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return write


@pytest.fixture
def manager(policy_file: Callable[..., Path]) -> Iterator[Callable[..., PolicyManager]]:
    """A PolicyManager over a policy text (or the shipped default with None), in this process."""
    made: list[PolicyManager] = []

    def make(text: str | None = None, **kwargs: Any) -> PolicyManager:
        path = policy_file(text, kwargs.pop("name", "policy.star")) if text is not None else None
        m = PolicyManager(path, sandbox=kwargs.pop("sandbox", InProcessSandbox), **kwargs)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()
