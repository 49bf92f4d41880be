"""Promotion: a study's best trials re-run at a higher fidelity, the final choice made there (DESIGN.md).

`promote` takes the K best distinct designs of a study by proxy value and runs each trial's stored module on every
benchmark of the study at the chosen fidelity (default: the full published protocol) on the validation split with
the study's proxy stream seeds, through the run cache. `none` and joint training run at the same fidelity as the
anchors, so that a promoted score is on the objective's scale (the weighted share of the none-to-joint gap
closed). Results live in the study's user attributes, one per trial and fidelity (`promoted:<fidelity>:<n>`),
written through Optuna's public API; `best_promoted` is what export and `make regenerate` pick first.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from statistics import fmean
from typing import Any

import optuna

from evaluation.cache import RunFn, run_cached, run_joint_cached, sha256_text, store_module
from search.export import rank_trials
from search.objective import gap_share
from search.studies import BenchmarkProxy, StudyDef

PREFIX = "promoted:"
DEFAULT_OUT = Path("results") / "fidelity"
LogFn = Callable[[str], None]


def fidelity_name(overrides: Mapping[str, int | None]) -> str:
    """`full`, or the settings that differ from the published protocol (e.g. `iters80-contexts3`)."""
    parts = [f"{k.replace('_', '')}{v}" for k, v in sorted(overrides.items()) if v is not None]
    return "-".join(parts) or "full"


def _configs(bench: BenchmarkProxy, overrides: Mapping[str, int | None], device: str) -> list[Any]:
    from evaluation.cache import validation_configs

    return validation_configs(
        bench.experiment,
        bench.seeds,
        val_fraction=bench.val_fraction,
        device=device,
        iters=overrides.get("iters"),
        contexts=overrides.get("contexts"),
        train_subset=overrides.get("train_subset"),
    )


def _iterations(study_def: StudyDef, overrides: Mapping[str, int | None]) -> int:
    """Training iterations of one design at this fidelity: the higher, the more a score is worth."""
    from clharness.protocol import PROTOCOLS

    total = 0
    for b in study_def.benchmarks:
        p = PROTOCOLS[b.experiment]
        total += (
            (overrides.get("iters") or p.iters) * (overrides.get("contexts") or p.contexts) * len(b.seeds)
        )
    return total


def promote(
    study: optuna.Study,
    study_def: StudyDef,
    *,
    top: int,
    overrides: Mapping[str, int | None] | None = None,
    device: str = "auto",
    out_dir: Path = DEFAULT_OUT,
    run_fn: RunFn | None = None,
    joint_fn: RunFn | None = None,
    log: LogFn = print,
) -> dict[int, dict]:
    """Run the `top` best distinct designs of `study` at the fidelity; returns and stores their results."""
    import space

    overrides = dict(overrides or {})
    name = fidelity_name(overrides)
    runs_dir = out_dir / "runs"
    module_dir = out_dir / "modules" / study_def.name
    chosen, seen = [], set()
    for t in rank_trials(study.get_trials(deepcopy=False)):
        key = json.dumps(t.user_attrs.get("design"), sort_keys=True)
        if isinstance(t.user_attrs.get("module_source"), str) and key not in seen:
            seen.add(key)
            chosen.append(t)
        if len(chosen) == top:
            break
    anchors: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cl-promote-") as tmp:
        none_src = space.generate_source(space.PRESETS["none"], {"preset": "none"})
        none_path = Path(tmp) / "none.py"
        none_path.write_text(none_src, encoding="utf-8")
        for bench in study_def.benchmarks:
            nones, joints = [], []
            for cfg in _configs(bench, overrides, device):
                record, _ = run_cached(
                    "none", none_path, sha256_text(none_src), cfg, cache_dir=runs_dir, run_fn=run_fn
                )
                nones.append(float(record["result"]["average_accuracy"]))
                record, _ = run_joint_cached(cfg, cache_dir=runs_dir, run_fn=joint_fn)
                joints.append(float(record["result"]["average_accuracy"]))
            anchors[bench.experiment] = {"none": fmean(nones), "joint": fmean(joints)}
    total_weight = sum(b.weight for b in study_def.benchmarks)
    results: dict[int, dict] = {}
    for rank, trial in enumerate(chosen, 1):
        source = trial.user_attrs["module_source"]
        path, sha = store_module(module_dir, f"trial_{trial.number}", source)
        scores: dict[str, float] = {}
        for bench in study_def.benchmarks:
            accs = []
            for cfg in _configs(bench, overrides, device):
                t0 = time.perf_counter()
                record, cached = run_cached(
                    f"trial_{trial.number}", path, sha, cfg, cache_dir=runs_dir, run_fn=run_fn
                )
                accs.append(float(record["result"]["average_accuracy"]))
                if not cached:
                    log(
                        f"[{rank}/{len(chosen)}] trial {trial.number} {bench.experiment} seed {cfg.seed} ({name}): "
                        f"{accs[-1]:.4f} in {time.perf_counter() - t0:.0f} s"
                    )
            scores[bench.experiment] = fmean(accs)
        gaps = {b: gap_share(s, anchors[b]) for b, s in scores.items()}
        value = sum(b.weight * gaps[b.experiment] for b in study_def.benchmarks) / total_weight
        entry = {
            "trial": trial.number,
            "fidelity": name,
            "iterations": _iterations(study_def, overrides),
            "value": value,
            "proxy_value": trial.value,
            "scores": scores,
            "gaps": gaps,
            "anchors": anchors,
            "module_sha256": sha,
        }
        study.set_user_attr(f"{PREFIX}{name}:{trial.number}", entry)
        results[trial.number] = entry
        log(
            f"trial {trial.number}: {name} value {value:.4f} (proxy {trial.value:.4f}); "
            + ", ".join(f"{b} {s:.4f}" for b, s in scores.items())
        )
    return results


def promoted(study: optuna.Study) -> list[dict]:
    """Every promotion result stored on the study."""
    return [v for k, v in study.user_attrs.items() if k.startswith(PREFIX) and isinstance(v, dict)]


def best_promoted(study: optuna.Study) -> dict | None:
    """The best result at the highest fidelity run (most training iterations), or None without promotion."""
    entries = promoted(study)
    if not entries:
        return None
    top = max(e["iterations"] for e in entries)
    return max((e for e in entries if e["iterations"] == top), key=lambda e: (e["value"], -e["trial"]))
