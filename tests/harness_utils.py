"""Tiny synthetic streams and hook modules written on the fly, for contract tests of the harness loop."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from clharness.benchmarks import ContextData
from clharness.hooks import HookModule, load_hooks
from clharness.loop import LoopSettings
from clharness.models import ContinualNet, mlp


def tiny_stream(
    contexts: int = 3, n: int = 24, in_dim: int = 4, units: int = 2, seed: int = 0
) -> list[ContextData]:
    """Task-incremental synthetic contexts: `units` classes each, separable by the sign of one feature."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(contexts * n, in_dim, generator=g)
    out = []
    for k in range(contexts):
        idx = torch.arange(k * n, (k + 1) * n)
        y = (x[idx, k % in_dim] > 0).long() % units
        out.append(ContextData(x, idx, y, None, (k * units, (k + 1) * units)))
    return out


def tiny_model(in_dim: int = 4, contexts: int = 3, units: int = 2, seed: int = 0) -> ContinualNet:
    """A 4-3-(contexts*units) MLP with the harness attributes."""
    torch.manual_seed(seed)
    return ContinualNet(mlp(in_dim, (3,), contexts * units))


def settings(iters: int = 5, reg_strength: float = 1.0, **kw: object) -> LoopSettings:
    """Loop settings for tiny runs: batch 8, SGD-sized Adam steps, no progress bars."""
    return LoopSettings(
        iters=iters, batch_size=8, lr=0.05, reg_strength=reg_strength, seed=0, progress=False, **kw
    )  # type: ignore[arg-type]


def write_hooks(tmp_path: Path, body: str, name: str = "hooks.py") -> Path:
    """Write a hook module from source text (dedented) and return its path."""
    path = tmp_path / name
    path.write_text("import torch\n" + textwrap.dedent(body))
    return path


def load(tmp_path: Path, body: str) -> HookModule:
    """Write and load a hook module."""
    return load_hooks(write_hooks(tmp_path, body))
