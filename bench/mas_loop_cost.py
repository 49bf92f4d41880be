"""MAS's importance two ways, side by side: the generated modules' batched estimator against a plain loop.

The generated `_mas` sums |d ||f(x)||^2 / d theta| over examples with `_per_example_sums` (an nn.Linear weight's
per-example gradient is delta a^T, so the sum is one matrix product); the loop takes one backward pass per
example, as a hand-written method file would. This measures what the shorter file would cost and how far its
numbers are from today's: on the harness's Permuted-MNIST network (`ContinualNet(mlp(1024, (1000, 1000), 10))`,
random weights and inputs: the cost depends on shapes), `--examples` examples, interleaved rounds, medians of this
thread's CPU time. Run it on one thread:

    OMP_NUM_THREADS=1 .venv/bin/python bench/mas_loop_cost.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from clharness.models import ContinualNet, mlp

from space import components


def mas_loop(
    model: torch.nn.Module, params: dict[str, torch.nn.Parameter], xs: torch.Tensor
) -> dict[str, torch.Tensor]:
    """MAS as a plain loop: mean over examples of |d ||f(x)||^2 / d theta|, one backward pass per example."""
    sums = {k: torch.zeros_like(p) for k, p in params.items()}
    for x in xs.split(1):
        grads = torch.autograd.grad(model(x).square().sum(), list(params.values()))
        for s, g in zip(sums.values(), grads, strict=True):
            s += g.abs()
    return {k: s / xs.shape[0] for k, s in sums.items()}


def main() -> None:
    """Print the median seconds of each way and their largest difference relative to each tensor's maximum."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ContinualNet(mlp(1024, (1000, 1000), 10)).eval()
    params = dict(components._regularized(model))
    xs, ys = torch.randn(args.examples, 1024), torch.zeros(args.examples, dtype=torch.long)
    ways = {
        "batched (generated _mas)": lambda: components._mas(model, params, xs, ys),
        "loop (one backward per example)": lambda: mas_loop(model, params, xs),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            start = time.thread_time()
            way()
            times[name].append(time.thread_time() - start)
    batched, loop = (way() for way in ways.values())
    rel = max(((batched[k] - loop[k]).abs().max() / batched[k].abs().max()).item() for k in batched)
    equal = sum(torch.equal(batched[k], loop[k]) for k in batched)
    print(f"{args.examples} examples, {args.threads} thread(s), median of {args.rounds} interleaved rounds:")
    for name, ts in times.items():
        print(f"  {name}: {statistics.median(ts):.3f} s")
    ratio = statistics.median(times["loop (one backward per example)"]) / statistics.median(
        times["batched (generated _mas)"]
    )
    print(f"  loop / batched: {ratio:.1f}x")
    print(f"largest difference: {rel:.2e} of the tensor's largest entry")
    print(f"bitwise equal tensors: {equal} of {len(batched)}")


if __name__ == "__main__":
    main()
