"""Cost of the structured (K-FAC) penalties against a Permuted-MNIST training step, side by side in one run.

For each variant the hook state is built first (the factors of `--contexts` finished contexts, on synthetic data of
the benchmark's shapes: the cost depends on shapes, not values), then real loop steps (`train_context`: batch,
forward, penalty, backward, Adam, the loop's bookkeeping) are timed. Variants are interleaved and repeated, so
machine noise hits them alike; the table gives the median ms per step and the penalty's cost as a share of the
step without a penalty (`none`). Run it on one thread, as the campaign's workers run:

    OMP_NUM_THREADS=1 .venv/bin/python bench/kfac_cost.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from clharness.benchmarks import ContextData
from clharness.hooks import load_hooks
from clharness.loop import LoopSettings, train_context
from clharness.models import ContinualNet, mlp
from clharness.protocol import PROTOCOLS

import space

ROOT = Path(__file__).resolve().parents[1]


def variants(ranks: list[int], per_context_ranks: list[int]) -> dict[str, space.Design]:
    """The designs timed: no penalty, the shipped diagonal design, exact K-FAC, and the eigenbasis ranks."""
    kfac = space.Design(estimators="kfac")
    out = {"none": space.PRESETS["none"], "shipped (diagonal)": None, "kfac exact, merged": kfac}
    out["kfac exact, per context"] = kfac.replace(kfac_accumulate="per_context")
    for r in ranks:
        out[f"kfac rank {r}, merged"] = kfac.replace(kfac_rank=r)
    for r in per_context_ranks:
        out[f"kfac rank {r}, per context"] = kfac.replace(kfac_rank=r, kfac_accumulate="per_context")
    return out  # type: ignore[return-value]


def _prepared(design: space.Design | None, contexts: int, tmp: Path, name: str) -> tuple:
    p = PROTOCOLS["permMNIST"]
    torch.manual_seed(0)
    n = 4096
    ctx = ContextData(
        torch.rand(n, 1024), torch.arange(n), torch.randint(0, 10, (n,)), torch.randperm(1024), None
    )
    model = ContinualNet(mlp(1024, p.hidden, p.n_classes))
    path = tmp / f"{name}.py"
    if design is None:
        path.write_text((ROOT / "custom_regularization.py").read_text())
    else:
        space.write_module(path, space.generate_source(design))
    hooks = load_hooks(path)
    model._custom_importance, model._custom_prev_params = {}, {}
    for _ in range(
        contexts
    ):  # the state after `contexts` finished contexts, anchors moved a little each time
        with torch.no_grad():
            for q in model.parameters():
                q.add_(1e-3 * torch.randn_like(q))
        returned = hooks.estimate_importance(model, ctx, {}, torch.device("cpu"))
        for key, v in returned.items():
            model._custom_importance[key] = model._custom_importance.get(key, 0) + v
        model._custom_prev_params = {
            n.replace(".", "__"): q.detach().clone() for n, q in model.named_parameters()
        }
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    return model, ctx, hooks, opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="loop steps per timing")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--contexts", type=int, default=9, help="finished contexts whose factors are kept (9: the last)"
    )
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    ap.add_argument("--per-context-ranks", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = LoopSettings(
        iters=args.steps, batch_size=128, lr=1e-4, reg_strength=100.0, seed=0, progress=False
    )  # type: ignore[call-arg]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = {
            name: _prepared(design, args.contexts, Path(tmp), f"v{i}")
            for i, (name, design) in enumerate(variants(args.ranks, args.per_context_ranks).items())
        }
        times: dict[str, list[float]] = {name: [] for name in prepared}
        for _ in range(args.repeats):
            for name, (model, ctx, hooks, opt) in prepared.items():
                t0 = time.perf_counter()
                train_context(model, ctx, hooks, opt, settings, context=2, n_contexts=10)
                times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    base = statistics.median(times["none"])
    print(
        f"Permuted-MNIST network, {args.threads} thread(s), {args.contexts} contexts kept, median of {args.repeats}"
    )
    print("| variant | ms per step | penalty as a share of a step |")
    print("|---|---|---|")
    for name, ts in times.items():
        ms = statistics.median(ts)
        print(f"| {name} | {ms:.1f} | {(ms - base) / base:+.2f} |")


if __name__ == "__main__":
    main()
