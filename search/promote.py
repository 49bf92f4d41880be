"""Promotion: a study's best trials re-run at a higher fidelity, the final choice made there (DESIGN.md).

`promote` takes the K best distinct designs of a study by proxy value and runs each trial's module (generated again
from its design and checked against the one it stored, `search.export.trial_module`) on every
benchmark of the study at the chosen fidelity (default: the full published protocol) on the validation split with
the study's proxy stream seeds, through the run cache. `none` and joint training run at the same fidelity as the
anchors, so that a promoted score is on the objective's scale (the weighted share of the none-to-joint gap
closed). Results live in the study's user attributes, one per trial and fidelity (`promoted:<fidelity>:<n>`),
written through Optuna's public API; `search.records.best_promoted` is what export and `make regenerate` pick first.

Optuna does not change a finished trial's user attributes, so for the dashboard each result is also a trial of
a companion study in the same storage, `NAME:promoted` (`record_promoted`), whose per-benchmark attributes the
dashboard sorts and plots like the proxy's. It is derived from the study's attributes, never read back.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from statistics import fmean
from typing import Any

import optuna
from clharness.protocol import PROTOCOLS
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from evaluation.cache import (
    CachedRun,
    RunFn,
    share_work,
    store_module,
    validation_configs,
)
from evaluation.claims import exclusive
from evaluation.errors import UserError
from evaluation.fidelity import gap_share
from search import annotate, optuna_adapter
from search.export import trial_module
from search.objective import none_source, objective_value
from search.records import (
    PREFIX,
    PROMOTED_METRIC,
    promoted,
    promoted_study_name,
    quiet_optuna,
    rank_trials,
)
from search.storage import check_writable
from search.studies import BenchmarkProxy, StudyDef

DEFAULT_OUT = Path("results") / "fidelity"
LogFn = Callable[[str], None]


def fidelity_name(overrides: Mapping[str, int | None]) -> str:
    """`full`, or the settings that differ from the published protocol (e.g. `iters80-contexts3`)."""
    parts = [f"{k.replace('_', '')}{v}" for k, v in sorted(overrides.items()) if v is not None]
    return "-".join(parts) or "full"


def _configs(bench: BenchmarkProxy, overrides: Mapping[str, int | None], device: str) -> list[Any]:
    return validation_configs(
        bench.experiment,
        bench.seeds,
        val_fraction=bench.val_fraction,
        device=device,
        iters=overrides.get("iters"),
        contexts=overrides.get("contexts"),
        train_subset=overrides.get("train_subset"),
    )


def shared_runs(study_def: StudyDef, fidelity: str) -> list[list[str]]:
    """The study's benchmark labels grouped by the runs they share at `fidelity`: at the full protocol the proxies
    of one experiment on the same streams (say a short one and a learning-rate-matched one) are one run."""
    groups: dict[str, list[str]] = {}
    for b in study_def.benchmarks:
        key = repr(_configs(b, {}, "auto")) if fidelity == "full" else b.label
        groups.setdefault(key, []).append(b.label)
    return list(groups.values())


def _iterations(study_def: StudyDef, overrides: Mapping[str, int | None]) -> int:
    """Training iterations of one design at this fidelity: the higher, the more a score is worth."""
    total = 0
    for b in study_def.benchmarks:
        p = PROTOCOLS[b.experiment]
        total += (
            (overrides.get("iters") or p.iters) * (overrides.get("contexts") or p.contexts) * len(b.seeds)
        )
    return total


@dataclasses.dataclass
class Plan:
    """One study's promotion, planned: the designs chosen, their modules and every run it needs."""

    study: optuna.Study
    study_def: StudyDef
    storage: BaseStorage
    fidelity: str
    overrides: dict[str, int | None]
    device: str
    runs_dir: Path
    chosen: list[FrozenTrial]
    modules: dict[int, tuple[Path, str]]
    none_module: tuple[Path, str]
    runs: list[CachedRun]


def plan(
    study: optuna.Study,
    study_def: StudyDef,
    *,
    storage: BaseStorage,
    top: int,
    overrides: Mapping[str, int | None] | None = None,
    streams: Mapping[str, tuple[int, ...]] | None = None,
    rank_from: str | None = None,
    device: str = "auto",
    out_dir: Path = DEFAULT_OUT,
) -> Plan:
    """Choose the `top` best distinct designs of `study` and its warm starts (`promote`), check their modules
    and list every run: the anchors, then each design on each benchmark. Nothing is run or written to the study."""
    overrides = dict(overrides or {})
    name = fidelity_name(overrides)
    if streams:
        unknown = sorted(set(streams) - set(study_def.experiments))
        if unknown:
            raise UserError(f"--streams names {unknown[0]!r}, not a benchmark of study {study_def.name!r}")
        study_def = dataclasses.replace(
            study_def,
            benchmarks=tuple(
                dataclasses.replace(b, seeds=tuple(streams.get(b.experiment, b.seeds)))
                for b in study_def.benchmarks
            ),
        )
        counts = sorted({len(b.seeds) for b in study_def.benchmarks})
        name += f"-{'+'.join(map(str, counts))}streams"
    module_dir = out_dir / "modules" / study_def.name
    chosen: list[FrozenTrial] = []
    seen: set[str] = set()
    for t in _ranked(study, rank_from):  # the `top` best distinct designs, and every warm start by proxy
        key = json.dumps(t.user_attrs.get("design"), sort_keys=True)
        if key in seen:
            continue
        if len(chosen) < top or (rank_from is None and t.user_attrs.get("warm_start")):
            seen.add(key)
            chosen.append(t)
    # Every module checked before anything is run or written: an edited trial stops the command in one line.
    sources = {t.number: trial_module(t, study.study_name) for t in chosen}
    none_path, none_sha = store_module(out_dir / "modules" / "anchors", "none", none_source())
    runs: list[CachedRun] = []
    for bench in study_def.benchmarks:
        for cfg in _configs(bench, overrides, device):
            runs += [CachedRun("none", none_path, none_sha, cfg), CachedRun("joint", None, "joint", cfg)]
    modules = {t.number: store_module(module_dir, f"trial_{t.number}", sources[t.number]) for t in chosen}
    for trial in chosen:
        path, sha = modules[trial.number]
        runs += [
            CachedRun(f"trial_{trial.number}", path, sha, cfg)
            for b in study_def.benchmarks
            for cfg in _configs(b, overrides, device)
        ]
    return Plan(
        study, study_def, storage, name, overrides, device, out_dir / "runs", chosen, modules,
        (none_path, none_sha), runs,
    )  # fmt: skip


def run_plans(
    plans: Sequence[Plan], *, run_fn: RunFn | None = None, joint_fn: RunFn | None = None, log: LogFn = print
) -> None:
    """Every run of the plans, each once (the anchors are shared), through the run cache; shared with any other
    process running the same plans, which waits only at the end of all of them, not of each study's."""
    runs: dict[Path, tuple[Plan, CachedRun]] = {}
    for p in plans:
        for r in p.runs:
            runs.setdefault(r.record(p.runs_dir), (p, r))
    with closing(
        share_work(list(runs), log=log, record_of=lambda path: path)
    ) as work:  # closed: claims released
        for path in work:
            p, run = runs[path]
            tag = f"{run.label} {run.cfg.experiment} seed {run.cfg.seed} ({p.study_def.name}, {p.fidelity})"
            log(f"{tag}: running")
            t0 = time.perf_counter()
            acc = run.execute(p.runs_dir, run_fn, joint_fn)
            log(f"{tag}: {acc:.4f} in {time.perf_counter() - t0:.0f} s")


def score(
    p: Plan, *, run_fn: RunFn | None = None, joint_fn: RunFn | None = None, log: LogFn = print
) -> dict[int, dict]:
    """The plan's results, read back from the run cache, stored on the study and as trials of its promoted study;
    returns them. Two processes scoring side by side write the study one at a time (no duplicate trials)."""
    study, study_def, name = p.study, p.study_def, p.fidelity
    none_path, none_sha = p.none_module
    with exclusive(p.runs_dir / f"promote-{study_def.name}"):

        def accuracy(label: str, path: Path | None, sha: str, bench: BenchmarkProxy) -> float:
            return fmean(
                CachedRun(label, path, sha, cfg).execute(p.runs_dir, run_fn, joint_fn)
                for cfg in _configs(bench, p.overrides, p.device)
            )

        anchors = {
            b.label: {
                "none": accuracy("none", none_path, none_sha, b),
                "joint": accuracy("joint", None, "joint", b),
            }
            for b in study_def.benchmarks
        }
        results: dict[int, dict] = {}
        for trial in p.chosen:
            path, sha = p.modules[trial.number]
            scores = {b.label: accuracy(f"trial_{trial.number}", path, sha, b) for b in study_def.benchmarks}
            gaps = {b: gap_share(s, anchors[b]) for b, s in scores.items()}
            value = objective_value(scores, study_def, anchors)
            entry = {
                "trial": trial.number,
                "fidelity": name,
                "iterations": _iterations(study_def, p.overrides),
                "value": value,
                "proxy_value": trial.value,
                "scores": scores,
                "gaps": gaps,
                "anchors": anchors,
                "streams": {b.label: list(b.seeds) for b in study_def.benchmarks},
                "module_sha256": sha,
            }
            study.set_user_attr(f"{PREFIX}{name}:{trial.number}", entry)
            record_promoted(study, p.storage, artifact_folder=annotate.study_artifact_dir(study))
            results[trial.number] = entry
            log(
                f"trial {trial.number}: {name} value {value:.4f} (proxy {trial.value:.4f}); "
                + ", ".join(f"{b} {s:.4f}" for b, s in scores.items())
            )
    return results


def promote(
    study: optuna.Study,
    study_def: StudyDef,
    *,
    run_fn: RunFn | None = None,
    joint_fn: RunFn | None = None,
    log: LogFn = print,
    **planned: Any,
) -> dict[int, dict]:
    """Run the `top` best distinct designs of `study` at the fidelity, and its warm starts (the published
    settings it began from) with them; returns and stores their results, on the study and as trials of its promoted
    study in `storage` (the study's).

    The warm starts compete at full fidelity because the proxy can misjudge a strength: a tuned baseline is then
    never worse than its published setting on the validation stream, and a searched design must beat the designs
    it started from there too. `streams` (experiment -> validation stream seeds) replaces the study's proxy streams,
    for promotion on several streams: a design's score is the mean over them, and the fidelity's name says how
    many (`full-2streams`), so that such results rank above one stream's. `rank_from` (a fidelity the study was
    promoted at) picks the `top` designs by their results there instead of by proxy value, warm starts only where
    they rank: the next rung of a ladder, or a budget rule's best two going on to a second stream.
    """
    p = plan(study, study_def, **planned)  # storage, top, overrides, streams, rank_from, device, out_dir
    run_plans([p], run_fn=run_fn, joint_fn=joint_fn, log=log)
    return score(p, run_fn=run_fn, joint_fn=joint_fn, log=log)


def _ranked(study: optuna.Study, rank_from: str | None) -> list[FrozenTrial]:
    """The study's trials with a module, best first: by proxy value, or by their results at fidelity `rank_from`
    (a UserError when the study has none there, naming the fidelities it has)."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False)
        if isinstance(t.user_attrs.get("module_source"), str)
        or isinstance(t.user_attrs.get("module_sha256"), str)
    ]
    if rank_from is None:
        return rank_trials(trials)
    entries = {e["trial"]: float(e["value"]) for e in promoted(study) if e.get("fidelity") == rank_from}
    if not entries:
        have = sorted({str(e.get("fidelity")) for e in promoted(study)})
        raise UserError(
            f"study {study.study_name!r} has no results at fidelity {rank_from!r} to rank by"
            + (f" (it has {', '.join(have)})" if have else " (it was never promoted)")
        )
    return sorted((t for t in trials if t.number in entries), key=lambda t: (-entries[t.number], t.number))


def record_promoted(study: optuna.Study, storage: BaseStorage, *, artifact_folder: Path | None) -> list[int]:
    """Add each promotion result of `study` that its promoted study lacks as a complete trial there.

    The promoted study (`promoted_study_name`, in `storage`, the study's) gets a trial per source trial and
    fidelity: the source trial's parameters and distributions, the promoted value, user attributes
    `promoted_<benchmark>` and `promoted_gap_<benchmark>` (accuracy, gap closed), `proxy_<benchmark>`,
    `source_trial`, `fidelity` and `iterations`, a note, and the module as an artifact in `artifact_folder`
    (None: no artifact). A result already there is not added again. Returns the numbers of the trials added.
    """
    if isinstance(storage, RDBStorage):
        check_writable(storage.url)  # a committed reference study is evidence: its file is never written
    entries = promoted(study)
    if not entries:
        return []
    sources = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    benchmarks = [b for b in study.user_attrs.get("benchmarks", []) if isinstance(b, str)]
    with quiet_optuna():  # not Optuna's "A new study created" and "Trial N finished" lines
        companion = optuna.create_study(
            study_name=promoted_study_name(study.study_name),
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),  # every trial is enqueued: nothing is sampled
            direction="maximize",
            load_if_exists=True,
        )
        if companion.metric_names != [PROMOTED_METRIC]:
            with optuna_adapter.no_experimental_warning():
                companion.set_metric_names([PROMOTED_METRIC])
        annotate.refresh_note(companion, annotate.promoted_study_note(study.study_name, benchmarks))
        done = {
            (t.user_attrs.get("source_trial"), t.user_attrs.get("fidelity"))
            for t in companion.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        }
        added = []
        for entry in sorted(entries, key=lambda e: (e["iterations"], e["trial"])):
            source = sources.get(entry["trial"])
            if source is None or (entry["trial"], entry["fidelity"]) in done:
                continue
            added.append(_add_promoted_trial(companion, study.study_name, source, entry, artifact_folder))
    return added


def _add_promoted_trial(
    companion: optuna.Study, name: str, source: FrozenTrial, entry: dict, artifact_folder: Path | None
) -> int:
    """Enqueue, ask and tell one promoted trial; returns its number. Asked rather than added whole
    (`Study.add_trial`), since an artifact cannot be attached to a finished trial."""
    from optuna_dashboard import save_note  # deferred: a 1 s import every command would pay

    proxy = source.user_attrs.get("scores")
    proxy = proxy if isinstance(proxy, dict) else {}
    attrs: dict[str, Any] = {
        "source_trial": entry["trial"],
        "fidelity": entry["fidelity"],
        "iterations": entry["iterations"],
        "proxy_value": entry["proxy_value"],
        "module_sha256": entry["module_sha256"],
    }
    for bench, acc in entry["scores"].items():
        attrs[f"promoted_{bench}"] = acc
        attrs[f"promoted_gap_{bench}"] = entry["gaps"][bench]
        if isinstance(proxy.get(bench), (int, float)):
            attrs[f"proxy_{bench}"] = proxy[bench]
    # The description goes into the note only: the dashboard shows each attribute on one line.
    description = source.user_attrs.get("description")
    # The module shown is the one checked against the trial's design (before the trial is added).
    module = trial_module(source, name) if artifact_folder is not None else None
    companion.enqueue_trial(source.params, user_attrs=attrs)
    trial = companion.ask(fixed_distributions=source.distributions)
    try:
        if isinstance(description, str):
            save_note(trial, annotate.promoted_trial_note(entry, description, name, proxy))
        if artifact_folder is not None and module is not None:
            annotate.upload_module(trial, artifact_folder, module)
    except BaseException:
        companion.tell(trial, state=TrialState.FAIL)  # not left running; the next call adds it again
        raise
    companion.tell(trial, entry["value"])
    return trial.number
