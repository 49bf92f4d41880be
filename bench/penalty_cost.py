"""Cost of the penalty's implementations, side by side, on the harness's Permuted-MNIST network (CPU).

Options: `generated` (what space/generator.py writes now), `autograd` (plain autograd of
0.5 * sum w (theta - c)^2), and `REV` for any git revision: the penalty the generator of that commit wrote for the
`ewc` preset (its `space/` is unpacked with `git archive` and run in a subprocess). Every option is timed twice,
in interleaved rounds so that a busy machine slows all of them alike:

- alone: `zero_grad(set_to_none=True)`, then `(reg_strength * R).backward()`;
- in the loop: `clharness.loop.train_context` steps (batch, penalty, forward, backward, Adam, the loop's
  bookkeeping), minus the same steps with a zero penalty in the same round.

Times are this thread's CPU time (`time.thread_time`: what the other processes of a loaded machine take is not
counted; page faults are) with minor page faults per call; medians over rounds. Run it on one thread:

    OMP_NUM_THREADS=1 .venv/bin/python bench/penalty_cost.py --threads 1 --options generated autograd a0c0e35 8b82e35
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from clharness.benchmarks import ContextData
from clharness.hooks import HookModule, load_hooks
from clharness.loop import LoopSettings, train_context
from clharness.models import ContinualNet, mlp
from clharness.protocol import PROTOCOLS

import space

ROOT = Path(__file__).resolve().parents[1]
REG_STRENGTH = 100.0  # Permuted-MNIST's (HARNESS.md section 4)
_WRITE_EWC = (
    "import space, sys; sys.stdout.write(space.generate_source(space.PRESETS['ewc'], {'preset': 'ewc'}))"
)


def autograd_penalty(
    model: torch.nn.Module, importance: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]
) -> torch.Tensor:
    """0.5 * sum importance (theta - anchor)^2 through plain autograd."""
    terms = [
        (importance[k] * (p - anchor[k]).square()).sum() for k, p in space.components._regularized(model)
    ]
    return 0.5 * torch.stack(terms).sum()


def module_of_revision(rev: str, tmp: Path) -> Path:
    """The `ewc` preset's module as the generator of git revision `rev` wrote it."""
    tree = tmp / f"rev-{rev}"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", rev, "space"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    source = subprocess.run(
        [sys.executable, "-c", _WRITE_EWC], cwd=tree, check=True, capture_output=True, text=True
    ).stdout
    path = tmp / f"ewc-{rev}.py"
    path.write_text(source)
    return path


def options(names: list[str], tmp: Path) -> dict[str, HookModule]:
    """A hook module per option, and `zero` (the `none` preset) for the loop's baseline."""

    def generated(design: space.Design, name: str) -> HookModule:
        path = tmp / f"{name}.py"
        space.write_module(path, space.generate_source(design))
        return load_hooks(path)

    ewc = generated(space.PRESETS["ewc"], "generated")
    out = {"zero": generated(space.PRESETS["none"], "zero")}
    for name in names:
        if name == "generated":
            out[name] = ewc
        elif name == "autograd":
            out[name] = dataclasses.replace(ewc, compute_regularization_loss=autograd_penalty)
        else:
            out[name] = load_hooks(module_of_revision(name, tmp))
    return out


def measured(fn: Callable[[], object]) -> tuple[float, int]:
    """This thread's CPU seconds and the process's minor page faults over one call."""
    faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.thread_time()
    fn()
    return time.thread_time() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--options", nargs="+", default=["generated", "autograd"])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=20, help="loop steps per round and option")
    ap.add_argument("--alone", type=int, default=3, help="penalty-alone calls per round and option")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = PROTOCOLS["permMNIST"]
    torch.manual_seed(0)
    n = 4096  # synthetic images of the benchmark's shape: the cost depends on shapes, not values
    ctx = ContextData(
        torch.rand(n, 1024), torch.arange(n), torch.randint(0, 10, (n,)), torch.randperm(1024), None
    )
    model = ContinualNet(mlp(1024, p.hidden, p.n_classes))
    params = dict(space.components._regularized(model))
    model._custom_importance = {k: torch.rand_like(q) * 1e-3 for k, q in params.items()}
    model._custom_prev_params = {k: q.detach() + 0.01 * torch.randn_like(q) for k, q in params.items()}
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    settings = LoopSettings(
        iters=args.steps, batch_size=p.batch_size, lr=p.lr, reg_strength=REG_STRENGTH, seed=0, progress=False
    )

    def loop(hooks: HookModule) -> None:
        train_context(model, ctx, hooks, opt, settings, context=2, n_contexts=10)

    def alone(hooks: HookModule) -> None:
        model.zero_grad(set_to_none=True)
        penalty = hooks.compute_regularization_loss(
            model, model._custom_importance, model._custom_prev_params
        )
        (REG_STRENGTH * penalty).backward()

    with tempfile.TemporaryDirectory() as tmp:
        hooks = options(args.options, Path(tmp))
    step: dict[str, list[tuple[float, int]]] = {name: [] for name in hooks}
    lone: dict[str, list[tuple[float, int]]] = {name: [] for name in args.options}
    for r in range(1 + args.rounds):  # round 0 warms up
        for name, h in hooks.items():
            t, f = measured(partial(loop, h))
            if r:
                step[name].append((t / args.steps, f // args.steps))
            for _ in range(args.alone if name != "zero" else 0):
                t, f = measured(partial(alone, h))
                if r:
                    lone[name].append((t, f))

    med = statistics.median
    base = med(t for t, _ in step["zero"])
    first = args.options[0]
    print(
        f"Permuted-MNIST network, {args.threads} thread(s), reg_strength {REG_STRENGTH:g}; medians of {args.rounds} "
        f"rounds ({args.steps} loop steps, {args.alone} penalties alone each); loop step with a zero penalty: "
        f"{base * 1e3:.2f} ms ({med(f for _, f in step['zero'])} page faults)"
    )
    print(
        f"| option | alone: ms | share of a step | faults | in the loop: + ms per step | share | faults | alone / {first} | loop / {first} |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    ref_alone = med(t for t, _ in lone[first])
    ref_loop = med(t - b for (t, _), (b, _) in zip(step[first], step["zero"], strict=True))
    for name in args.options:
        a = med(t for t, _ in lone[name])
        d = med(t - b for (t, _), (b, _) in zip(step[name], step["zero"], strict=True))
        print(
            f"| {name} | {a * 1e3:.2f} | {a / base:.1%} | {med(f for _, f in lone[name])} | {d * 1e3:+.2f} | "
            f"{d / base:+.1%} | {med(f for _, f in step[name])} | {a / ref_alone:.2f} | {d / ref_loop:.2f} |"
        )


if __name__ == "__main__":
    main()
