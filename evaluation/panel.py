"""The fidelity panel: fixed designs run once at full fidelity, against which candidate proxies are ranked.

A proxy is worth its cost only if it orders strong designs as the full protocol does (DESIGN.md). The panel file
(`results/fidelity/panel.toml`) names a folder of hook modules (each file one design, named
`<label>-<sha12>.py`), the validation split and stream seed of each benchmark, and the candidate proxies. Every
run goes through the run cache (`evaluation.cache`, folder `results/fidelity/runs`), so the full runs are paid
once and reused for every later proxy question, and processes run side by side share the work (claims,
`evaluation.cache.share_work`).

For each benchmark and proxy the summary gives Spearman's rho between proxy and full scores over the panel (and over
its strong half), whether the panel's best design (at full fidelity) is in the proxy's top 3, its cost (training
steps, and the median wall time of its runs), and, from the proxy's anchors (`none` and joint training at the
same settings), how far apart the strong designs are in the objective's gap units. Its noise ceiling says what
rho and best-in-top-3 a second full run on another stream would reach, from the stream-to-stream spread of the
final evaluation's replicate runs (`replicates`): no proxy can be asked to rank better than the full protocol
ranks itself.
"""

from __future__ import annotations

import json
import statistics
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clharness.atomic import write_atomic

from evaluation.cache import (
    RunFn,
    cached_path,
    run_cached,
    run_joint_cached,
    sha256_text,
    share_work,
    store_module,
    validation_configs,
)
from evaluation.errors import UserError
from evaluation.fidelity import agreement, gap_share

DEFAULT_PANEL = Path("results") / "fidelity" / "panel.toml"
LogFn = Callable[[str], None]


PASS_RHO = 0.8  # issue 9: a shipped proxy ranks the panel with Spearman >= 0.8, the best design in its top 3
CEILING_DRAWS = 4000  # simulated second runs behind the noise ceiling


@dataclass(frozen=True)
class ProxyDef:
    """One candidate proxy of one benchmark (None: the published protocol's value)."""

    name: str
    experiment: str
    iters: int | None = None
    contexts: int | None = None
    train_subset: int | None = None
    seeds: tuple[int, ...] = ()
    lr: float | None = None
    # a combined proxy: the mean gap share of these proxies, which run on their own
    parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class PanelDef:
    """The panel: its modules, the full-fidelity streams and the candidate proxies."""

    path: Path
    modules_dir: Path
    val_fraction: float
    full_seeds: Mapping[str, int]
    proxies: tuple[ProxyDef, ...]
    replicates: Path | None = None  # a final-evaluation run cache: methods run on several stream seeds


def load_panel(path: Path = DEFAULT_PANEL) -> PanelDef:
    """Read and check a panel file; a bad key or value is a `UserError` naming it."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(f"panel file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - {"modules", "val_fraction", "full_seeds", "proxy", "replicates"})
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}")
    from clharness.protocol import PROTOCOLS

    full_seeds = data.get("full_seeds", {})
    if not full_seeds or any(b not in PROTOCOLS or not isinstance(s, int) for b, s in full_seeds.items()):
        raise UserError(f"{path}: full_seeds must map benchmarks ({', '.join(PROTOCOLS)}) to seeds")
    proxies: list[ProxyDef] = []
    for i, raw in enumerate(data.get("proxy", [])):
        bad = sorted(
            set(raw) - {"name", "experiment", "iters", "contexts", "train_subset", "seeds", "lr", "parts"}
        )
        if bad or raw.get("experiment") not in full_seeds or not isinstance(raw.get("name"), str):
            raise UserError(f"{path}: proxy[{i}] needs a name and a benchmark of full_seeds; unknown: {bad}")
        parts = raw.get("parts", [])
        known = {p.name for p in proxies if p.experiment == raw["experiment"] and not p.parts}
        if parts and (
            not isinstance(parts, list) or len(parts) < 2 or not set(parts) <= known or len(raw) > 3
        ):
            raise UserError(
                f"{path}: proxy[{i}].parts must name two or more proxies of {raw['experiment']} defined above it, "
                "and a combined proxy has no settings of its own"
            )
        seeds = tuple(raw.get("seeds", [full_seeds[raw["experiment"]]]))
        lr = raw.get("lr")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr <= 1):
            raise UserError(f"{path}: proxy[{i}].lr must be a number in (0, 1], got {lr!r}")
        proxies.append(
            ProxyDef(
                raw["name"],
                raw["experiment"],
                raw.get("iters"),
                raw.get("contexts"),
                raw.get("train_subset"),
                seeds,
                None if lr is None else float(lr),
                tuple(parts),
            )
        )
    names = [(p.experiment, p.name) for p in proxies]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: a proxy name appears twice for one benchmark")
    replicates = data.get("replicates")
    return PanelDef(
        path, path.parent / data.get("modules", "modules/panel"), float(data.get("val_fraction", 0.1)),
        dict(full_seeds), tuple(proxies), None if replicates is None else path.parent / replicates,
    )  # fmt: skip


def panel_modules(panel: PanelDef) -> dict[str, Path]:
    """The panel's designs: label (the file name before `-<sha12>`) -> module file."""
    modules = {p.name.rsplit("-", 1)[0]: p for p in sorted(panel.modules_dir.glob("*.py"))}
    if len(modules) < 3:
        raise UserError(f"the panel needs at least 3 modules in {panel.modules_dir}, found {len(modules)}")
    return modules


def _full_config(panel: PanelDef, experiment: str, device: str) -> Any:
    (cfg,) = validation_configs(
        experiment, [panel.full_seeds[experiment]], val_fraction=panel.val_fraction, device=device
    )
    return cfg


def _proxy_configs(panel: PanelDef, proxy: ProxyDef, device: str) -> list[Any]:
    return validation_configs(
        proxy.experiment,
        proxy.seeds,
        val_fraction=panel.val_fraction,
        device=device,
        iters=proxy.iters,
        contexts=proxy.contexts,
        train_subset=proxy.train_subset,
        lr=proxy.lr,
    )


def plan(
    panel: PanelDef, *, benchmarks: Sequence[str], full: bool, proxies: Sequence[str] | None, device: str
) -> list[tuple[str, Path | None, Any, str]]:
    """Every (label, module, config, phase) run of the panel: proxies first (cheap), then full runs, then each
    proxy's anchors (module None: joint training)."""
    modules = panel_modules(panel)
    jobs: list[tuple[str, Path | None, Any, str]] = []
    runnable = [p for p in panel.proxies if not p.parts]  # a combined proxy's runs are its parts'
    for proxy in runnable:
        if proxy.experiment in benchmarks and (proxies is None or proxy.name in proxies):
            for cfg in _proxy_configs(panel, proxy, device):
                jobs += [(label, path, cfg, f"proxy {proxy.name}") for label, path in modules.items()]
    if full:
        for experiment in benchmarks:
            cfg = _full_config(panel, experiment, device)
            jobs += [(label, path, cfg, "full") for label, path in modules.items()]
    # The anchors of each proxy (no regularization, joint training), for the objective's gap units
    none_path = anchor_module(panel)
    for proxy in runnable:
        if proxy.experiment in benchmarks and (proxies is None or proxy.name in proxies):
            for cfg in _proxy_configs(panel, proxy, device):
                jobs += [
                    ("none", none_path, cfg, f"anchor {proxy.name}"),
                    ("joint", None, cfg, f"anchor {proxy.name}"),
                ]
    return jobs


def anchor_module(panel: PanelDef) -> Path:
    """The `none` preset's module (no regularization), kept beside the panel's designs."""
    import space

    source = space.generate_source(space.PRESETS["none"], {"preset": "none"})
    return store_module(panel.modules_dir.parent / "anchors", "none", source)[0]


def run_panel(
    panel: PanelDef,
    *,
    benchmarks: Sequence[str],
    full: bool = True,
    proxies: Sequence[str] | None = None,
    device: str = "auto",
    run_fn: RunFn | None = None,
    joint_fn: RunFn | None = None,
    log: LogFn = print,
) -> int:
    """Run the panel's missing runs, shared with any other process running it (`share_work`); returns runs
    done here."""
    from clharness.errors import HarnessError

    jobs = [
        (label, path, cfg, phase, "joint" if path is None else sha256_text(path.read_text(encoding="utf-8")))
        for label, path, cfg, phase in plan(
            panel, benchmarks=benchmarks, full=full, proxies=proxies, device=device
        )
    ]
    runs_dir = panel.path.parent / "runs"
    done = 0
    with closing(share_work(jobs, lambda j: cached_path(j[0], j[4], j[2], runs_dir), log=log)) as work:
        for label, path, cfg, phase, sha in work:
            tag = f"[{done + 1}] {phase} {cfg.experiment} {label} seed {cfg.seed}"
            t0 = time.perf_counter()
            try:
                if path is None:
                    record, _ = run_joint_cached(cfg, cache_dir=runs_dir, run_fn=joint_fn)
                else:
                    record, _ = run_cached(label, path, sha, cfg, cache_dir=runs_dir, run_fn=run_fn)
            except HarnessError as exc:  # a diverged design has no rank; reported, and the others go on
                log(f"{tag}: failed: {exc}")
                continue
            done += 1
            log(f"{tag}: {record['result']['average_accuracy']:.4f} in {time.perf_counter() - t0:.0f} s")
    return done


def _records(panel: PanelDef, label: str, path: Path | None, cfgs: Sequence[Any]) -> list[dict] | None:
    """The cached records of these runs, or None if any is missing (path None: joint training)."""
    from evaluation.cache import code_version, load_record, result_path, run_key

    sha = "joint" if path is None else sha256_text(path.read_text(encoding="utf-8"))
    records = []
    for cfg in cfgs:
        key, _ = run_key(sha, cfg, code_version())
        record = load_record(result_path(panel.path.parent / "runs", label, cfg.experiment, key, cfg.seed))
        if record is None:
            return None
        records.append(record)
    return records


def _score(panel: PanelDef, label: str, path: Path | None, cfgs: Sequence[Any]) -> tuple[float, float] | None:
    """(mean average accuracy, summed wall seconds) of cached runs, or None if any is missing."""
    records = _records(panel, label, path, cfgs)
    if records is None:
        return None
    accs = [float(r["result"]["average_accuracy"]) for r in records]
    return statistics.fmean(accs), sum(float(r.get("wall_s", 0.0)) for r in records)


def summarize(panel: PanelDef, benchmarks: Sequence[str]) -> dict:
    """Full scores and, per candidate proxy, its scores, Spearman's rho, the best-in-top-3 check and its cost."""
    modules = panel_modules(panel)
    out: dict[str, Any] = {"panel": str(panel.path), "benchmarks": {}}
    for experiment in benchmarks:
        full, per_context = {}, {}
        for label, path in modules.items():
            records = _records(panel, label, path, [_full_config(panel, experiment, "cpu")])
            if records is not None:
                full[label] = float(records[0]["result"]["average_accuracy"])
                per_context[label] = records[0]["result"].get("per_context_accuracy", [])
        best = max(full, key=full.__getitem__) if full else None
        rows: list[dict[str, Any]] = []
        for proxy in (p for p in panel.proxies if p.experiment == experiment):
            if proxy.parts:
                rows.append(_combined_row(proxy, rows, full, best))
                continue
            scores, walls = {}, []
            for label, path in modules.items():
                scored = _score(panel, label, path, _proxy_configs(panel, proxy, "cpu"))
                if scored is not None:
                    scores[label], _ = scored
                    walls.append(scored[1])
            cfgs = _proxy_configs(panel, proxy, "cpu")
            none, joint = (
                _score(panel, "none", anchor_module(panel), cfgs),
                _score(panel, "joint", None, cfgs),
            )
            anchors = {"none": none[0], "joint": joint[0]} if none and joint else None
            gaps = None if anchors is None else {k: gap_share(s, anchors) for k, s in scores.items()}
            settings = {"iters": proxy.iters, "contexts": proxy.contexts, "train_subset": proxy.train_subset,
                        "seeds": list(proxy.seeds), "lr": proxy.lr}  # fmt: skip
            cost = statistics.median(walls) if walls else None
            row = _rank_row(proxy.name, settings, proxy_steps(proxy), scores, full, best, gaps, cost)
            rows.append({**row, "anchors": anchors})
        sd = None if panel.replicates is None else stream_sd(panel.replicates, experiment)
        ceiling = (
            None
            if sd is None or len(full) < 3
            else {**noise_ceiling(full, sd[0]), "sd": sd[0], "methods": sd[1]}
        )
        passing = [row for row in rows if row["passes"]]
        chosen = min(passing, key=lambda row: row["steps"])["proxy"] if passing else None
        out["benchmarks"][experiment] = {
            "full": full,
            "per_context": per_context,
            "best": best,
            "proxies": rows,
            "cheapest_passing": chosen,
            "ceiling": ceiling,
        }
    return out


def _rank_row(
    name: str,
    settings: Mapping[str, Any],
    steps: int,
    scores: Mapping[str, float],
    full: Mapping[str, float],
    best: str | None,
    gaps: Mapping[str, float] | None,
    cost: float | None,
) -> dict[str, Any]:
    """How one proxy's scores rank the panel: rho over all and over the strong half, the best in its top 3."""
    agree = agreement(scores, full, best)
    spread = None  # how far apart the strong designs are, in gap units
    if gaps is not None and len(agree.strong) >= 2:
        spread = statistics.stdev(gaps[k] for k in agree.strong)
    return {
        "proxy": name, "settings": dict(settings), "steps": steps,
        "n": len(agree.designs), "spearman_rho": agree.rho, "p_value": agree.p_value,
        "spearman_rho_strong": agree.rho_strong, "best_in_top3": agree.best_in_top3, "anchors": None,
        "spread_strong_gap": spread,
        "passes": bool(
            full and len(agree.designs) == len(full) and agree.rho >= PASS_RHO and agree.best_in_top3
        ),
        "median_cost_s": cost, "scores": dict(scores),
    }  # fmt: skip


def _combined_row(
    proxy: ProxyDef, rows: Sequence[Mapping[str, Any]], full: Mapping[str, float], best: str | None
) -> dict[str, Any]:
    """A combined proxy: each design's mean gap share over the parts (each on its own anchors), for the
    designs every part has scored; its cost is the parts' together."""
    parts = [next(r for r in rows if r["proxy"] == name) for name in proxy.parts]
    scores: dict[str, float] = {}
    if all(r["anchors"] for r in parts):
        common = set.intersection(*(set(r["scores"]) for r in parts))
        scores = {k: statistics.fmean(gap_share(r["scores"][k], r["anchors"]) for r in parts) for k in common}
    costs = [r["median_cost_s"] for r in parts]
    cost = None if None in costs else sum(costs)
    steps = sum(r["steps"] for r in parts)
    return _rank_row(proxy.name, {"parts": list(proxy.parts)}, steps, scores, full, best, scores, cost)


def stream_sd(runs_dir: Path, experiment: str) -> tuple[float, int] | None:
    """How much one design's full score moves from stream to stream: the median, over the methods that a
    final-evaluation cache holds on two or more seeds, of each method's standard deviation across its seeds
    (the median, since one unstable method would otherwise set it for all); with the number of methods."""
    scores: dict[str, list[float]] = {}
    for path in sorted((runs_dir / experiment).glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        run = f"{record['method']}/{record['key']}"  # one method at one configuration, any seed
        scores.setdefault(run, []).append(float(record["result"]["average_accuracy"]))
    sds = [statistics.stdev(v) for v in scores.values() if len(v) >= 2]
    return (statistics.median(sds), len(sds)) if sds else None


def noise_ceiling(full: Mapping[str, float], sd: float, *, draws: int = CEILING_DRAWS) -> dict[str, float]:
    """The rho and best-in-top-3 that a second full run on another stream would reach against this one.

    Each draw adds to every full score the difference of two runs' stream noise, normal with variance 2 sd^2,
    and ranks the result against the full scores. Returns the median rho, its 10th percentile, and the share of
    draws whose top 3 holds this run's best design.
    """
    import numpy as np

    labels = list(full)
    observed = np.array([full[k] for k in labels])
    rng = np.random.default_rng(0)  # a fixed draw: the report is the same every time it is rebuilt
    second = observed + rng.normal(0.0, sd * 2**0.5, size=(draws, len(labels)))
    ranks = second.argsort(axis=1).argsort(axis=1).astype(float)
    base = observed.argsort().argsort().astype(float)
    centred, base_c = ranks - ranks.mean(axis=1, keepdims=True), base - base.mean()
    rhos = (centred @ base_c) / np.sqrt((centred**2).sum(axis=1) * (base_c**2).sum())
    best = int(observed.argmax())
    in_top3 = (ranks[:, best] >= len(labels) - 3).mean()
    return {
        "rho_median": float(np.median(rhos)),
        "rho_p10": float(np.quantile(rhos, 0.1)),
        "best_in_top3": float(in_top3),
    }


def proxy_steps(proxy: ProxyDef) -> int:
    """Training steps of one design at this proxy (iterations x contexts x seeds): its cost, machine-free."""
    from clharness.protocol import PROTOCOLS

    protocol = PROTOCOLS[proxy.experiment]
    iters = protocol.iters if proxy.iters is None else proxy.iters
    contexts = protocol.contexts if proxy.contexts is None else proxy.contexts
    return iters * contexts * len(proxy.seeds)


def _fmt_anchors(anchors: Mapping[str, float] | None) -> str:
    return "—" if not anchors else f"{anchors['none']:.4f} / {anchors['joint']:.4f}"


def _fmt_rho(rho: float | None) -> str:
    return "—" if rho is None or rho != rho else f"{rho:.3f}"


def render(summary: Mapping[str, Any]) -> str:
    """Markdown: per benchmark, the proxies compared, then every design's full and proxy scores."""
    lines = ["# The fidelity panel", "", f"Panel file: `{summary['panel']}`.", ""]
    for experiment, res in summary["benchmarks"].items():
        full = res["full"]
        lines += [f"## {experiment}", "", f"{len(full)} designs at full fidelity; best: `{res['best']}`.", ""]
        lines += [
            "| proxy | settings | steps | designs | Spearman rho | rho, strong half | best in top 3 | passes | "
            "none / joint | spread, strong half (gap units) | cost per design |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in res["proxies"]:
            rho, rho_strong = (_fmt_rho(row["spearman_rho"]), _fmt_rho(row.get("spearman_rho_strong")))
            cost = "—" if row["median_cost_s"] is None else f"{row['median_cost_s']:.0f} s"
            top = {True: "yes", False: "no", None: "—"}[row["best_in_top3"]]
            lines.append(
                f"| `{row['proxy']}` | `{json.dumps(row['settings'])}` | {row['steps']} | {row['n']} | {rho} | "
                f"{rho_strong} | {top} | {'yes' if row['passes'] else 'no'} | {_fmt_anchors(row.get('anchors'))} | "
                f"{'—' if row.get('spread_strong_gap') is None else format(row['spread_strong_gap'], '.4f')} | {cost} |"
            )
        chosen = res.get("cheapest_passing")
        lines += [
            "",
            f"Cheapest proxy that passes (all {len(full)} designs, rho >= {PASS_RHO}, the best full design in its "
            f"top 3): {f'`{chosen}`' if chosen else 'none yet'}.",
        ]
        if any("parts" in row["settings"] for row in res["proxies"]):
            lines += [
                "",
                "A combined proxy (settings `parts`) scores a design by the mean of its parts' gap shares, each on "
                "its own `none` / joint anchors; its scores below are in those gap units, its cost is its parts'.",
            ]
        ceiling = res.get("ceiling")
        if ceiling:
            lines += [
                "",
                f"Noise ceiling: a second full run on another stream would rank these designs with rho "
                f"{ceiling['rho_median']:.2f} (median; 10th percentile {ceiling['rho_p10']:.2f}) and keep the best "
                f"in its top 3 in {ceiling['best_in_top3']:.0%} of draws, for a stream-to-stream SD of "
                f"{ceiling['sd']:.4f} (the median over {ceiling['methods']} methods of the final evaluation's "
                "replicate runs).",
            ]
        names = [row["proxy"] for row in res["proxies"]]
        lines += ["", "| design | full | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for label in sorted(full, key=lambda k: -full[k]):
            cells = [
                f"{row['scores'][label]:.4f}" if label in row["scores"] else "—" for row in res["proxies"]
            ]
            lines.append(f"| `{label}` | {full[label]:.4f} | " + " | ".join(cells) + " |")
        per_context = {k: v for k, v in res.get("per_context", {}).items() if v}
        if per_context:  # where each design loses accuracy at full fidelity
            n = max(len(v) for v in per_context.values())
            lines += [
                "",
                "Accuracy of each context after the last one, full fidelity:",
                "",
                "| design | " + " | ".join(f"ctx {i + 1}" for i in range(n)) + " |",
                "|---|" + "---|" * n,
            ]
            for label in sorted(per_context, key=lambda k: -full[k]):
                lines.append(f"| `{label}` | " + " | ".join(f"{a:.3f}" for a in per_context[label]) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_summary(panel: PanelDef, benchmarks: Sequence[str]) -> dict:
    """Summarize what the cache holds and write `panel.md` and `panel.json` beside the panel file."""
    summary = summarize(panel, benchmarks)
    write_atomic(
        panel.path.with_suffix(".json"), json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n"
    )
    write_atomic(panel.path.with_suffix(".md"), render(summary))
    return summary
