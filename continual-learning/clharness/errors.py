"""Errors a user can cause. The command lines print them as one line and exit with code 2."""

from __future__ import annotations


class HarnessError(Exception):
    """Base class of every user-facing harness error."""


class HookError(HarnessError):
    """The hook module is missing a function, does not load, or returned something the contract forbids."""


class HookRaisedError(HookError):
    """A hook function raised (or called `sys.exit`): which one, the original exception and the user's line.

    `filename`/`lineno` are the deepest frame of the traceback inside the hook module (the line of the user's
    code, even when the exception came from torch or the standard library it called); `context` is the 1-based
    context and `step` the 1-based step (None for `estimate_importance`, which runs after a context). The
    original exception is also the `__cause__`.
    """

    def __init__(
        self,
        message: str,
        *,
        hook: str,
        original: BaseException,
        filename: str | None,
        lineno: int | None,
        context: int | None = None,
        step: int | None = None,
    ) -> None:
        self.hook = hook
        self.original = original
        self.filename = filename
        self.lineno = lineno
        self.context = context
        self.step = step
        super().__init__(message)


class DataError(HarnessError):
    """A dataset is absent or unreadable; the message says which files to put where."""


class DivergenceError(HarnessError):
    """Training produced a non-finite loss; records the 1-based context and step where it happened."""

    def __init__(self, context: int, step: int, what: str = "loss") -> None:
        self.context = context
        self.step = step
        self.what = what
        super().__init__(f"training diverged: non-finite {what} at context {context}, step {step}")
