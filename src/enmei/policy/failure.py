"""How a policy failed: ``PolicyFailure``, a ``PolicyError`` with a ``kind`` (syntax, load, runtime, steps,
time, memory, panic, result, decision, crash), and the conversion from the interpreter's ``EvalFailure``.

Its own module so that reading a policy (``program``) and running it (``sandbox``) both raise it without
importing each other.
"""

from __future__ import annotations

from enmei.errors import PolicyError
from enmei.policy.core import EvalFailure

__all__ = ["PolicyFailure", "failure_error"]


class PolicyFailure(PolicyError):
    """A policy could not be loaded or an evaluation failed; ``kind`` says how (see the module docstring)."""

    def __init__(self, kind: str, message: str, *, file: str | None = None, line: int | None = None,
                 column: int | None = None) -> None:
        self.kind = kind
        super().__init__(message, file=file, line=line, column=column)

    def as_notice(self) -> dict[str, object]:
        """The failure as fields of a journal record."""
        return {"kind": self.kind, "error": str(self), "file": self.file, "line": self.line, "column": self.column}


def failure_error(failure: EvalFailure, default_file: str | None = None) -> PolicyError:
    """An ``EvalFailure`` as the ``PolicyError`` enmei raises (kind kept as an attribute)."""
    return PolicyFailure(failure.kind, failure.message, file=failure.file or default_file, line=failure.line,
                         column=failure.column)
