"""Proxy fidelity: does a study's short proxy rank designs as the full protocol does?

The study's top designs and some random designs of its space are run twice on the validation split with the
study's proxy seed and held-out fraction: once at the proxy settings, once at the full published protocol. The
Spearman rank correlation between the two scores, per benchmark, says how far the proxy can be trusted. Every
run goes through the run cache (`evaluation.cache`), so the command resumes and alternative proxy settings
(`proxy_overrides`) can be compared against the same full runs at the cost of the proxy runs only. The designs
arrive as a list: the search's CLI takes the top ones from the study's storage (`search.export.top_designs`) and
adds random ones (`random_designs`).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from clharness.atomic import write_atomic

from evaluation.cache import RunFn, run_cached, sha256_text, store_module, validation_configs
from evaluation.errors import UserError
from evaluation.final_eval import LogFn

DEFAULT_OUT = Path("results") / "fidelity"
PROXY_FIELDS = ("iters", "contexts", "train_subset", "seeds", "lr")


def gap_share(accuracy: float, anchor: Mapping[str, float]) -> float:
    """The share of the gap between `none` and joint training that an average accuracy closes."""
    return (accuracy - anchor["none"]) / (anchor["joint"] - anchor["none"])


class BenchmarkProxy(Protocol):
    """What fidelity needs of a study's benchmark (`search.studies.BenchmarkProxy` has it)."""

    @property
    def experiment(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def iters(self) -> int | None: ...
    @property
    def contexts(self) -> int | None: ...
    @property
    def train_subset(self) -> int | None: ...
    @property
    def val_fraction(self) -> float: ...
    @property
    def seeds(self) -> tuple[int, ...]: ...
    @property
    def lr(self) -> float | None: ...


@dataclass
class DesignRun:
    """One design: where it came from, its module, and its proxy and full scores per benchmark."""

    label: str
    origin: str  # "top" (a trial of the study) or "random" (drawn from the space)
    trial: int | None
    trial_value: float | None
    source: str
    design: dict
    proxy: dict[str, float] = field(default_factory=dict)
    full: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def spearman(proxy: Sequence[float], full: Sequence[float]) -> tuple[float, float]:
    """Spearman's rho and its two-sided p-value (NaN for fewer than 3 designs or constant scores)."""
    if len(proxy) < 3 or len(set(proxy)) < 2 or len(set(full)) < 2:
        return math.nan, math.nan
    from scipy.stats import spearmanr

    res = spearmanr(proxy, full)
    return float(res.statistic), float(res.pvalue)


@dataclass(frozen=True)
class Agreement:
    """How a cheap rung's scores order designs against their full scores (the designs both scored)."""

    designs: list[str]
    strong: list[str]  # the strong half: the better half at full fidelity, where a search decides
    rho: float
    p_value: float
    rho_strong: float
    # the full best among the rung's three best (None: the full best has no rung score)
    best_in_top3: bool | None


def agreement(scores: Mapping[str, float], full: Mapping[str, float], best: str | None = None) -> Agreement:
    """Spearman's rho of `scores` against `full` over the designs in both, over their strong half, and whether
    `best` (default: the best of `full`) is in the top 3 of `scores`."""
    both = sorted(set(scores) & set(full))
    rho, p = spearman([scores[k] for k in both], [full[k] for k in both])
    strong = sorted(both, key=lambda k: -full[k])[: (len(both) + 1) // 2]
    rho_strong, _ = spearman([scores[k] for k in strong], [full[k] for k in strong])
    if best is None and full:
        best = max(full, key=lambda k: full[k])
    top3 = sorted(both, key=lambda k: -scores[k])[:3]
    return Agreement(both, strong, rho, p, rho_strong, best in top3 if best in both else None)


def random_designs(m: int, *, seed: int, fixed: Mapping[str, Any], exclude: set[str]) -> list[DesignRun]:
    """`m` designs drawn uniformly from the study's space (a seeded RandomSampler on an in-memory study)."""
    import optuna

    import space

    sampler = optuna.samplers.RandomSampler(seed=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scratch = optuna.create_study(sampler=sampler, direction="maximize")
    out: list[DesignRun] = []
    for _attempt in range(50 * max(m, 1)):
        if len(out) == m:
            break
        trial = scratch.ask()
        try:
            design = space.suggest(trial, fixed=fixed)
            source = space.generate_source(design)
        except ValueError:  # space.DesignError: a combination the generator refuses; draw another
            scratch.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        scratch.tell(trial, 0.0)
        canonical = json.dumps(design.to_dict(), sort_keys=True)
        if canonical in exclude:
            continue
        exclude.add(canonical)
        out.append(DesignRun(f"random_{len(out)}", "random", None, None, source, design.to_dict()))
    return out


def _configs(bench: BenchmarkProxy, *, full: bool, device: str, overrides: Mapping[str, Any]) -> list[Any]:
    """RunConfigs of one benchmark: the proxy (one per proxy seed) or the full protocol (first proxy seed)."""
    if full:
        return validation_configs(
            bench.experiment, bench.seeds[:1], val_fraction=bench.val_fraction, device=device
        )
    settings: dict[str, Any] = {name: getattr(bench, name) for name in PROXY_FIELDS}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    seeds = settings.pop("seeds")
    return validation_configs(
        bench.experiment, seeds, val_fraction=bench.val_fraction, device=device, **settings
    )


def fidelity(
    study: str,
    benches: Sequence[BenchmarkProxy],
    designs: Sequence[DesignRun],
    *,
    device: str = "auto",
    out_dir: Path = DEFAULT_OUT,
    proxy_overrides: Mapping[str, Any] | None = None,
    run_fn: RunFn | None = None,
    log: LogFn = print,
    command: str = "",
) -> dict:
    """Run (or resume) the fidelity measurement of `designs` on the study's proxies `benches`.

    Fills each design's proxy and full scores and writes `<out>/<study>.md` and `.json` (with
    `__<override>` in the name for alternative proxy settings); returns the summary.
    """
    from clharness.errors import DataError, HarnessError

    overrides = dict(proxy_overrides or {})
    unknown = set(overrides) - set(PROXY_FIELDS)
    if unknown:
        raise UserError(f"unknown proxy override {sorted(unknown)[0]!r}; allowed: {', '.join(PROXY_FIELDS)}")
    module_dir = out_dir / "modules" / study
    runs_dir = out_dir / "runs"
    paths = {d.label: store_module(module_dir, d.label, d.source)[0] for d in designs}

    # the proxy runs first (cheap), then the full runs; progress with an estimate from measured durations
    plan = [(d, b, full) for full in (False, True) for b in benches for d in designs]
    durations: dict[tuple[str, bool], list[float]] = {}
    data_errors: dict[str, str] = {}
    for index, (d, bench, full) in enumerate(plan):
        phase = "full" if full else "proxy"
        if bench.experiment in data_errors:
            continue
        scores: list[float] = []
        for cfg in _configs(bench, full=full, device=device, overrides=overrides):
            tag = f"[{index + 1}/{len(plan)}] {phase} {bench.experiment} {d.label} seed {cfg.seed}"
            try:
                t0 = time.perf_counter()
                record, cached = run_cached(
                    d.label, paths[d.label], sha256_text(d.source), cfg, cache_dir=runs_dir, run_fn=run_fn
                )
            except DataError as exc:
                data_errors[bench.experiment] = str(exc)
                log(f"{bench.experiment}: dataset missing, skipped: {exc}")
                break
            except HarnessError as exc:  # a diverged or broken design has no rank: left out, with the reason
                d.notes.append(f"{phase} {bench.experiment} seed {cfg.seed}: {exc}")
                log(f"{tag}: failed: {exc}")
                scores = []
                break
            scores.append(float(record["result"]["average_accuracy"]))
            if not cached:
                durations.setdefault((bench.experiment, full), []).append(time.perf_counter() - t0)
                left = [(x, b, f) for x, b, f in plan[index + 1 :] if b.experiment not in data_errors]
                log(f"{tag}: {scores[-1]:.4f} in {time.perf_counter() - t0:.0f} s; {_eta(left, durations)}")
        if scores:
            (d.full if full else d.proxy)[bench.label] = statistics.fmean(scores)

    summary = _summarize(study, benches, designs, overrides, data_errors, command)
    out_dir.mkdir(parents=True, exist_ok=True)
    # alternative proxy settings get files of their own, beside the study's shipped proxy
    stem = study + "".join(
        f"__{k}{'-'.join(map(str, v)) if isinstance(v, tuple | list) else v}"
        for k, v in sorted(overrides.items())
    )
    write_atomic(out_dir / f"{stem}.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    write_atomic(out_dir / f"{stem}.md", render(summary))
    for b, res in summary["benchmarks"].items():
        log(f"fidelity {study} {b}: Spearman rho = {res['spearman_rho']:.3f} over {res['n']} designs")
    summary["complete"] = not data_errors
    return summary


def _eta(
    left: Sequence[tuple[DesignRun, BenchmarkProxy, bool]], durations: Mapping[tuple[str, bool], list[float]]
) -> str:
    total, unknown = 0.0, 0
    for _d, bench, full in left:
        measured = durations.get((bench.experiment, full))
        if measured:
            total += statistics.fmean(measured) * (1 if full else len(bench.seeds))
        else:
            unknown += 1
    text = f"{len(left)} left, ETA {total / 60:.0f} min"
    return text + (f" + {unknown} runs of unknown length" if unknown else "")


def _summarize(
    study: str,
    benches: Sequence[BenchmarkProxy],
    designs: Sequence[DesignRun],
    overrides: Mapping[str, Any],
    data_errors: Mapping[str, str],
    command: str,
) -> dict:
    out: dict = {
        "study": study,
        "command": command,
        "proxy_overrides": dict(overrides),
        "benchmarks": {},
    }
    for bench in benches:
        b = bench.label
        proxy_settings = {name: getattr(bench, name) for name in PROXY_FIELDS}
        proxy_settings.update({k: v for k, v in overrides.items() if v is not None})
        pairs = [(d.proxy[b], d.full[b]) for d in designs if b in d.proxy and b in d.full]
        rho, p = spearman([x for x, _ in pairs], [y for _, y in pairs])
        out["benchmarks"][b] = {
            "proxy": {
                **proxy_settings,
                "val_fraction": bench.val_fraction,
                "seeds": list(proxy_settings["seeds"]),
            },
            "full": {"seed": bench.seeds[0], "val_fraction": bench.val_fraction, "eval_split": "val"},
            "spearman_rho": rho,
            "p_value": p,
            "n": len(pairs),
            "data_error": data_errors.get(b),
            "designs": [
                {
                    "label": d.label,
                    "origin": d.origin,
                    "trial": d.trial,
                    "trial_value": d.trial_value,
                    "proxy": d.proxy.get(b),
                    "full": d.full.get(b),
                    "notes": d.notes,
                }
                for d in designs
            ],
        }
    return out


def render(summary: Mapping[str, Any]) -> str:
    """Markdown: per benchmark, the settings, Spearman's rho and the table of designs (ranked by full score)."""
    lines = [f"# Proxy fidelity of study `{summary['study']}`", ""]
    if summary.get("command"):
        lines += [f"Produced by: `{summary['command']}`", ""]
    for b, res in summary["benchmarks"].items():
        lines += [f"## {b}", ""]
        if res.get("data_error"):
            lines += [f"No result: dataset missing ({res['data_error']}).", ""]
            continue
        rho = res["spearman_rho"]
        rho_text = "n/a (fewer than 3 designs with both scores)" if math.isnan(rho) else f"**{rho:.3f}**"
        p_text = "" if math.isnan(res["p_value"]) else f" (p = {res['p_value']:.2g})"
        lines += [
            f"Spearman rank correlation between proxy and full scores: {rho_text}{p_text}, "
            f"over {res['n']} designs.",
            "",
            f"- proxy: `{json.dumps(res['proxy'], sort_keys=True)}` (validation split)",
            f"- full: published protocol, `{json.dumps(res['full'], sort_keys=True)}`",
            "",
            "| design | origin | proxy score | full score | proxy rank | full rank | notes |",
            "|---|---|---|---|---|---|---|",
        ]
        rows = res["designs"]
        proxy_rank = _ranks([r["proxy"] for r in rows])
        full_rank = _ranks([r["full"] for r in rows])
        order = sorted(range(len(rows)), key=lambda i: (rows[i]["full"] is None, -(rows[i]["full"] or 0.0)))
        for i in order:
            r = rows[i]
            cells = [
                f"`{r['label']}`",
                r["origin"],
                "—" if r["proxy"] is None else f"{r['proxy']:.4f}",
                "—" if r["full"] is None else f"{r['full']:.4f}",
                str(proxy_rank[i] or "—"),
                str(full_rank[i] or "—"),
                "; ".join(r["notes"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _ranks(values: Sequence[float | None]) -> list[int | None]:
    """1 = best; None stays None."""
    present = sorted((v for v in values if v is not None), reverse=True)
    return [None if v is None else present.index(v) + 1 for v in values]
