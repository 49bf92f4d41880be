"""Ctrl-C and SIGTERM in the search: one exception, `Interrupted`, raised between database calls, never inside one.

A KeyboardInterrupt raised in the middle of a database call can leave that call's connection holding the SQLite
write lock (the traceback keeps the connection alive). The worker's cleanup then waits the lock timeout on its
own lock, and the command hangs instead of exiting (seen once in CI). So the storage runs each call in
`deferred()`: a signal that arrives there is held and raised as soon as the call returns.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as a shell reports it


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or a scheduler's stop (SIGTERM): handled alike, the signal's name kept for the exit code."""

    def __init__(self, signame: str = "SIGINT") -> None:
        super().__init__(signame)
        self.signame = signame


def signame_of(exc: BaseException) -> str:
    """`SIGTERM` for an `Interrupted` by SIGTERM, else `SIGINT` (a plain KeyboardInterrupt is Ctrl-C)."""
    return exc.signame if isinstance(exc, Interrupted) else "SIGINT"


def interrupt_reason(exc: BaseException) -> str:
    """The fail reason of a trial stopped by a signal."""
    return "interrupted (SIGTERM)" if signame_of(exc) == "SIGTERM" else "interrupted (Ctrl-C)"


class _Deferral:
    """Main-thread state: how deep in database calls we are, and a signal held until they return."""

    depth = 0
    pending: str | None = None
    received: str | None = (
        None  # the signal that arrived in this block, until the handlers are installed again
    )


def interrupt_once(signum: int, frame: Any) -> None:
    """Signal handler: the first SIGINT or SIGTERM raises `Interrupted` (held while a database call runs);
    later ones are ignored so that the cleanup can finish."""
    for sig in INTERRUPT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    name = signal.Signals(signum).name
    _Deferral.received = name
    if _Deferral.depth > 0:
        _Deferral.pending = name
        return
    raise Interrupted(name)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """`interrupt_once` holds its exception until this block (outermost, main thread) ends, then raises it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _Deferral.depth += 1
    try:
        yield
    finally:
        _Deferral.depth -= 1
        if _Deferral.depth == 0 and _Deferral.pending is not None:
            name, _Deferral.pending = _Deferral.pending, None
            raise Interrupted(name)


def raise_if_interrupted() -> None:
    """Raise `Interrupted` again if a signal arrived and the code still runs: the handler's exception is lost when
    it lands where Python ignores exceptions (a weakref callback of SQLAlchemy's, a `__del__`; seen once: a worker
    went on for two trials after Ctrl-C, and since later signals are ignored, nothing but SIGKILL stopped it).
    Called where normal work goes on, never in cleanup: at the top of the worker loop and after each context."""
    if (
        _Deferral.received is not None
        and _Deferral.depth == 0
        and threading.current_thread() is threading.main_thread()
    ):
        raise Interrupted(_Deferral.received)


@contextlib.contextmanager
def _handlers(handler: Any) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in INTERRUPT_SIGNALS}
    for sig in INTERRUPT_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def interrupt_signals() -> contextlib.AbstractContextManager[None]:
    """SIGINT and SIGTERM raise `Interrupted` in this block (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is threading.main_thread():
        _Deferral.received = (
            None  # a signal of an earlier block (an earlier run in this process) is done with
        )
    return _handlers(interrupt_once)


def signals_ignored() -> contextlib.AbstractContextManager[None]:
    """A second Ctrl-C or SIGTERM during a trial's cleanup must not leave the trial RUNNING."""
    return _handlers(signal.SIG_IGN)


def install() -> None:
    """Make `interrupt_once` this process's handler (a spawned worker's first step)."""
    _Deferral.received = None
    for sig in INTERRUPT_SIGNALS:
        signal.signal(sig, interrupt_once)
