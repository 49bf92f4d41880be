"""Speed of the harness loop, per benchmark network, on synthetic data of the benchmark's shapes.

Prints milliseconds per training step (bare forward/backward/Adam; the loop with a zero penalty; the loop
with the scaffold EWC penalty; the loop with the generated `ewc` preset's penalty), the time of one importance estimation by the scaffold EWC module, the share
of a step the loop spends outside forward, backward and the optimizer (sampling, `_custom_W`, `_custom_p_old`,
finiteness flags), and the time and size of one checkpoint (the state a resumable run saves after each context). Medians of interleaved repeats, so that machine noise hits every variant alike.
Usage: .venv/bin/python bench/harness_speed.py [--repeats 7] [--steps 40] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from clharness.benchmarks import ContextData
from clharness.checkpoint import Checkpoint
from clharness.hooks import load_hooks
from clharness.loop import LoopSettings, Timing, loop_state, train_context
from clharness.models import ContinualNet, mlp, regularized_parameters
from clharness.protocol import PROTOCOLS

import space

ROOT = Path(__file__).resolve().parents[1]
# CIFAR100 (pretrained trunk) trains the MLP on 1,024 stored features per image, so synthetic features time it exactly.
IN_DIM = {"splitMNIST": 784, "permMNIST": 1024, "CIFAR100": 1024}


def _setup(name: str, device: torch.device) -> tuple[ContinualNet, ContextData, torch.optim.Optimizer]:
    p = PROTOCOLS[name]
    torch.manual_seed(0)
    n = 4096
    x = torch.rand(n, IN_DIM[name], device=device)
    units = None if p.classes_per_context is None else (0, p.classes_per_context)
    y = torch.randint(0, p.classes_per_context or p.n_classes, (n,), device=device)
    perm = torch.randperm(IN_DIM[name]) if name == "permMNIST" else None
    ctx = ContextData(x, torch.arange(n), y, perm, units)
    model = ContinualNet(mlp(IN_DIM[name], p.hidden, p.n_classes)).to(device)
    model.active_units = units
    return model, ctx, torch.optim.Adam(model.parameters(), lr=p.lr)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_steps(name: str, steps: int, device: torch.device) -> float:
    """ms per step of forward + CE + backward + Adam on a fixed batch: the work no loop can avoid."""
    model, ctx, opt = _setup(name, device)
    x, y = ctx.batch(torch.arange(PROTOCOLS[name].batch_size))
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return (time.perf_counter() - t0) / steps * 1e3


def loop_steps(name: str, steps: int, device: torch.device, hooks_file: Path, with_importance: bool) -> float:
    """ms per step of the harness loop (`train_context`) with the given hook module."""
    model, ctx, opt = _setup(name, device)
    hooks = load_hooks(hooks_file)
    params = regularized_parameters(model)
    model._custom_prev_params = {n: p.detach().clone() for n, p in params.items()}
    model._custom_importance = {n: torch.rand_like(p) for n, p in params.items()} if with_importance else {}
    p = PROTOCOLS[name]
    settings = LoopSettings(
        iters=steps, batch_size=p.batch_size, lr=p.lr, reg_strength=p.reg_strength, seed=0, progress=False
    )
    _sync(device)
    t0 = time.perf_counter()
    train_context(model, ctx, hooks, opt, settings, 2, 2)
    _sync(device)
    return (time.perf_counter() - t0) / steps * 1e3


def importance_time(name: str, device: torch.device) -> float:
    """Seconds of one `estimate_importance` call of the scaffold EWC module (200 examples)."""
    model, ctx, _ = _setup(name, device)
    hooks = load_hooks(ROOT / "tests/hooks/scaffold_ewc.py")
    _sync(device)
    t0 = time.perf_counter()
    hooks.estimate_importance(model, ctx, {}, device)
    _sync(device)
    return time.perf_counter() - t0


def checkpoint_cost(name: str, device: torch.device, folder: Path) -> tuple[float, float]:
    """(seconds, MB) of saving one checkpoint of the benchmark's network mid-sequence: parameters, Adam's
    moments after a step, importance and anchor for every parameter."""
    model, ctx, opt = _setup(name, device)
    x, y = ctx.batch(torch.arange(PROTOCOLS[name].batch_size))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    params = regularized_parameters(model)
    model._custom_importance = {n: torch.rand_like(p) for n, p in params.items()}
    model._custom_prev_params = {n: p.detach().clone() for n, p in params.items()}
    state = loop_state(model, opt, 1, [[0.5]], Timing(), set(vars(model)))
    checkpoint = Checkpoint(folder / f"{name}.ckpt", {"bench": name})
    _sync(device)
    t0 = time.perf_counter()
    checkpoint.save(state)
    seconds = time.perf_counter() - t0
    return seconds, checkpoint.path.stat().st_size / 1e6


def main() -> None:
    """Measure every benchmark and print one table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats} interleaved repeats x {args.steps} steps"
    )
    print(
        f"{'benchmark':12s} {'bare ms':>8s} {'loop ms':>8s} {'loop+EWC ms':>11s} {'loop+gen ms':>11s} "
        f"{'bookkeeping':>11s} {'EWC penalty':>11s} {'gen penalty':>11s} {'importance s':>12s} {'ckpt s':>7s} {'ckpt MB':>7s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        generated = Path(tmp) / "generated_ewc.py"
        space.write_module(generated, space.generate_source(space.PRESETS["ewc"], {"preset": "ewc"}))
        for name in PROTOCOLS:
            bare, loop, ewc, gen = [], [], [], []
            for _ in range(args.repeats):
                bare.append(bare_steps(name, args.steps, device))
                loop.append(loop_steps(name, args.steps, device, ROOT / "tests/hooks/no_reg.py", False))
                ewc.append(loop_steps(name, args.steps, device, ROOT / "tests/hooks/scaffold_ewc.py", True))
                gen.append(loop_steps(name, args.steps, device, generated, True))
            b, lo = statistics.median(bare), statistics.median(loop)
            e, g = statistics.median(ewc), statistics.median(gen)
            imp = importance_time(name, device)  # one call: the scaffold loop takes minutes on the big nets
            ckpt = [checkpoint_cost(name, device, Path(tmp)) for _ in range(args.repeats)]
            ckpt_s, ckpt_mb = statistics.median(c[0] for c in ckpt), ckpt[0][1]
            print(
                f"{name:12s} {b:8.2f} {lo:8.2f} {e:11.2f} {g:11.2f} {(lo - b) / b:+11.1%} {(e - lo) / lo:+11.1%} "
                f"{(g - lo) / lo:+11.1%} {imp:12.2f} {ckpt_s:7.3f} {ckpt_mb:7.1f}"
            )


if __name__ == "__main__":
    main()
