"""Errors a user can cause. The command lines print them as one line and exit with code 2."""

from __future__ import annotations


class HarnessError(Exception):
    """Base class of every user-facing harness error."""


class HookError(HarnessError):
    """The hook module is missing a function, does not load, or returned something the contract forbids."""


class DataError(HarnessError):
    """A dataset is absent or unreadable; the message says which files to put where."""


class DivergenceError(HarnessError):
    """Training produced a non-finite loss; records the 1-based context and step where it happened."""

    def __init__(self, context: int, step: int, what: str = "loss") -> None:
        self.context = context
        self.step = step
        self.what = what
        super().__init__(f"training diverged: non-finite {what} at context {context}, step {step}")
