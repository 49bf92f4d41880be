"""`Design`: one point of the regularizer space, its validation, JSON form and sampling from an Optuna trial.

The space is calibrated (docs/space.md, "The space"): a design names the estimators it uses (one, or a mixture
of two normalized ones), the transforms of their importance, and the reference its magnitude is put on before
the strength applies, so that `reg_strength_scale = 1` means "as strong as published EWC on this benchmark"
for every searched design. A field exists only where it has an effect: a mixture weight only for a mixture,
Fisher labels only where a Fisher is used, gamma only under decayed accumulation. Such conditional fields are
absent from the design's dict (and from the trial's params) when they do not apply.

Some values are valid but never sampled: the uncalibrated reference `none` (SI, MAS and L2 as published carry
their own magnitude and strength), the empty estimator set `none`, and strengths outside the searched decades.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class DesignError(ValueError):
    """A design (or a value meant for one) is invalid; the message names the field."""


@dataclass(frozen=True)
class Spec:
    """The domain of one field.

    `low`/`high` (float, int) and `choices` (choice) are what a design may hold; `search` (a few values, for
    choices and floats alike) or `search_low`/`search_high` (a range) is the part the sampler draws from.
    `applies` says whether the field exists for a design, given the design's other values.
    """

    kind: str  # "float" | "int" | "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()
    search: tuple[Any, ...] = ()
    search_low: float | None = None
    search_high: float | None = None
    applies: Callable[[Mapping[str, Any]], bool] = lambda _values: True


# Estimator sets: one estimator, or a mixture of two (the weight `mix` is the first one's share). `kfac` is the
# structured family (space/kfac.py): Kronecker-factored curvature per nn.Linear layer, never mixed; it is not
# searched until its go/no-go (docs/fidelity.md) says it goes forward.
ESTIMATOR_SETS = ("fisher", "mas", "si", "uniform", "fisher+mas", "fisher+si", "mas+si", "none", "kfac")
DATA_ESTIMATORS = frozenset({"fisher", "mas", "kfac"})
# Ranks of the eigenbasis K-FAC penalty (0: the exact Kronecker product), and the factors' relative damping. The
# searched ranks keep the penalty under half a Permuted-MNIST step on one CPU thread (bench/kfac_cost.py).
KFAC_RANKS = (0, 4, 8, 16, 32, 64, 128, 256)
SEARCHED_KFAC_RANKS = (4, 8, 16, 32)
KFAC_DAMPINGS = (0.0, 0.001, 0.01, 0.1, 1.0)
# Strength: every searched design is calibrated to the exact Fisher's total, so the searched decades sit around
# the published EWC strength (1); docs/space.md gives the measurements behind their width. Uncalibrated presets
# (SI, MAS, L2) need the wide range.
SCALE_RANGE = (1e-8, 1e4)
SEARCHED_SCALE = (0.3, 10.0)
# An uncalibrated preset's own scale only matched magnitudes roughly (docs/space.md): its tuned baseline searches
# two decades either side of it.
UNCALIBRATED_SCALE = (1e-2, 1e2)
# Bumped whenever the searched part changes: a study records it, and refuses to resume under another version.
SPACE_VERSION = 3


def uses(values: Mapping[str, Any]) -> tuple[str, ...]:
    """The estimators a design's `estimators` field names (empty for `none`)."""
    name = values.get("estimators", "fisher")
    return () if name == "none" else tuple(name.split("+"))


def _regularizes(v: Mapping[str, Any]) -> bool:
    return bool(uses(v))


def _structured(v: Mapping[str, Any]) -> bool:
    return "kfac" in uses(v)


def _diagonal(v: Mapping[str, Any]) -> bool:
    return _regularizes(v) and not _structured(v)


def _reads_data(v: Mapping[str, Any]) -> bool:
    return bool(DATA_ESTIMATORS & set(uses(v))) or (
        _regularizes(v) and v.get("reference", "fisher") != "none"
    )


SPACE: dict[str, Spec] = {
    # Not searched: `uniform` (L2, a baseline, not a candidate) and `none`.
    "estimators": Spec("choice", choices=ESTIMATOR_SETS, search=ESTIMATOR_SETS[:3] + ESTIMATOR_SETS[4:-2]),
    "fisher_labels": Spec(
        "choice",
        choices=("exact", "sampled", "empirical"),
        applies=lambda v: bool({"fisher", "kfac"} & set(uses(v))),
    ),
    "si_clamp": Spec("choice", choices=(False, True), applies=lambda v: "si" in uses(v)),
    "mix": Spec("float", 0.1, 0.9, applies=lambda v: len(uses(v)) == 2),
    # Before the data fields: whether a design reads data depends on it.
    "reference": Spec(
        "choice",
        choices=("fisher", "fisher_first", "none"),
        search=("fisher", "fisher_first"),
        applies=_regularizes,
    ),
    # 0 = every example of the finished context.
    "data_examples": Spec("choice", choices=(200, 1000, 5000, 0), applies=_reads_data),
    "data_subset": Spec(
        "choice",
        choices=("first", "random"),
        applies=lambda v: _reads_data(v) and v.get("data_examples") != 0,
    ),
    # `rank` (importance as its quantile) is not searched: it flattens the Fisher's spread towards L2.
    "norm": Spec("choice", choices=("none", "mean", "rank"), search=("none", "mean"), applies=_diagonal),
    "power": Spec("float", 0.25, 2.0, search_low=0.5, search_high=1.0, applies=_diagonal),
    # A clip is off (1.0) or caps the top 0.1% / 1% of each tensor: a continuous range would never turn it off.
    "clip_quantile": Spec("float", 0.9, 1.0, search=(1.0, 0.999, 0.99), applies=_diagonal),
    "accumulate": Spec("choice", choices=("sum", "decay", "max"), applies=_diagonal),
    "decay_gamma": Spec(
        "float",
        0.5,
        1.0,
        search_low=0.8,
        search_high=0.99,
        applies=lambda v: _diagonal(v) and v.get("accumulate") == "decay",
    ),
    # The structured family: per-context Kronecker pairs (their sum is exact) or one merged pair per layer; the
    # rank of the eigenbasis the penalty runs in (0: exact, costly on a CPU); the factors' damping.
    "kfac_accumulate": Spec("choice", choices=("per_context", "merged"), applies=_structured),
    "kfac_rank": Spec("choice", choices=KFAC_RANKS, search=SEARCHED_KFAC_RANKS, applies=_structured),
    "kfac_damping": Spec("choice", choices=KFAC_DAMPINGS, applies=_structured),
    "reg_strength_scale": Spec(
        "float",
        SCALE_RANGE[0],
        SCALE_RANGE[1],
        log=True,  # searched over SEARCHED_SCALE or UNCALIBRATED_SCALE (`_search_range`)
        applies=_regularizes,
    ),
}


@dataclass(frozen=True)
class Design:
    """One regularizer. Defaults are the scaffold EWC (preset `ewc`); see docs/space.md for each field.

    A field that does not apply to the design (for example `mix` of a single estimator) must keep its default;
    `to_dict` leaves it out.
    """

    estimators: str = "fisher"
    fisher_labels: str = "exact"
    si_clamp: bool = False
    mix: float = 0.5
    data_examples: int = 200
    data_subset: str = "first"
    norm: str = "none"
    power: float = 1.0
    clip_quantile: float = 1.0
    reference: str = "fisher"
    accumulate: str = "sum"
    decay_gamma: float = 0.9
    kfac_accumulate: str = "merged"
    kfac_rank: int = 0
    kfac_damping: float = 0.0
    reg_strength_scale: float = 1.0

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in values.items():
            _check(name, value)
            if not SPACE[name].applies(values) and value != _DEFAULTS[name]:
                raise DesignError(
                    f"design field {name!r} has no effect on this design ({_why_inactive(name, values)}); "
                    "leave it out"
                )
        if _structured(values) and len(uses(values)) != 1:
            raise DesignError("design field 'estimators': kfac is not mixed with other estimators")
        if _structured(values) and self.reference == "fisher_first":
            raise DesignError(
                "design field 'reference': a kfac design is put on this context's Fisher total ('fisher') or "
                "kept raw ('none'), not 'fisher_first'"
            )
        if len(uses(values)) == 2 and self.reference == "none":
            raise DesignError(
                "design field 'reference': a mixture of normalized estimators needs a reference scale "
                "('fisher' or 'fisher_first'), not 'none'"
            )

    @property
    def kfac(self) -> bool:
        """True for a design of the structured family (Kronecker-factored curvature)."""
        return self.estimators == "kfac"

    @property
    def estimator_list(self) -> tuple[str, ...]:
        """The estimators in use, in order (empty when the design does not regularize)."""
        return uses(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The fields that apply to this design, in declaration order."""
        values = dataclasses.asdict(self)
        return {k: v for k, v in values.items() if SPACE[k].applies(values)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Design:
        """Validate and build; unknown fields and bad values raise `DesignError` naming them.

        Designs of the first version of the space (with `fisher_weight`, `penalty_coef`, ...) are converted
        when the current space holds the same regularizer, and refused with the reason otherwise.
        """
        if not isinstance(data, Mapping):
            raise DesignError(f"a design must be a mapping of fields, got {type(data).__name__}")
        if "fisher_weight" in data or "penalty_coef" in data:
            return cls.from_dict(_from_v1(data))
        unknown = sorted(set(data) - set(SPACE))
        if unknown:
            raise DesignError(f"unknown design field(s): {', '.join(map(str, unknown))}")
        values = {name: _coerce(name, value) for name, value in data.items()}
        return cls(**values)

    def to_json(self) -> str:
        """Deterministic JSON (sorted keys, one line)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Design:
        """Parse and validate JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DesignError(f"design is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> Design:
        """A copy with some fields changed (validated); fields that stop applying return to their default."""
        values = {**dataclasses.asdict(self), **changes}
        return Design.from_dict(_prune(values, keep=set(changes)))


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Design)}


def _why_inactive(name: str, values: Mapping[str, Any]) -> str:
    if name == "data_subset" and values.get("data_examples") == 0:
        return "data_examples is 0: every example is used"
    if name == "decay_gamma" and _diagonal(values):
        return f"accumulate is {values.get('accumulate')!r}, not 'decay'"
    return f"estimators is {values.get('estimators')!r}"


def _prune(values: Mapping[str, Any], keep: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """Drop fields that do not apply (except those in `keep`, so that an explicit bad value is reported)."""
    return {k: v for k, v in values.items() if k in keep or k not in SPACE or SPACE[k].applies(values)}


_V1_FIELDS = frozenset(
    {
        *("fisher_weight", "fisher_labels", "mas_weight", "si_weight", "si_clamp", "uniform_weight"),
        *("data_examples", "data_subset", "data_seed", "norm", "rescale", "power", "clip_quantile", "floor"),
        *("accumulate", "decay_gamma", "penalty", "penalty_coef", "reg_strength_scale"),
    }
)


def _from_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """The current-space fields of a first-version design, or `DesignError` saying why there are none."""
    unknown = sorted(set(data) - _V1_FIELDS)
    if unknown:
        raise DesignError(f"unknown design field(s): {', '.join(map(str, unknown))}")
    weights = {
        "fisher": data.get("fisher_weight", 1.0),
        "mas": data.get("mas_weight", 0.0),
        "si": data.get("si_weight", 0.0),
        "uniform": data.get("uniform_weight", 0.0),
    }
    active = [k for k, w in weights.items() if isinstance(w, int | float) and w > 0]
    problems = []
    if len(active) > 1 or any(weights[k] != 1.0 for k in active):
        problems.append("it mixes raw (unnormalized) estimators")
    for key, neutral in (("norm", "none"), ("rescale", "none"), ("power", 1.0), ("floor", 0.0)):
        if data.get(key, neutral) != neutral:
            problems.append(f"{key} = {data[key]!r}")
    if data.get("data_subset", "first") == "random" and data.get("data_seed", 0) != 0:
        problems.append("its random subset has a seed other than 0")
    if data.get("penalty", "quadratic") != "quadratic":
        problems.append(f"penalty = {data['penalty']!r}")
    if problems:
        raise DesignError(
            "this design is from the first version of the space and has no equivalent in the current one ("
            + "; ".join(problems)
            + "); the module source stored with its trial still runs as it is"
        )
    coef = data.get("penalty_coef", 0.5)
    if coef not in (0.5, 1.0):
        raise DesignError(f"design field 'penalty_coef': {coef!r} is not one of [0.5, 1.0]")
    out: dict[str, Any] = {
        "estimators": active[0] if active else "none",
        # The current penalty is 0.5 * sum F (theta - theta*)^2: a coefficient of 1 doubles the strength
        # (exact in floating point).
        "reg_strength_scale": float(data.get("reg_strength_scale", 1.0)) * (coef / 0.5),
        # Published SI, MAS and L2 carry their own magnitude; the first space's Fisher designs were the raw
        # Fisher, which is what reference 'fisher' gives a single Fisher.
        "reference": "fisher" if active and active[0] == "fisher" else "none",
    }
    for key in ("fisher_labels", "si_clamp", "data_examples", "data_subset", "clip_quantile", "accumulate"):
        if key in data:
            out[key] = data[key]
    if data.get("accumulate") == "decay":
        out["decay_gamma"] = data.get("decay_gamma", 1.0)
    if out.get("data_examples") not in (None, *SPACE["data_examples"].choices):
        raise DesignError(
            f"this design is from the first version of the space: data_examples = {out['data_examples']!r} is "
            f"not one of {list(SPACE['data_examples'].choices)} in the current one"
        )
    return _prune(out)


def _coerce(name: str, value: Any) -> Any:
    """JSON gives ints for whole floats; accept them for float fields (bool never counts as a number)."""
    spec = SPACE[name]
    if spec.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check(name: str, value: Any) -> None:
    """Raise `DesignError` naming `name` when `value` is outside its field's domain."""
    spec = SPACE[name]
    if spec.kind == "choice":
        if not any(type(value) is type(c) and value == c for c in spec.choices):
            raise DesignError(f"design field {name!r}: {value!r} is not one of {list(spec.choices)}")
        return
    ok_type = isinstance(value, float) and math.isfinite(value)
    if not ok_type:
        raise DesignError(f"design field {name!r}: {value!r} is not a finite {spec.kind}")
    if not spec.low <= value <= spec.high:
        raise DesignError(f"design field {name!r}: {value!r} is outside [{spec.low!r}, {spec.high!r}]")


def _search_range(name: str, spec: Spec, scale_center: float) -> tuple[float, float]:
    """The range the sampler draws a float field from; the strength sits around 1 for calibrated designs and
    around an uncalibrated preset's own scale (`scale_center`, not 1) for its tuned baseline."""
    if name == "reg_strength_scale":
        low, high = SEARCHED_SCALE if scale_center == 1.0 else UNCALIBRATED_SCALE
        return low * scale_center, high * scale_center
    low = spec.low if spec.search_low is None else spec.search_low
    high = spec.high if spec.search_high is None else spec.search_high
    return low, high


def suggest(trial: Any, fixed: Mapping[str, Any] | None = None, *, scale_center: float = 1.0) -> Design:
    """Sample a design from an Optuna trial: every field that applies and is not in `fixed` is suggested.

    Fields are suggested in declaration order, so a conditional field is asked for only when the values
    drawn before it make it apply. `scale_center` moves the searched strength decades (a tuned baseline
    whose preset is uncalibrated searches around its own published scale).
    """
    fixed = dict(fixed or {})
    unknown = sorted(set(fixed) - set(SPACE))
    if unknown:
        raise DesignError(f"unknown design field(s) in fixed: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, spec in SPACE.items():
        if not spec.applies({**_DEFAULTS, **fixed, **values}):
            continue
        if name in fixed:
            values[name] = _coerce(name, fixed[name])
        elif spec.kind == "float" and not spec.search:
            low, high = _search_range(name, spec, scale_center)
            values[name] = trial.suggest_float(name, low, high, log=spec.log)
        else:
            values[name] = trial.suggest_categorical(name, list(spec.search or spec.choices))
    return Design.from_dict(values)


def outside_search(
    design: Design, fixed: Mapping[str, Any] | None = None, *, scale_center: float = 1.0
) -> str | None:
    """Why `suggest` (with these fixed fields) can never return `design`, or None when it can (warm starts)."""
    fixed = fixed or {}
    values = design.to_dict()
    for name, value in values.items():
        spec = SPACE[name]
        if name in fixed:
            if fixed[name] != value:
                return f"{name} = {value!r}, but the study fixes it to {fixed[name]!r}"
            continue
        if spec.search and value not in spec.search:
            return f"{name} = {value!r} is not searched (searched: {list(spec.search)})"
        if spec.kind == "float" and not spec.search:
            low, high = _search_range(name, spec, scale_center)
            if not low <= value <= high:
                return f"{name} = {value!r} is outside the searched [{low!r}, {high!r}]"
    missing = sorted(set(fixed) - set(values))
    if missing:
        return f"the study fixes {', '.join(missing)}, which do not apply to it"
    return None


def trial_params(design: Design, fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Optuna params of `design` (every field that applies and is not in `fixed`), for `enqueue_trial`."""
    fixed = fixed or {}
    return {name: value for name, value in design.to_dict().items() if name not in fixed}
