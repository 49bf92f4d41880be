"""Does the validation split rank strong designs as the test split does, stream by stream?

The search promotes on the validation split of one stream (a tenth of each context's training images held out
and scored); the final table reads the test split of others. `compare` runs methods at the full protocol on the
validation split of given Permuted-MNIST streams (cached, resumable, shared by processes side by side) and sets
each beside its test-split run of the same stream, with the candidate's paired difference on either split
(`table`). Nothing here chooses anything. `bench/split_check.py` is its command line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluation import final_eval as fe
from evaluation.report import results_as_cached


def compare(
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    tuned: Mapping[str, fe.ModuleSource],
    out_dir: Path,
    test_dir: Path,
    command: str,
    report_only: bool = False,
) -> tuple[bool, list[str]]:
    """Run (or, `report_only`, read) `methods` on the validation split of Permuted-MNIST streams `seeds` into
    `out_dir`; returns whether every run is there, and the rows of `table` against the test-split runs cached in
    `test_dir`."""
    overrides = {"eval_split": "val"}
    outcome, _ = fe.final_eval(
        methods=list(methods),
        tuned=dict(tuned),
        benchmarks=["permMNIST"],
        seeds=list(seeds),
        out_dir=out_dir,
        overrides=overrides,
        command=command,
        report_only=report_only,
    )
    resolved = fe.resolve_methods(list(methods), tuned=dict(tuned), module_dir=out_dir / "modules")
    val = fe.collect_results(resolved, ["permMNIST"], out_dir=out_dir, overrides=overrides)["permMNIST"]
    test = results_as_cached(test_dir, ["permMNIST"])[0]["permMNIST"]
    return outcome.complete, table(val, test, seeds, methods)


def table(
    val: Mapping[str, Mapping[int, dict]],
    test: Mapping[str, Mapping[int, dict]],
    seeds: Sequence[int],
    methods: Sequence[str],
) -> list[str]:
    """Markdown rows: per stream and method, its accuracy on either split and the candidate's lead over it."""

    def acc(runs: Mapping[str, Mapping[int, dict]], method: str, seed: int) -> float | None:
        record = runs.get(method, {}).get(seed)
        return None if record is None else float(record["result"]["average_accuracy"])

    def cell(x: float | None, signed: bool = False) -> str:
        return "—" if x is None else f"{x:+.4f}" if signed else f"{x:.4f}"

    def lead(runs: Mapping[str, Mapping[int, dict]], method: str, seed: int) -> float | None:
        mine, theirs = acc(runs, "candidate", seed), acc(runs, method, seed)
        return None if method == "candidate" or mine is None or theirs is None else mine - theirs

    rows = [
        "| stream | method | validation split | test split | candidate − method, validation | test |",
        "|---|---|---|---|---|---|",
    ]
    for seed in seeds:
        for m in methods:
            cells = [cell(acc(val, m, seed)), cell(acc(test, m, seed))]
            cells += [cell(lead(val, m, seed), True), cell(lead(test, m, seed), True)]
            rows.append(f"| {seed} | `{m}` | " + " | ".join(cells) + " |")
    return rows
