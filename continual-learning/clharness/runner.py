"""One benchmark run end to end: data, network, loop, evaluation, the result record of docs/contract.md section 5."""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torchvision

from clharness import paths
from clharness.benchmarks import Benchmark, build_benchmark, build_model
from clharness.checkpoint import Checkpoint
from clharness.devices import resolve_device
from clharness.errors import HarnessError
from clharness.hooks import load_hooks
from clharness.loop import LoopSettings, Timing, evaluate, train_joint, train_sequence
from clharness.protocol import HARNESS_VERSION, PROTOCOLS, Protocol

DEFAULT_VAL_FRACTION = 0.1
EXPERIMENTS = tuple(PROTOCOLS)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run besides the hook module; `None` means the published protocol."""

    experiment: str
    seed: int = 42
    iters: int | None = None
    contexts: int | None = None
    val_fraction: float | None = None
    eval_split: str = "test"
    device: str = "auto"
    data_dir: str | None = None
    acc_matrix: bool = False
    cifar_trunk: str = "pretrained"
    train_subset: int | None = None
    lr: float | None = (
        None  # a proxy's learning rate (fewer iterations at a matched rate); None: the protocol's
    )


def _settings(cfg: RunConfig) -> tuple[Protocol, int, int, float]:
    if cfg.experiment not in PROTOCOLS:
        raise HarnessError(f"unknown experiment {cfg.experiment!r}; choose from {', '.join(EXPERIMENTS)}")
    protocol = PROTOCOLS[cfg.experiment]
    iters = protocol.iters if cfg.iters is None else cfg.iters
    contexts = protocol.contexts if cfg.contexts is None else cfg.contexts
    if iters < 1:
        raise HarnessError("--iters must be at least 1")
    if cfg.eval_split not in ("val", "test"):
        raise HarnessError(f"--eval-split must be 'val' or 'test', not {cfg.eval_split!r}")
    val = (
        cfg.val_fraction
        if cfg.val_fraction is not None
        else (DEFAULT_VAL_FRACTION if cfg.eval_split == "val" else 0.0)
    )
    if not 0.0 <= val < 1.0:
        raise HarnessError(f"--val-fraction must be in [0, 1), got {val}")
    if cfg.eval_split == "val" and val == 0.0:
        raise HarnessError("--eval-split val needs a positive --val-fraction")
    if cfg.cifar_trunk not in ("pretrained", "scratch"):
        raise HarnessError(f"--cifar-trunk must be 'pretrained' or 'scratch', not {cfg.cifar_trunk!r}")
    if cfg.train_subset is not None and cfg.train_subset < 1:
        raise HarnessError("--train-subset must be at least 1")
    if cfg.lr is not None:
        if not cfg.lr > 0:
            raise HarnessError(f"--lr must be positive, got {cfg.lr}")
        protocol = dataclasses.replace(protocol, lr=cfg.lr)
    return protocol, iters, contexts, val


class _Prepared(NamedTuple):
    """A run's resolved settings and its built benchmark."""

    protocol: Protocol
    iters: int
    contexts: int
    val: float
    device: torch.device
    bench: Benchmark
    data_s: float


def _prepare(cfg: RunConfig, progress: bool) -> _Prepared:
    protocol, iters, contexts, val = _settings(cfg)
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    bench = build_benchmark(
        protocol, seed=cfg.seed, contexts=contexts, val_fraction=val, eval_split=cfg.eval_split,
        train_subset=cfg.train_subset, data_dir=paths.data_dir(cfg.data_dir), cache_dir=paths.cache_dir(),
        device=device, cifar_trunk=cfg.cifar_trunk, progress=progress,
    )  # fmt: skip
    return _Prepared(protocol, iters, contexts, val, device, bench, time.perf_counter() - t0)


def _record(
    cfg: RunConfig,
    prep: _Prepared,
    per_context: list[float],
    matrix: list[list[float]],
    timing: Timing,
    t_start: float,
) -> dict[str, Any]:
    protocol, iters, contexts, val, device, bench, data_s = prep
    record: dict[str, Any] = {
        "harness_version": HARNESS_VERSION,
        "experiment": cfg.experiment,
        "scenario": protocol.scenario,
        "seed": cfg.seed,
        "contexts": contexts,
        "iters": iters,
        "batch_size": protocol.batch_size,
        "lr": protocol.lr,
        "reg_strength_base": protocol.reg_strength,
        "eval_split": cfg.eval_split,
        "val_fraction": val,
        "train_subset": cfg.train_subset,
        "per_context_accuracy": per_context,
        "average_accuracy": float(np.mean(per_context)),
        "timing": {
            "data_s": data_s,
            "train_s": timing.train_s,
            "importance_s": timing.importance_s,
            "eval_s": timing.eval_s,
            "total_s": time.perf_counter() - t_start,
        },
        "device": str(device) if device.type == "cpu" else f"cuda ({torch.cuda.get_device_name(device)})",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
        },
        "data_source": bench.source,
        "train_examples_per_context": [len(c) for c in bench.train],
        "eval_examples_per_context": [len(c) for c in bench.evaluation],
    }
    if protocol.experiment == "CIFAR100":
        record["cifar_trunk"] = cfg.cifar_trunk
    if cfg.acc_matrix:
        record["acc_matrix"] = matrix
    return record


def run(
    hooks_path: str | os.PathLike[str],
    cfg: RunConfig,
    *,
    progress: bool = True,
    on_context_end: Callable[[int, list[float]], None] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train the benchmark's stream with the hook module at `hooks_path`; return the result record.

    `checkpoint`: a file to keep the run's state in after each context, and to resume from when it holds this
    run's (module, configuration and harness version); the caller removes it once the result is safe.
    """
    t_start = time.perf_counter()
    hooks = load_hooks(hooks_path)
    prep = _prepare(cfg, progress)
    protocol, bench = prep.protocol, prep.bench
    model = build_model(protocol, bench.in_dim, bench.trunk, cfg.seed, prep.device)
    strength = protocol.reg_strength * hooks.reg_strength_scale
    settings = LoopSettings(
        iters=prep.iters, batch_size=protocol.batch_size, lr=protocol.lr, reg_strength=strength, seed=cfg.seed,
        progress=progress, label=cfg.experiment, evaluate_each_context=cfg.acc_matrix, on_context_end=on_context_end,
        checkpoint=None if checkpoint is None else Checkpoint(Path(checkpoint), _identity(cfg, prep, hooks.sha256)),
    )  # fmt: skip
    matrix = train_sequence(model, bench.train, bench.evaluation, hooks, settings)
    t0 = time.perf_counter()
    per_context = matrix[-1] if matrix else [evaluate(model, c) for c in bench.evaluation]
    settings.timing.eval_s += time.perf_counter() - t0
    record = _record(cfg, prep, per_context, matrix, settings.timing, t_start)
    record.update(
        method="hooks",
        hooks_path=str(Path(hooks_path)),
        hooks_sha256=hooks.sha256,
        reg_strength_scale=hooks.reg_strength_scale,
        reg_strength=strength,
    )
    if settings.resumed is not None:
        record["resumed"] = settings.resumed
    return record


def _identity(cfg: RunConfig, prep: _Prepared, hooks_sha256: str) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the module, everything that shapes the run, the harness."""
    fields = dataclasses.asdict(cfg)
    del fields["device"], fields["data_dir"]  # where the data lies and "auto" do not shape the run; these do:
    return {
        "harness_version": HARNESS_VERSION,
        "hooks_sha256": hooks_sha256,
        "config": fields,
        "device_type": prep.device.type,
        "data_source": prep.bench.source,
        "torch": str(torch.__version__),  # a plain str: TorchVersion is not loadable with weights_only
    }


def run_joint(cfg: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """Joint training on all contexts at once (the upper bound), evaluated like a hook run."""
    t_start = time.perf_counter()
    prep = _prepare(cfg, progress)
    protocol, bench = prep.protocol, prep.bench
    model = build_model(protocol, bench.in_dim, bench.trunk, cfg.seed, prep.device)
    settings = LoopSettings(
        iters=prep.iters, batch_size=protocol.batch_size, lr=protocol.lr, reg_strength=0.0, seed=cfg.seed,
        progress=progress, label=cfg.experiment,
    )  # fmt: skip
    train_joint(model, bench.train, settings)
    t0 = time.perf_counter()
    per_context = [evaluate(model, c) for c in bench.evaluation]
    settings.timing.eval_s += time.perf_counter() - t0
    matrix = [per_context] if cfg.acc_matrix else []
    record = _record(cfg, prep, per_context, matrix, settings.timing, t_start)
    record.update(
        method="joint", hooks_path=None, hooks_sha256=None, reg_strength_scale=None, reg_strength=0.0
    )
    return record
