"""A study's status as text: trial counts by state, the best trials with their per-benchmark scores, the trials
compared by where their designs came from, and the promoted trials beside their proxy ranks."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from evaluation.fidelity import spearman
from search.promote import shared_runs
from search.records import CRASH, SWEEP_ATTR, counts_toward_budget, promoted, rank_trials, top_promoted
from search.studies import StudyDef


def trial_origins(trials: Sequence[FrozenTrial], study_def: StudyDef) -> dict[int, str]:
    """Trial number -> where its design came from: `warm start` (a preset the study enqueued), `strength sweep`
    (a point `search sweep` added, outside the budget), `random start`
    (the sampler's first sampled trials, before TPE models the history; every sampled trial for the random
    sampler) or `TPE`. A trial that crashed is left out: its retry, a later trial, stands for its design."""
    random_start = (
        len(trials)
        if study_def.sampler.name == "random"
        else study_def.sampler.n_startup_trials - len(study_def.warm_start)
    )
    origins: dict[int, str] = {}
    sampled = 0
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.WAITING or (t.state == TrialState.FAIL and not counts_toward_budget(t)):
            continue
        if t.user_attrs.get(SWEEP_ATTR):
            origins[t.number] = "strength sweep"
            continue
        if "warm_start" in t.user_attrs:
            origins[t.number] = "warm start"
            continue
        origins[t.number] = "random start" if sampled < random_start else "TPE"
        sampled += 1
    return origins


def format_origins(complete: Sequence[FrozenTrial], origins: dict[int, str], top: int = 5) -> list[str]:
    """Lines comparing the complete trials by origin: is the sampler finding better designs than random ones?"""
    lines = [f"by origin (complete trials): {'n':>4}  {'median':>7}  {f'top-{top} mean':>10}  {'best':>7}"]
    for origin in ("warm start", "strength sweep", "random start", "TPE"):
        values = sorted(
            (float(t.value or 0.0) for t in complete if origins.get(t.number) == origin), reverse=True
        )
        if values:
            lines.append(
                f"  {origin:<26}{len(values):>4}  {statistics.median(values):>7.4f}  "
                f"{statistics.fmean(values[:top]):>10.4f}  {values[0]:>7.4f}"
            )
    return lines


def format_promoted(
    study: optuna.Study, complete: Sequence[FrozenTrial], study_def: StudyDef | None = None
) -> list[str]:
    """Lines for the trials promoted to the highest fidelity run, best first, with their proxy values and ranks
    (`complete`, best first) and Spearman's rho between the two: does the proxy rank its finalists as full runs
    do? With `study_def`, proxies that are one run at that fidelity share a column."""
    entries = sorted(top_promoted(study), key=lambda e: (-e["value"], e["trial"]))
    if not entries:
        return []
    top = entries[0]["iterations"]
    rank = {t.number: i + 1 for i, t in enumerate(complete)}
    benches = list(entries[0]["scores"])
    merged: list[list[str]] = []
    if study_def is not None and set(benches) == {b.label for b in study_def.benchmarks}:
        merged = [g for g in shared_runs(study_def, entries[0]["fidelity"]) if len(g) > 1]
        experiment = {b.label: b.experiment for b in study_def.benchmarks}
        titles = {g[0]: experiment[g[0]] for g in merged}
        benches = [b for b in benches if not any(b in g[1:] for g in merged)]
    else:
        titles = {}
    lines = [
        f"promoted to fidelity {entries[0]['fidelity']} ({top} iterations, validation split), best first:",
        f"  {'trial':>5}  {'value':>7}  {'proxy':>7}  {'rank':>4}  "
        + "  ".join(f"{titles.get(b, b):>14}" for b in benches),
    ]
    for e in entries:
        cells = "  ".join(f"{e['scores'][b]:>14.4f}" for b in benches)
        lines.append(
            f"  {e['trial']:>5}  {e['value']:>7.4f}  {e['proxy_value']:>7.4f}  {rank.get(e['trial'], '-'):>4}  {cells}"
        )
    lines += [f"  {titles[g[0]]}: one run for {' and '.join(g)} at this fidelity" for g in merged]
    rho, _ = spearman([e["proxy_value"] for e in entries], [e["value"] for e in entries])
    if rho == rho:  # NaN below 3 promoted trials
        lines.append(
            f"  proxy against {entries[0]['fidelity']} over these {len(entries)}: Spearman rho {rho:.2f}"
        )
    return lines


def format_ladder(study: optuna.Study, complete: Sequence[FrozenTrial]) -> list[str]:
    """One line per rung of the ladder, cheapest first: the proxy, then each fidelity trials were promoted to, with
    how many designs reached it and its best (docs/fidelity.md, "The ladder")."""
    entries = promoted(study)
    if not entries:
        return []
    top = complete[0]
    lines = [
        "ladder, cheapest rung first:",
        f"  {'rung':<24}{'designs':>8}  {'share':>6}  best",
        f"  {'proxy':<24}{len(complete):>8}  {1:>6.0%}  trial {top.number} {float(top.value or 0.0):.4f}",
    ]
    rungs: dict[str, list[dict]] = {}
    for e in entries:
        rungs.setdefault(str(e["fidelity"]), []).append(e)
    for fidelity, rung in sorted(
        rungs.items(), key=lambda item: (max(e["iterations"] for e in item[1]), item[0])
    ):
        best = max(rung, key=lambda e: (e["value"], -e["trial"]))
        lines.append(
            f"  {fidelity:<24}{len(rung):>8}  {len(rung) / len(complete):>6.0%}  "
            f"trial {best['trial']} {float(best['value']):.4f}"
        )
    return lines


def crash_kind(trial: FrozenTrial) -> str:
    """What stopped a trial that failed through no fault of its design: `interrupted (Ctrl-C)`, `worker lost`
    (its heartbeat went stale) or the error's type (`DataError`, `MemoryError`, ...)."""
    reason = str(trial.user_attrs.get("fail_reason") or "")
    if not reason:
        return "no reason recorded"
    if reason.startswith("interrupted"):
        return reason
    if reason.startswith("its worker stopped beating"):
        return "worker lost"
    return reason.split(":")[0]


def format_status(
    study: optuna.Study, budget: int | None, top: int = 5, study_def: StudyDef | None = None
) -> str:
    """The status report of a study as text (with `study_def`, also the trials compared by origin)."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    counted = sum(counts_toward_budget(t) for t in trials)
    crashed = [t for t in trials if t.state == TrialState.FAIL and not counts_toward_budget(t)]
    budget_txt = f"/{budget}" if budget is not None else ""
    lines = [f"study {study.study_name}: {counted}{budget_txt} trials counted toward the budget"]
    order = ("complete", "pruned", "fail", "running", "waiting")
    lines.append("  " + ", ".join(f"{s} {counts.get(s, 0)}" for s in order))
    if crashed:
        reasons = Counter(crash_kind(t) for t in crashed)
        last = crashed[-1]
        lines.append(
            f"  ({len(crashed)} failed by their run, not their design, and re-queued; they do not count: "
            + ", ".join(f"{n} {why}" for why, n in reasons.most_common())
            + f"; last, trial {last.number}: {last.user_attrs.get('fail_reason') or 'no reason recorded'})"
        )
    complete = rank_trials(trials)
    if not complete:
        lines.append("no complete trial yet")
        return "\n".join(lines)
    benches = list(study.user_attrs.get("benchmarks") or complete[0].user_attrs.get("scores", {}).keys())
    lines.append(f"best {min(top, len(complete))} of {len(complete)} complete trials:")
    header = f"  {'trial':>5}  {'value':>7}  " + "  ".join(f"{b:>10}" for b in benches) + "  time_s  note"
    lines.append(header)
    for t in complete[:top]:
        scores = t.user_attrs.get("scores", {})
        cells = "  ".join(f"{scores[b]:>10.4f}" if b in scores else f"{'-':>10}" for b in benches)
        note = t.user_attrs.get("warm_start") or ""
        wall = t.user_attrs.get("wall_time_s")
        wall_txt = f"{wall:>6.0f}" if isinstance(wall, int | float) else f"{'-':>6}"
        lines.append(f"  {t.number:>5}  {t.value:>7.4f}  {cells}  {wall_txt}  {note}")
    if study_def is not None:
        lines += format_origins(complete, trial_origins(trials, study_def), top)
    lines += format_ladder(study, complete)
    lines += format_promoted(study, complete, study_def)
    failed = [t for t in trials if t.user_attrs.get("fail_reason") and t.user_attrs.get("fail_kind") != CRASH]
    if failed:
        lines.append(
            f"{len(failed)} trial(s) failed or diverged by design; last: trial {failed[-1].number}: "
            f"{failed[-1].user_attrs['fail_reason']}"
        )
    return "\n".join(lines)
