"""Exception and warning types shared by the library; the CLI maps them to exit codes.

Exit codes (docs/spec.md): 2 for bad input (:class:`InvalidInputError` and subclasses), 1 for
the environment or a failed check (:class:`UnsupportedEnvironmentError`,
:class:`CheckFailedError`), 130 on Ctrl-C.
"""

from __future__ import annotations


class SparseAttnError(Exception):
    """Base class of the project's errors. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class InvalidInputError(SparseAttnError, ValueError):
    """Bad input from the user (spec, argument, request, file): CLI exit code 2.

    The message says what was wrong and how to fix it, on one line.
    """

    exit_code = 2


class PatternSyntaxError(InvalidInputError):
    """A pattern spec string that does not parse; the message points at the bad token."""


class UnsupportedEnvironmentError(SparseAttnError, RuntimeError):
    """The environment lacks something (GPU, TensorRT, a package): CLI exit code 1."""

    exit_code = 1


class BackendNotSupportedError(InvalidInputError):
    """No backend (or not the requested one) can take the given inputs.

    Attributes:
        reasons: ``{backend_name: [reason, ...]}`` explaining each refusal.
    """

    def __init__(self, message: str, reasons: dict[str, list[str]] | None = None) -> None:
        self.reasons = dict(reasons or {})
        detail = "; ".join(f"{k}: {', '.join(v)}" for k, v in self.reasons.items() if v)
        super().__init__(f"{message}" + (f" ({detail})" if detail else ""))


class CheckFailedError(SparseAttnError, RuntimeError):
    """A check of the tool's own output failed (e.g. an exported model differs from PyTorch,
    an engine lacks its plugin layer): CLI exit code 1. A ``RuntimeError`` for old callers."""

    exit_code = 1


class SparseAttnWarning(UserWarning):
    """Base class of the project's warnings (the CLI shows these, and hides third-party ones)."""
