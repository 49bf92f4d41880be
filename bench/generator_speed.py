"""Speed of the generated hook code against the hand-written scaffold EWC, on the Permuted-MNIST network (CPU).

Measured side by side in one process, in interleaved rounds (every variant once per round) so that a busy machine
slows all of them alike; medians are reported. Targets (issue 3): the generated penalty adds at most 10% to a
training step; the generated exact Fisher over 200 examples is at least 10x faster than the scaffold's loop and
equal to it within a relative 1e-4.

    .venv/bin/python bench/generator_speed.py [--rounds 30] [--fisher-rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

import space

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128  # Permuted-MNIST protocol (HARNESS.md section 4)
LR = 1e-4
N_FISHER = 200  # the scaffold's number of examples
# The loop adds reg_strength * R; the penalty is timed as it runs there, with this factor.
REG_STRENGTH = 100.0


class PermNet(nn.Module):
    """MLP 1024-1000-1000-10 with ReLU, carrying the harness's hook attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.fcs = nn.Sequential(
            nn.Linear(1024, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 10)
        )
        self.param_list = [self.named_parameters]
        self._custom_W: dict[str, torch.Tensor] = {}
        self._custom_importance: dict[str, torch.Tensor] = {}
        self._custom_prev_params: dict[str, torch.Tensor] = {}
        self.gamma = 1.0
        self.epsilon = 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fcs(x)


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rounds(variants: dict[str, Callable[[], object]], n: int, warmup: int = 2) -> dict[str, list[float]]:
    """Run every variant once per round, n rounds after `warmup`; wall seconds per call."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(warmup + n):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def time_fisher(
    model: PermNet,
    generated: ModuleType,
    scaffold: ModuleType,
    anchor: dict[str, torch.Tensor],
    n_rounds: int,
) -> tuple[dict[str, list[float]], float, bool]:
    """Interleaved timings of both exact Fishers over 200 examples, their largest relative difference, allclose."""
    g = torch.Generator().manual_seed(1)
    dataset = [
        (torch.rand(1024, generator=g), torch.randint(0, 10, (), generator=g)) for _ in range(N_FISHER)
    ]
    device = torch.device("cpu")
    out: dict[str, dict[str, torch.Tensor]] = {}

    def fisher(name: str, hooks: ModuleType) -> None:
        out[name] = hooks.estimate_importance(model, dataset, anchor, device)

    times = rounds(
        {
            "fisher_generated": lambda: fisher("gen", generated),
            "fisher_scaffold": lambda: fisher("ref", scaffold),
        },
        n_rounds,
        warmup=1,
    )
    gen, ref = out["gen"], out["ref"]
    rel = max(((gen[k] - v).abs().max() / v.abs().max()).item() for k, v in ref.items())
    close = all(
        torch.allclose(gen[k], v, rtol=1e-4, atol=1e-6 * v.abs().max().item()) for k, v in ref.items()
    )
    return times, rel, close


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds of the step timings")
    parser.add_argument(
        "--fisher-rounds", type=int, default=3, help="interleaved rounds of the Fisher timings"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-fisher", action="store_true", help="time only the steps and penalties")
    parser.add_argument("--json", help="also write the figures as JSON here")
    parser.add_argument(
        "--also", type=Path, help="a hook module whose penalty is timed alongside (e.g. an older export)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generated_ewc.py"
        space.write_module(path, space.generate_source(space.PRESETS["ewc"], {"preset": "ewc"}))
        generated = load(path, "generated_ewc")
    scaffold = load(ROOT / "tests" / "hooks" / "scaffold_ewc.py", "scaffold_ewc")

    model = PermNet()
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.999))
    params = {n.replace(".", "__"): p for n, p in model.named_parameters()}
    importance = {k: torch.rand_like(p) * 1e-3 for k, p in params.items()}
    anchor = {k: p.detach() + 0.01 * torch.randn_like(p) for k, p in params.items()}
    xs = torch.rand(8, BATCH, 1024)
    ys = torch.randint(0, 10, (8, BATCH))
    state = {"i": 0}

    def step(hooks: ModuleType | None) -> None:
        i = state["i"] = (state["i"] + 1) % xs.shape[0]
        loss = nn.functional.cross_entropy(model(xs[i]), ys[i])
        if hooks is not None:
            loss = loss + REG_STRENGTH * hooks.compute_regularization_loss(model, importance, anchor)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def penalty(hooks: ModuleType) -> None:
        model.zero_grad()
        (REG_STRENGTH * hooks.compute_regularization_loss(model, importance, anchor)).backward()

    variants = {
        "step_without_penalty": lambda: step(None),
        "penalty_generated": lambda: penalty(generated),
        "penalty_scaffold": lambda: penalty(scaffold),
        "step_with_generated_penalty": lambda: step(generated),
        "step_with_scaffold_penalty": lambda: step(scaffold),
    }
    if args.also:
        also = load(args.also, "also_hooks")
        variants["penalty_also"] = lambda: penalty(also)
        variants["step_with_also_penalty"] = lambda: step(also)
    step_times = rounds(variants, args.rounds)

    fisher_times: dict[str, list[float]] = {}
    rel, close = float("nan"), True
    if not args.skip_fisher:
        fisher_times, rel, close = time_fisher(model, generated, scaffold, anchor, args.fisher_rounds)
    med = {name: statistics.median(t) for name, t in {**step_times, **fisher_times}.items()}

    def paired(variant: str) -> float:
        """Median over rounds of (step with penalty / step without, same round) - 1: drifts cancel."""
        base = step_times["step_without_penalty"]
        return statistics.median(t / b for t, b in zip(step_times[variant], base, strict=True)) - 1.0

    figures = {
        "median_s": med,
        "rounds": args.rounds,
        "fisher_rounds": args.fisher_rounds,
        "penalty_generated_over_step": med["penalty_generated"] / med["step_without_penalty"],
        "penalty_scaffold_over_step": med["penalty_scaffold"] / med["step_without_penalty"],
        "step_overhead_generated": paired("step_with_generated_penalty"),
        "step_overhead_scaffold": paired("step_with_scaffold_penalty"),
        "fisher_speedup": med["fisher_scaffold"] / med["fisher_generated"] if fisher_times else float("nan"),
        "fisher_max_rel_diff": rel,
        "fisher_allclose_rtol_1e-4": close,
        **(
            {
                "penalty_also_over_step": med["penalty_also"] / med["step_without_penalty"],
                "step_overhead_also": paired("step_with_also_penalty"),
            }
            if args.also
            else {}
        ),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(f"Permuted-MNIST MLP 1024-1000-1000-10, batch {BATCH}, CPU, {torch.get_num_threads()} threads")
    for name, seconds in med.items():
        print(f"  {name:30s} {seconds * 1e3:10.2f} ms (median)")
    print(
        f"  generated penalty fwd+bwd / step   {figures['penalty_generated_over_step']:.1%}   (target <= 10%)"
    )
    print(f"  scaffold penalty fwd+bwd / step    {figures['penalty_scaffold_over_step']:.1%}")
    print(f"  step overhead, generated penalty   {figures['step_overhead_generated']:+.1%}")
    print(f"  step overhead, scaffold penalty    {figures['step_overhead_scaffold']:+.1%}")
    if args.also:
        print(f"  {args.also.name} penalty fwd+bwd / step {figures['penalty_also_over_step']:.1%}")
        print(f"  step overhead, {args.also.name} penalty {figures['step_overhead_also']:+.1%}")
    print(f"  Fisher speed-up (scaffold/generated) {figures['fisher_speedup']:.1f}x   (target >= 10x)")
    print(f"  Fisher max |gen - scaffold| / max|scaffold| {rel:.2e}; allclose rtol 1e-4: {close}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    ok = figures["penalty_generated_over_step"] <= 0.10 and close
    ok = ok and (args.skip_fisher or figures["fisher_speedup"] >= 10)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
