"""The GPU check (`bench/gpu_check.py`, `make gpu-check`): a few hundred training steps of every benchmark on CUDA, with steps per second.

For each benchmark it runs the harness itself (two contexts of `--steps` iterations each, so the second context
pays for the penalty, with the importance estimation in between) and prints training steps per second, the
seconds of the importance estimation and where the data came from. Data lives on the device (the harness puts
every context's tensors there). Where a dataset is absent (CIFAR-100 on most machines) the same loop runs on
synthetic tensors of the benchmark's shapes instead, and the line says so. Split-CIFAR100 is checked in both of
its trunk modes: `pretrained` (the MLP on 1,024 stored trunk features; synthetic features stand in unless the
trunk is already cached) and `scratch` (conv trunk and MLP on images).

Needs only torch, torchvision and the harness package; runs on PyTorch 2.11+ and Python 3.11/3.12. Without CUDA it
says why and checks nothing; `device="cpu"` with a few steps exercises it.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from clharness import paths
from clharness.benchmarks import ContextData, build_model
from clharness.errors import DataError
from clharness.hooks import load_hooks
from clharness.loop import LoopSettings, train_sequence
from clharness.protocol import PROTOCOLS
from clharness.runner import RunConfig, run

from evaluation.errors import UserError

ROOT = Path(__file__).resolve().parents[1]  # the repository
# (label, experiment, cifar_trunk): the runs of the check, in order
CHECKS = (
    ("splitMNIST", "splitMNIST", "pretrained"),
    ("permMNIST", "permMNIST", "pretrained"),
    ("CIFAR100 (pretrained trunk)", "CIFAR100", "pretrained"),
    ("CIFAR100 (scratch trunk)", "CIFAR100", "scratch"),
)
CONTEXTS = 2


def default_hooks() -> Path:
    """The shipped module when there is one, else the hand-written scaffold EWC test fixture."""
    shipped = ROOT / "custom_regularization.py"
    return shipped if shipped.is_file() else ROOT / "tests" / "hooks" / "scaffold_ewc.py"


def _trunk_cached() -> bool:
    """Whether a pre-trained CIFAR trunk is cached (else the real pretrained path would first train it)."""
    return any(paths.cache_dir().glob("cifar10-trunk-*.pt"))


def synthetic_contexts(experiment: str, trunk: str, device: torch.device, n: int = 2048) -> list[ContextData]:
    """Random inputs and labels of the benchmark's shapes, on `device`: two contexts, as the harness builds them."""
    p = PROTOCOLS[experiment]
    g = torch.Generator().manual_seed(0)
    if experiment == "CIFAR100":
        shape: tuple[int, ...] = (3, 32, 32) if trunk == "scratch" else (1024,)
    else:
        shape = (1024,) if experiment == "permMNIST" else (784,)
    x = torch.rand((n * CONTEXTS, *shape), generator=g).to(device)
    out = []
    for k in range(CONTEXTS):
        idx = torch.arange(k * n, (k + 1) * n)
        if p.classes_per_context is None:  # domain-incremental: all units, one permutation per context
            y = torch.randint(0, p.n_classes, (n,), generator=g)
            perm = torch.randperm(shape[0], generator=g)
            out.append(ContextData(x, idx, y, perm, None))
        else:
            width = p.classes_per_context
            y = torch.randint(0, width, (n,), generator=g)
            out.append(ContextData(x, idx, y, None, (k * width, (k + 1) * width)))
    return out


def synthetic_run(experiment: str, trunk: str, hooks_path: Path, steps: int, device: torch.device) -> dict:
    """The harness loop on synthetic contexts; returns the same timing fields as a harness run."""
    p = PROTOCOLS[experiment]
    contexts = synthetic_contexts(experiment, trunk, device)
    in_dim = int(contexts[0].base_x[0].numel())
    model = build_model(p, in_dim, trunk if experiment == "CIFAR100" else None, 42, device)
    hooks = load_hooks(hooks_path)
    settings = LoopSettings(
        iters=steps,
        batch_size=p.batch_size,
        lr=p.lr,
        reg_strength=p.reg_strength * hooks.reg_strength_scale,
        seed=42,
        progress=False,
    )
    train_sequence(model, contexts, contexts, hooks, settings)
    t = settings.timing
    return {"timing": {"train_s": t.train_s, "importance_s": t.importance_s}, "data_source": "synthetic"}


def check(label: str, experiment: str, trunk: str, hooks: Path, steps: int, device: str) -> str:
    """One line of the report: steps per second of one benchmark (real data when present)."""
    why = ""
    if experiment == "CIFAR100" and trunk == "pretrained" and not _trunk_cached():
        result, why = None, "trunk not pre-trained here"
    else:
        cfg = RunConfig(
            experiment=experiment, iters=steps, contexts=CONTEXTS, device=device, cifar_trunk=trunk
        )
        try:
            result = run(hooks, cfg, progress=False)
        except DataError as exc:
            result, why = None, f"data absent: {str(exc).splitlines()[0][:80]}"
    if result is None:
        result = synthetic_run(experiment, trunk, hooks, steps, torch.device(device))
    t = result["timing"]
    rate = CONTEXTS * steps / t["train_s"]
    source = result.get("data_source", "?") + (f" ({why})" if why else "")
    return f"{label:<30} {rate:>9.1f} {t['importance_s']:>12.2f}   {source}"


def gpu_check(
    device: str = "cuda",
    steps: int = 300,
    hooks: Path | None = None,
    only: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Run every check (`only`: the labels starting with one of these) and `log` a table; without CUDA on a
    `cuda` device, say so and check nothing. Fewer than 1 step is a UserError."""
    if device == "cuda" and not torch.cuda.is_available():
        log(
            f"gpu-check: CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "nothing to check on this machine. Use --device cpu to exercise the script."
        )
        return
    if steps < 1:
        raise UserError("--steps must be at least 1")
    hooks = hooks or default_hooks()
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu"
    log(f"gpu-check on {device} ({name}); torch {torch.__version__}, python {platform.python_version()}")
    log(f"hooks: {hooks}; {CONTEXTS} contexts x {steps} steps per benchmark; data dir {paths.data_dir()}")
    if device == "cuda":  # CUDA context, cuBLAS handles and kernels load once, outside the timings
        synthetic_run("splitMNIST", "pretrained", hooks, 5, torch.device("cuda"))
        torch.cuda.synchronize()
    log(f"{'benchmark':<30} {'steps/s':>9} {'importance s':>12}   data")
    for label, experiment, trunk in CHECKS:
        if only and not any(label.startswith(o) for o in only):
            continue
        log(check(label, experiment, trunk, hooks, steps, device))
