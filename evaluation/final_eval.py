"""Final evaluation: every method on the full benchmarks over several seeds, cached per run so it resumes.

Each (method, benchmark, seed) is one record of the run cache (`evaluation.cache`) under `<out>/runs/`; the
modules that ran are kept under `<out>/modules/`, and the report (`evaluation.report`) is rebuilt from the cache.
Modules that come from studies (the candidate of `--study`, the tuned baselines) reach this module as sources:
the search's CLI reads them from the studies' storages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from clharness.protocol import PROTOCOLS

from evaluation import cache
from evaluation.cache import PRESET_METHODS, SEARCHED, TUNED_BASELINES, Job, Method, RunFn, make_config
from evaluation.errors import UserError
from evaluation.report import write_report

DEFAULT_SEEDS: tuple[int, ...] = (42, 43, 44)
# Split-MNIST's runs take a minute and its methods differ by less than a run's noise: five seeds there.
BENCHMARK_SEEDS: dict[str, tuple[int, ...]] = {"splitMNIST": (42, 43, 44, 45, 46)}
DEFAULT_OUT = Path("results")
DEFAULT_HOOKS = Path("custom_regularization.py")

LogFn = Callable[[str], None]


class ModuleSource(NamedTuple):
    """A hook module's source and where it came from (the report's label), e.g. a study's best trial."""

    source: str
    label: str


@dataclass
class Outcome:
    """What an evaluation did: runs done now, found in the cache, and what could not run (with why)."""

    ran: list[Job] = field(default_factory=list)
    cached: list[Job] = field(default_factory=list)
    skipped: list[tuple[Job, str]] = field(default_factory=list)
    data_errors: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when every planned run has a result."""
        return not self.skipped


# ---------------------------------------------------------------------------------------------------------
# Methods


def preset_source(name: str) -> str:
    """Generated hook source of one preset of the search space."""
    import space

    return space.generate_source(space.PRESETS[name], provenance={"preset": name})


def _module_method(name: str, source: str, module_dir: Path, label: str) -> Method:
    path, sha = cache.store_module(module_dir, name, source)
    return Method(name=name, kind="hooks", path=path, sha256=sha, label=label)


def resolve_methods(
    names: Sequence[str] | None,
    *,
    hooks: Path | None = None,
    candidate: ModuleSource | None = None,
    tuned: Mapping[str, ModuleSource] | None = None,
    searched: ModuleSource | None = None,
    module_dir: Path,
) -> list[Method]:
    """Turn method names into runnable methods; unknown names or an absent module raise `UserError`.

    The candidate is `candidate` when given (a study's best trial), else the file `hooks` (default
    custom_regularization.py). `tuned` maps a baseline to its tuned module; `searched` is the search's own best
    design (method `searched`: the campaign study's best trial, which differs from the candidate when a tuned
    baseline ships). By default (`names` None) every method that has a module is evaluated.
    """
    if hooks is not None and candidate is not None:
        raise UserError("give either --hooks or --study for the candidate, not both")
    tuned = tuned or {}
    if not names:
        names = [
            "candidate",
            *([SEARCHED] if searched is not None else []),
            *(f"tuned_{b}" for b in TUNED_BASELINES if b in tuned),
            *PRESET_METHODS,
            "joint",
        ]
    valid = ["candidate", SEARCHED, *PRESET_METHODS, "joint", *(f"tuned_{b}" for b in TUNED_BASELINES)]
    methods: list[Method] = []
    for name in dict.fromkeys(names):  # keep order, drop repeats
        if name not in valid:
            raise UserError(f"unknown method {name!r}; choose from {', '.join(valid)}")
        if name == "joint":
            methods.append(
                Method("joint", "joint", None, "joint", "joint training on all contexts (upper bound)")
            )
        elif name in PRESET_METHODS:
            methods.append(_module_method(name, preset_source(name), module_dir, f"preset `{name}`"))
        elif name == SEARCHED:
            if searched is None:
                raise UserError(f"method {SEARCHED}: the campaign study has no storage or no completed trial")
            methods.append(_module_method(name, searched.source, module_dir, searched.label))
        elif name.startswith("tuned_"):
            baseline = name[len("tuned_") :]
            found = tuned.get(baseline)
            if found is None:
                raise UserError(f"method {name}: study {baseline!r} has no storage or no completed trial")
            methods.append(_module_method(name, found.source, module_dir, found.label))
        elif candidate is not None:
            methods.append(_module_method(name, candidate.source, module_dir, candidate.label))
        else:
            path = hooks or DEFAULT_HOOKS
            if not path.is_file():
                hint = "" if hooks else " (run `make regenerate STUDY=...` or pass --hooks FILE)"
                raise UserError(f"candidate hook module {path} not found{hint}")
            methods.append(_module_method(name, path.read_text(encoding="utf-8"), module_dir, f"`{path}`"))
    return methods


# ---------------------------------------------------------------------------------------------------------
# Planning


def plan(
    methods: Sequence[Method],
    benchmarks: Sequence[str],
    seeds: Sequence[int],
    *,
    runs_dir: Path,
    device: str = "auto",
    overrides: Mapping[str, Any] | None = None,
) -> list[Job]:
    """Every run, seed-major within a benchmark so that partial results cover every method early; joint
    training first within a seed, as the longest run (2.5 times a method's on Permuted-MNIST), so that processes
    sharing the plan do not end with one of them alone on it."""
    version = cache.code_version()
    jobs = []
    longest_first = sorted(methods, key=lambda m: m.kind != "joint")  # stable: the others keep their order
    for experiment in benchmarks:
        for seed in seeds:
            for method in longest_first:
                cfg = make_config(experiment, seed, device=device, overrides=overrides)
                key, fields = cache.run_key(method.sha256, cfg, version)
                path = cache.result_path(runs_dir, method.name, experiment, key, seed)
                jobs.append(Job(method, experiment, seed, key, fields, path))
    return jobs


# ---------------------------------------------------------------------------------------------------------
# Running


def _format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_remaining(jobs: Iterable[Job], durations: Mapping[str, list[float]], processes: int = 1) -> str:
    """Remaining wall time from the measured durations of finished runs of the same benchmark, the runs shared
    among `processes` (this one and those holding claims on the plan's runs now)."""
    total, unknown = 0.0, set()
    for job in jobs:
        measured = durations.get(job.experiment)
        if measured:
            total += sum(measured) / len(measured)
        else:
            unknown.add(job.experiment)
    total /= processes
    shared = f" on {processes} processes" if processes > 1 else ""
    if not unknown:
        return f"ETA {_format_duration(total)}{shared}"
    text = f"ETA {_format_duration(total)}{shared} + " if total else "ETA "
    return text + f"unknown for {', '.join(sorted(unknown))} (no finished run yet)"


def execute(
    job: Job, *, device: str, overrides: Mapping[str, Any] | None, run_fn: RunFn, joint_fn: RunFn
) -> dict:
    """Run one job through the harness and write its record atomically; returns the record."""
    cfg = make_config(job.experiment, job.seed, device=device, overrides=overrides)
    start = time.perf_counter()
    if job.method.kind == "joint":
        result = joint_fn(cfg, progress=False)
    else:
        result = run_fn(str(job.method.path), cfg, progress=False, checkpoint=cache.checkpoint_path(job.path))
    return cache.store(job, cfg, result, time.perf_counter() - start)


def run_jobs(
    jobs: Sequence[Job],
    *,
    device: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    run_fn: RunFn | None = None,
    joint_fn: RunFn | None = None,
    log: LogFn = print,
) -> Outcome:
    """Run what is not cached yet, with progress and ETA; a benchmark whose data is missing is skipped whole.

    Processes that run the same evaluation side by side share its runs: each runs once (`cache.share_work`),
    and each process returns when all are done. A harness error of one run (a hook error, a divergence) is
    reported and the others go on; any other
    exception propagates, everything finished before it stays on disk. Without `run_fn` the real harness runs
    and MNIST is checked to be the full dataset before the first run of a benchmark.
    """
    from clharness.errors import DataError, HarnessError

    real_harness = run_fn is None
    if run_fn is None or joint_fn is None:
        default_run, default_joint = cache.default_runners()
        run_fn, joint_fn = run_fn or default_run, joint_fn or default_joint
    checked: set[str] = set()
    outcome = Outcome()
    todo: list[Job] = []
    cached_durations: dict[str, list[float]] = {}
    for job in jobs:
        record = cache.load_record(job.path) or cache.reuse_identical(job)
        if record is None:
            todo.append(job)
        else:
            outcome.cached.append(job)
            cached_durations.setdefault(job.experiment, []).append(float(record.get("wall_s", 0.0)))
    # Jobs with the same code on the same run (the candidate equal to a tuned baseline, a tuned baseline at its
    # published strength) run once; the others copy its record at the end.
    first: dict[tuple[str, int, str], Job] = {}
    for job in todo:
        first.setdefault(_experiment_of(job), job)
    twins = [job for job in todo if first[_experiment_of(job)] is not job]
    todo = [job for job in todo if first[_experiment_of(job)] is job]
    log(
        f"final-eval: {len(jobs)} runs planned, {len(outcome.cached)} cached, {len(todo)} to run"
        + (f", {len(twins)} the same as one of those" if twins else "")
    )
    durations: dict[str, list[float]] = {}
    # Another process running the same evaluation (or part of it) takes the runs it claims first.
    with closing(cache.share_work(todo, lambda j: j.path, log=log)) as work:
        for index, job in enumerate(work):
            left = [j for j in todo if j is not job and cache.load_record(j.path) is None]
            tag = f"[{index + 1}/{len(todo)}] {job.experiment} {job.method.name} seed {job.seed}"
            if job.experiment in outcome.data_errors:
                outcome.skipped.append((job, "dataset missing"))
                continue
            known = {e: durations.get(e) or cached_durations.get(e, []) for e in {j.experiment for j in todo}}
            processes = 1 + sum(cache.claim_holder(j.path) is not None for j in left)  # the others' runs now
            eta = estimate_remaining([job, *left], known, processes)
            log(f"{tag}: running ({len(left)} left after it, {eta})")
            try:
                if real_harness and job.experiment not in checked:
                    cache.check_data(job.experiment, (overrides or {}).get("data_dir"))
                    checked.add(job.experiment)
                record = execute(job, device=device, overrides=overrides, run_fn=run_fn, joint_fn=joint_fn)
            except DataError as exc:
                outcome.data_errors[job.experiment] = str(exc)
                outcome.skipped.append((job, "dataset missing"))
                n_left = sum(1 for j in left if j.experiment == job.experiment)
                log(f"{job.experiment}: dataset missing, skipping its {n_left + 1} runs: {exc}")
                continue
            except HarnessError as exc:
                outcome.skipped.append((job, str(exc)))
                log(f"{tag}: failed: {exc}")
                continue
            outcome.ran.append(job)
            durations.setdefault(job.experiment, []).append(record["wall_s"])
            acc = record["result"].get("average_accuracy", math.nan)
            log(f"{tag}: done in {_format_duration(record['wall_s'])}, average accuracy {acc:.4f}")
    done_here = {id(j) for j in outcome.ran} | {id(j) for j, _ in outcome.skipped}
    outcome.cached += [j for j in todo if id(j) not in done_here]  # run by another process
    why = {id(j): reason for j, reason in outcome.skipped}
    for job in twins:
        if cache.reuse_identical(job) is not None:
            outcome.cached.append(job)
        else:
            twin = first[_experiment_of(job)]
            outcome.skipped.append(
                (job, why.get(id(twin), f"the same run as {twin.method.name}, not finished"))
            )
    return outcome


def _experiment_of(job: Job) -> tuple[str, int, str]:
    """What a job measures: its benchmark, seed and code (`cache.code_sha256`, blind to the docstring)."""
    if job.method.path is None:
        return job.experiment, job.seed, job.method.kind
    return job.experiment, job.seed, cache.code_sha256(job.method.path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------------
# The whole evaluation


def default_seeds(benchmark: str) -> tuple[int, ...]:
    """The evaluation seeds a benchmark runs over unless told otherwise."""
    return BENCHMARK_SEEDS.get(benchmark, DEFAULT_SEEDS)


def collect_results(
    methods: Sequence[Method],
    benchmarks: Sequence[str],
    *,
    out_dir: Path,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, dict[int, dict]]]:
    """Every cached record of the current configuration of each method: `[experiment][method][seed]`."""
    runs_dir = out_dir / "runs"
    version = cache.code_version()
    results: dict[str, dict[str, dict[int, dict]]] = {}
    for experiment in benchmarks:
        cfg = make_config(experiment, DEFAULT_SEEDS[0], device="auto", overrides=overrides)
        for method in methods:
            key, _ = cache.run_key(method.sha256, cfg, version)
            records = cache.cached_records(runs_dir, method.name, experiment, key)
            for seed, record in records.items():
                path = cache.result_path(runs_dir, method.name, experiment, key, seed)
                record["_relpath"] = path.relative_to(out_dir).as_posix()
            results.setdefault(experiment, {})[method.name] = records
    return results


def final_eval(
    *,
    methods: Sequence[str] | None = None,
    hooks: Path | None = None,
    candidate: ModuleSource | None = None,
    tuned: Mapping[str, ModuleSource] | None = None,
    searched: ModuleSource | None = None,
    benchmarks: Sequence[str] = tuple(PROTOCOLS),
    seeds: Sequence[int] | None = None,
    device: str = "auto",
    out_dir: Path = DEFAULT_OUT,
    overrides: Mapping[str, Any] | None = None,
    run_fn: RunFn | None = None,
    joint_fn: RunFn | None = None,
    log: LogFn = print,
    command: str = "python -m search final-eval",
    report_only: bool = False,
) -> tuple[Outcome, Path]:
    """Run (or resume) the evaluation and write the report; returns what happened and the report's path.

    `candidate`, `tuned` and `searched` are modules taken from studies (see `resolve_methods`). `overrides` are extra
    RunConfig fields (tests use tiny runs); they are part of the cache key. `seeds` None: each benchmark's
    default (`default_seeds`).
    """
    unknown = [b for b in benchmarks if b not in PROTOCOLS]
    if unknown:
        raise UserError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(PROTOCOLS)}")
    if seeds is not None and not seeds:
        raise UserError("give at least one seed")
    resolved = resolve_methods(
        methods,
        hooks=hooks,
        candidate=candidate,
        tuned=tuned,
        searched=searched,
        module_dir=out_dir / "modules",
    )
    outcome = Outcome()
    if not report_only:
        jobs = [
            job
            for b in benchmarks
            for job in plan(
                resolved,
                [b],
                seeds or default_seeds(b),
                runs_dir=out_dir / "runs",
                device=device,
                overrides=overrides,
            )
        ]
        outcome = run_jobs(
            jobs, device=device, overrides=overrides, run_fn=run_fn, joint_fn=joint_fn, log=log
        )
    report_benchmarks = [*benchmarks, *(b for b in PROTOCOLS if b not in benchmarks)]
    results = collect_results(resolved, report_benchmarks, out_dir=out_dir, overrides=overrides)
    missing = {b: f"dataset missing: {msg}" for b, msg in outcome.data_errors.items()}
    for b in report_benchmarks:
        missing.setdefault(b, f"not run yet: `python -m search final-eval --benchmarks {b}`")
    notes = []
    if overrides:
        notes.append(f"Protocol overrides (not the published protocol): `{dict(overrides)}`.")
    readme = write_report(
        out_dir,
        results,
        methods=[(m.name, m.label) for m in resolved],
        benchmarks=report_benchmarks,
        missing=missing,
        command=command,
        extra_notes=notes,
    )
    log(f"report: {readme}")
    if outcome.skipped:
        log(f"final-eval: {len(outcome.skipped)} runs could not run (see above); everything else is written")
    return outcome, readme
