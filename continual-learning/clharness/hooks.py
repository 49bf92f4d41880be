"""Loading a hook module by path and checking it against the contract (docs/contract.md section 1)."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from clharness.errors import HookError, HookRaisedError

ALLOWED_OVERRIDES = frozenset({"reg_strength_scale"})


@dataclass(frozen=True)
class HookModule:
    """A loaded, checked hook module."""

    path: Path
    sha256: str
    source: str
    estimate_importance: Callable[..., Any]
    compute_regularization_loss: Callable[..., Any]
    reg_strength_scale: float


def _check_function(module: ModuleType, path: Path, name: str, n_args: int) -> Callable[..., Any]:
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        raise HookError(f"{path}: the hook module does not define the function {name}()")
    try:
        inspect.signature(fn).bind(*range(n_args))
    except TypeError as exc:
        raise HookError(f"{path}: {name}() must take {n_args} positional arguments ({exc})") from exc
    except ValueError:  # builtins without a signature: let the call itself decide
        pass
    return fn


def reg_strength_scale(overrides: Any, path: Path) -> float:
    """The `reg_strength_scale` of CONFIG_OVERRIDES (1.0 without one); any other key or a bad value is an error."""
    if overrides is None:
        return 1.0
    if not isinstance(overrides, dict):
        raise HookError(f"{path}: CONFIG_OVERRIDES must be a dict, not {type(overrides).__name__}")
    unknown = sorted(str(k) for k in overrides if k not in ALLOWED_OVERRIDES)
    if unknown:
        raise HookError(
            f"{path}: unknown CONFIG_OVERRIDES key {unknown[0]!r} (only 'reg_strength_scale' is honoured)"
        )
    scale = overrides.get("reg_strength_scale", 1.0)
    if (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or not math.isfinite(scale)
        or scale <= 0
    ):
        raise HookError(
            f"{path}: CONFIG_OVERRIDES['reg_strength_scale'] must be a positive finite float, got {scale!r}"
        )
    return float(scale)


def _user_frame(exc: BaseException, path: Path) -> tuple[str | None, int | None]:
    """File and line of the deepest frame of `exc`'s traceback inside the hook module at `path`.

    Else (a hook that is a builtin or lives in another file) the innermost frame below the harness's own call
    site, which is the first frame of the traceback; (None, None) when there is none.
    """
    frames = traceback.extract_tb(exc.__traceback__)[1:]
    target = os.path.realpath(path)
    own = [f for f in frames if os.path.realpath(f.filename) == target]
    candidates = own or frames
    if not candidates:
        return None, None
    return candidates[-1].filename, candidates[-1].lineno


def _what_happened(exc: BaseException, raised: str = "raised") -> str:
    """'raised ValueError: its message' (on one line) or 'called sys.exit(code)'."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({'' if exc.code is None else repr(exc.code)})"
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{raised} {type(exc).__name__}" + (f": {message}" if message else "")


def hook_raised(
    hook: str, exc: BaseException, path: Path, *, context: int | None = None, step: int | None = None
) -> HookRaisedError:
    """The error for a hook function of the module at `path` that raised `exc` (or called `sys.exit`).

    One line: `hook NAME raised TYPE: MESSAGE (FILE:LINE)`, FILE:LINE being the user's line in the module.
    """
    filename, lineno = _user_frame(exc, path)
    where = f" ({Path(filename).name}:{lineno})" if filename is not None else ""
    return HookRaisedError(
        f"hook {hook} {_what_happened(exc)}{where}", hook=hook, original=exc, filename=filename, lineno=lineno,
        context=context, step=step,
    )  # fmt: skip


def load_hooks(path: str | os.PathLike[str]) -> HookModule:
    """Load the hook module at `path` (never by package name) and check its functions and overrides."""
    path = Path(path)
    if not path.is_file():
        raise HookError(f"hook module not found: {path}")
    raw = path.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    spec = importlib.util.spec_from_file_location(f"cl_hooks_{sha[:16]}", path)
    if spec is None or spec.loader is None:
        raise HookError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise HookError(f"{path}:{exc.lineno}: syntax error in the hook module: {exc.msg}") from exc
    except (Exception, SystemExit) as exc:  # not MemoryError nor Ctrl-C: those are not the module's doing
        if isinstance(exc, MemoryError):
            raise
        filename, lineno = _user_frame(exc, path)
        where = f" ({Path(filename).name}:{lineno})" if filename is not None else ""
        raise HookRaisedError(
            f"{path}: importing the hook module {_what_happened(exc, 'failed:')}{where}", hook="import",
            original=exc, filename=filename, lineno=lineno,
        ) from exc  # fmt: skip
    return HookModule(
        path=path,
        sha256=sha,
        source=raw.decode("utf-8", errors="replace"),
        estimate_importance=_check_function(module, path, "estimate_importance", 4),
        compute_regularization_loss=_check_function(module, path, "compute_regularization_loss", 3),
        reg_strength_scale=reg_strength_scale(getattr(module, "CONFIG_OVERRIDES", None), path),
    )
