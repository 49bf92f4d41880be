"""Study definitions: one TOML file per study in `studies/`, validated into a frozen `StudyDef`.

A study file names the benchmarks and their proxy fidelity, the trial budget, the sampler and pruner, the
presets to warm-start with and, optionally, a restriction of the space. Every key is checked: an unknown key
or a bad value is a `UserError` naming the key and the file (a typo must never be silently ignored). The keys
are documented in docs/search.md.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clharness.protocol import PROTOCOLS

from evaluation.errors import UserError

# `space` imports torch: it is imported inside the functions that need it, so that every command can read a
# study file without it.

# Proxy stream seeds must stay clear of the evaluation seeds (42, 43, 44, ...): every proxy seed is >= this.
MIN_PROXY_SEED = 1000
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "percentile", "none", "successive_halving", "hyperband")
# Study names reach file names and the generated module's header: keep them plain identifiers.
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
# A study run on the 5,000-image offline MNIST subset is a study of its own, `<name>_offline`, defined by the
# file of `<name>`: its name says so, and its storage is never the full-MNIST study's.
OFFLINE_SUFFIX = "_offline"


def repo_root() -> Path:
    """The repository root, found from this package's location (never from the working directory)."""
    return Path(__file__).resolve().parent.parent


def studies_dir() -> Path:
    """The folder that holds study files and their default SQLite storages."""
    return repo_root() / "studies"


@dataclass(frozen=True)
class BenchmarkProxy:
    """The proxy fidelity of one benchmark; `None` means the published protocol's value."""

    experiment: str
    iters: int | None = None  # training iterations per context
    contexts: int | None = None  # number of contexts (the first ones of the stream)
    train_subset: int | None = None  # training images per context (seeded, stratified)
    val_fraction: float = 0.1  # held out of training and scored instead of the test split
    seeds: tuple[int, ...] = (MIN_PROXY_SEED,)  # stream seeds; the benchmark's score is their mean
    weight: float = 1.0  # share of the objective, set by what the benchmark's proxy can tell apart
    lr: float | None = None  # a learning-rate-matched proxy's rate (fewer iterations, larger steps)
    name: str = ""  # the score's name (default: the experiment); two proxies of one experiment need their own

    @property
    def label(self) -> str:
        """The key of this proxy's score in a trial's `scores`, its attributes and the objective's anchors."""
        return self.name or self.experiment

    @property
    def steps(self) -> int:
        """The reports a trial makes on this proxy: one per context and seed."""
        return (self.contexts or PROTOCOLS[self.experiment].contexts) * len(self.seeds)


@dataclass(frozen=True)
class SamplerDef:
    """Which Optuna sampler and how it is set up."""

    name: str = "tpe"
    seed: int | None = None  # trial n samples with a seed drawn from (seed, n): reproducible, never repeated
    n_startup_trials: int = 10  # random trials before TPE models the history (warm-start trials count)
    multivariate: bool = True
    constant_liar: bool = True  # parallel workers avoid proposing the same point


@dataclass(frozen=True)
class PrunerDef:
    """Which Optuna pruner and how it is set up (steps are contexts, counted across benchmarks)."""

    name: str = "median"
    n_startup_trials: int = 5  # trials that finish before any pruning
    # the first step at which a trial can be pruned (steps are contexts, counted across benchmarks)
    n_warmup_steps: int = 2
    interval_steps: int = 1  # steps between checks after the warm-up (a benchmark's contexts: at its ends)
    # percentile: the share of trials kept at a step (Optuna's meaning: 75 keeps the top 75 %, prunes the rest)
    percentile: float = 75.0
    min_resource: int = 2  # successive_halving / hyperband
    reduction_factor: int = 3  # successive_halving / hyperband


@dataclass(frozen=True)
class WorkerDef:
    """Crash detection: a trial whose worker stops beating for `grace_period` s is failed and retried."""

    heartbeat_interval: int = 20
    grace_period: int = 60
    max_retry: int = 2


@dataclass(frozen=True)
class StudyDef:
    """One study: benchmarks and their proxies, budget, sampler, pruner, warm start, space restriction."""

    name: str
    path: Path
    benchmarks: tuple[BenchmarkProxy, ...]
    n_trials: int
    sampler: SamplerDef = field(default_factory=SamplerDef)
    pruner: PrunerDef = field(default_factory=PrunerDef)
    warm_start: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)
    workers: WorkerDef = field(default_factory=WorkerDef)
    description: str = ""
    scale_center: float = 1.0  # the searched strength decades sit around it (a preset's own scale)

    @property
    def experiments(self) -> tuple[str, ...]:
        """The benchmarks' experiment names, in order, each once."""
        return tuple(dict.fromkeys(b.experiment for b in self.benchmarks))

    @property
    def labels(self) -> tuple[str, ...]:
        """The names of the study's scores, one per benchmark proxy, in report order."""
        return tuple(b.label for b in self.benchmarks)

    @property
    def n_steps(self) -> int:
        """Contexts reported per trial, over all benchmarks and seeds."""
        return sum(b.steps for b in self.benchmarks)

    @property
    def scoring(self) -> dict[str, Any]:
        """What a trial's value depends on: the benchmarks with their proxies and weights, the space's fixed
        fields and strength centre, and the version of the space it samples. Sampler, pruner, budget and workers
        may change during a study; these may not."""
        import space

        return {
            "space": space.SPACE_VERSION,
            # (a proxy named after its experiment records no name: studies made before names keep their scoring)
            "benchmarks": [
                {k: v for k, v in dataclasses.asdict(b).items() if k != "name" or b.name}
                | {"seeds": list(b.seeds)}
                for b in self.benchmarks
            ],
            "fixed": dict(sorted(self.fixed.items())),
            "scale_center": self.scale_center,
        }


def available_studies() -> list[str]:
    """Names of the study files shipped in `studies/`."""
    return sorted(p.stem for p in studies_dir().glob("*.toml"))


def offline_name(name: str) -> str:
    """`<name>_offline`: the study that runs `name`'s definition on the offline MNIST subset."""
    return name if name.endswith(OFFLINE_SUFFIX) else f"{name}{OFFLINE_SUFFIX}"


def as_offline(study_def: StudyDef) -> StudyDef:
    """`study_def` as the study of its own that runs on the offline MNIST subset (`offline_name`)."""
    return dataclasses.replace(study_def, name=offline_name(study_def.name))


def derived_offline(study_def: StudyDef) -> bool:
    """Whether `study_def` is `<name>_offline` read from the file of `<name>` (`as_offline`)."""
    return study_def.name != study_def.path.stem and study_def.name.endswith(OFFLINE_SUFFIX)


def study_path(name_or_path: str | Path) -> Path:
    """The file of a study given by name (`studies/<name>.toml`; `<name>_offline` without a file of its own:
    `<name>`'s) or by path."""
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or "\\" in text:
        path = Path(text)
        if not path.is_file():
            raise UserError(f"study file {path} does not exist")
        return path
    path = studies_dir() / f"{text}.toml"
    base = studies_dir() / f"{text.removesuffix(OFFLINE_SUFFIX)}.toml"
    if not path.is_file() and text.endswith(OFFLINE_SUFFIX) and base.is_file():
        return base
    if not path.is_file():
        names = ", ".join(available_studies()) or "none"
        raise UserError(f"unknown study {text!r}: no file {path} (studies: {names})")
    return path


def load_study_def(name_or_path: str | Path) -> StudyDef:
    """Read and validate a study file; an unknown key or a bad value raises `UserError` naming it."""
    path = study_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save the study file as UTF-8"
        ) from exc
    except OSError as exc:  # a folder, no permission
        raise UserError(f"cannot read study file {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from exc
    study_def = parse_study_def(data, path)
    name = str(name_or_path)
    if name != path.stem and name == offline_name(path.stem):  # `<name>_offline`, from `<name>`'s file
        study_def = as_offline(study_def)
    return study_def


def parse_study_def(data: Mapping[str, Any], path: Path) -> StudyDef:
    """Validate the parsed TOML of a study file (see `load_study_def`)."""
    name = path.stem
    if not _NAME_RE.match(name):
        raise UserError(f"{path}: study name {name!r} must be a letter then letters, digits or '_' (<= 64)")
    _check_keys(
        data,
        {
            "description",
            "n_trials",
            "warm_start",
            "preset",
            "free",
            "fixed",
            "sampler",
            "pruner",
            "workers",
            "benchmark",
        },
        "",
        path,
    )
    n_trials = _int(data, "n_trials", path, minimum=1, required=True)
    assert n_trials is not None
    description = data.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"{path}: 'description' must be a string")

    benchmarks_raw = data.get("benchmark")
    if not isinstance(benchmarks_raw, list) or not benchmarks_raw:
        raise UserError(f"{path}: needs at least one [[benchmark]] table")
    benchmarks = tuple(_benchmark(b, i, path) for i, b in enumerate(benchmarks_raw))
    seen = [b.label for b in benchmarks]
    if len(set(seen)) != len(seen):
        raise UserError(
            f"{path}: a benchmark appears twice in [[benchmark]] ({', '.join(seen)}); give each proxy of one "
            "experiment its own `name`"
        )

    sampler = SamplerDef(**_table(data, "sampler", SamplerDef, path))
    if sampler.name not in SAMPLERS:
        raise UserError(f"{path}: sampler.name {sampler.name!r} is not one of {', '.join(SAMPLERS)}")
    pruner = PrunerDef(**_table(data, "pruner", PrunerDef, path))
    if pruner.name not in PRUNERS:
        raise UserError(f"{path}: pruner.name {pruner.name!r} is not one of {', '.join(PRUNERS)}")
    workers = WorkerDef(**_table(data, "workers", WorkerDef, path))
    if workers.grace_period <= workers.heartbeat_interval:
        raise UserError(f"{path}: workers.grace_period must exceed workers.heartbeat_interval")

    warm_start = _str_list(data, "warm_start", path)
    fixed = _fixed(data, path)
    scale_center = _scale_center(data)
    _check_space(warm_start, fixed, scale_center, path)
    return StudyDef(
        name=name,
        path=path,
        benchmarks=benchmarks,
        n_trials=n_trials,
        sampler=sampler,
        pruner=pruner,
        warm_start=warm_start,
        fixed=fixed,
        workers=workers,
        description=description,
        scale_center=scale_center,
    )


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str, path: Path) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UserError(f"{path}: unknown key '{where}{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")


def _int(
    table: Mapping[str, Any], key: str, path: Path, *, minimum: int, where: str = "", required: bool = False
) -> int | None:
    if key not in table:
        if required:
            raise UserError(f"{path}: missing key {where}{key!r}")
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{path}: {where}{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _benchmark(raw: Any, index: int, path: Path) -> BenchmarkProxy:
    where = f"benchmark[{index}]."
    if not isinstance(raw, dict):
        raise UserError(f"{path}: benchmark[{index}] must be a table")
    _check_keys(
        raw,
        {"experiment", "iters", "contexts", "train_subset", "val_fraction", "seeds", "weight", "lr", "name"},
        where,
        path,
    )
    experiment = raw.get("experiment")
    if experiment not in PROTOCOLS:
        raise UserError(
            f"{path}: {where}experiment must be one of {', '.join(PROTOCOLS)}, got {experiment!r}"
        )
    protocol = PROTOCOLS[experiment]
    iters = _int(raw, "iters", path, minimum=1, where=where)
    contexts = _int(raw, "contexts", path, minimum=2, where=where)
    if contexts is not None and contexts > protocol.contexts:
        raise UserError(
            f"{path}: {where}contexts must be <= {protocol.contexts} for {experiment}, got {contexts}"
        )
    batch = protocol.batch_size
    train_subset = _int(raw, "train_subset", path, minimum=batch, where=where)
    val_fraction = raw.get("val_fraction", 0.1)
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, int | float)
        or not 0 < val_fraction <= 0.5
    ):
        raise UserError(f"{path}: {where}val_fraction must be a number in (0, 0.5], got {val_fraction!r}")
    seeds_raw = raw.get("seeds", [MIN_PROXY_SEED])
    if (
        not isinstance(seeds_raw, list)
        or not seeds_raw
        or any(isinstance(s, bool) or not isinstance(s, int) or s < MIN_PROXY_SEED for s in seeds_raw)
        or len(set(seeds_raw)) != len(seeds_raw)
    ):
        raise UserError(
            f"{path}: {where}seeds must be a non-empty list of distinct integers >= {MIN_PROXY_SEED} "
            f"(disjoint from the evaluation seeds), got {seeds_raw!r}"
        )
    weight = raw.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 100:
        raise UserError(f"{path}: {where}weight must be a positive number (<= 100), got {weight!r}")
    lr = raw.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr <= 1):
        raise UserError(f"{path}: {where}lr must be a number in (0, 1], got {lr!r}")
    name = raw.get("name", "")
    if not isinstance(name, str) or (name and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name)):
        raise UserError(
            f"{path}: {where}name must be letters, digits and _ (it names attributes), got {name!r}"
        )
    return BenchmarkProxy(
        str(experiment),
        iters,
        contexts,
        train_subset,
        float(val_fraction),
        tuple(seeds_raw),
        float(weight),
        None if lr is None else float(lr),
        "" if name == experiment else name,
    )


def _table(data: Mapping[str, Any], key: str, cls: type, path: Path) -> dict[str, Any]:
    raw = data.get(key, {})
    if not isinstance(raw, dict):
        raise UserError(f"{path}: {key!r} must be a table ([{key}])")
    defaults = cls()
    _check_keys(raw, set(defaults.__dataclass_fields__), f"{key}.", path)
    out: dict[str, Any] = {}
    for k, v in raw.items():
        default = getattr(defaults, k)
        if k == "seed":
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UserError(f"{path}: {key}.seed must be a non-negative integer, got {v!r}")
        elif isinstance(default, bool):
            if not isinstance(v, bool):
                raise UserError(f"{path}: {key}.{k} must be true or false, got {v!r}")
        elif isinstance(default, int):
            _int(raw, k, path, minimum=0 if k.startswith("n_") else 1, where=f"{key}.")
        elif isinstance(default, float):
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 100:
                raise UserError(f"{path}: {key}.{k} must be a number in (0, 100), got {v!r}")
            v = float(v)
        elif isinstance(default, str) and not isinstance(v, str):
            raise UserError(f"{path}: {key}.{k} must be a string, got {v!r}")
        out[k] = v
    return out


def _str_list(data: Mapping[str, Any], key: str, path: Path) -> tuple[str, ...]:
    raw = data.get(key, [])
    if not isinstance(raw, list) or any(not isinstance(x, str) for x in raw):
        raise UserError(f"{path}: {key!r} must be a list of strings, got {raw!r}")
    if len(set(raw)) != len(raw):
        raise UserError(f"{path}: {key!r} lists a name twice: {raw!r}")
    return tuple(raw)


def _design_fields() -> tuple[str, ...]:
    import space

    return tuple(f.name for f in dataclasses.fields(space.Design))


def _fixed(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """`preset` (all of its fields except `free`) merged with explicit `fixed` values."""
    fixed: dict[str, Any] = {}
    free = _str_list(data, "free", path)
    preset = data.get("preset")
    if preset is not None:
        import space

        if preset not in space.PRESETS:
            raise UserError(f"{path}: preset {preset!r} is not one of {', '.join(sorted(space.PRESETS))}")
        names = _design_fields()
        free_names = free or ("reg_strength_scale",)  # a tuned baseline: the preset plus its strength
        for name in free_names:
            if name not in names:
                raise UserError(f"{path}: free lists {name!r}, which is not a design field")
        fixed.update({k: v for k, v in space.PRESETS[preset].to_dict().items() if k not in free_names})
    elif free:
        raise UserError(f"{path}: 'free' needs 'preset' (the fields left free of that preset)")
    explicit = data.get("fixed", {})
    if not isinstance(explicit, dict):
        raise UserError(f"{path}: 'fixed' must be a table of design fields")
    if explicit:
        names = _design_fields()
        for k in explicit:
            if k not in names:
                raise UserError(f"{path}: unknown key 'fixed.{k}': not a design field")
        fixed.update(explicit)
    return fixed


def _scale_center(data: Mapping[str, Any]) -> float:
    """A tuned baseline searches its strength around its preset's scale (uncalibrated presets differ by
    decades); every other study around 1, the published EWC strength after calibration."""
    import space

    preset = data.get("preset")
    return space.PRESETS[preset].reg_strength_scale if preset in space.PRESETS else 1.0


def point_of(name: str, fixed: Mapping[str, Any], scale_center: float) -> Any:
    """The design a warm start or sweep point names (a preset or variant, NAME@X at X times its strength) under a
    study's fixed fields; a UserError when there is none or `suggest` could not return it."""
    import space

    try:
        design = space.named(name)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:  # the study's fixed fields apply to its warm starts too
        point = design.replace(**fixed)
    except ValueError as exc:
        raise UserError(f"{name!r} with the study's fixed fields: {exc}") from exc
    why = space.outside_search(point, fixed, scale_center=scale_center)
    if why is not None:
        raise UserError(f"{name!r} is not a point of the study's space: {why}")
    return point


def _check_space(
    warm_start: tuple[str, ...], fixed: Mapping[str, Any], scale_center: float, path: Path
) -> None:
    """Warm-start names are presets or variants (NAME@X: at X times its strength) that `suggest` can return under
    the study's fixed fields."""
    for name in warm_start:
        try:
            point_of(name, fixed, scale_center)
        except UserError as exc:
            raise UserError(f"{path}: warm_start {exc}") from None
    if fixed and not warm_start:
        import space  # deferred: it imports torch

        try:
            space.Design.from_dict(fixed)
        except ValueError as exc:
            raise UserError(f"{path}: fixed: {exc}") from exc
