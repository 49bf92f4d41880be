"""`Design`: one point of the regularizer space, its validation, JSON form and sampling from an Optuna trial.

The space is flat: every field is an Optuna parameter of the same name, suggested in every trial (fields that a
design does not use, such as `decay_gamma` under plain-sum accumulation, are still suggested and simply have no
effect), so that multivariate TPE sees one fixed space.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class DesignError(ValueError):
    """A design (or a value meant for one) is invalid; the message names the field."""


@dataclass(frozen=True)
class Spec:
    """The domain of one field: a float or int range (optionally log-scaled) or a tuple of choices."""

    kind: str  # "float" | "int" | "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()
    doc: str = ""


@dataclass(frozen=True)
class Design:
    """One regularizer. Defaults are the scaffold EWC (preset `ewc`); see docs/space.md for each field."""

    fisher_weight: float = 1.0
    fisher_labels: str = "exact"
    mas_weight: float = 0.0
    si_weight: float = 0.0
    si_clamp: bool = False
    uniform_weight: float = 0.0
    data_examples: int = 200
    data_subset: str = "first"
    data_seed: int = 0
    norm: str = "none"
    rescale: str = "none"
    power: float = 1.0
    clip_quantile: float = 1.0
    floor: float = 0.0
    accumulate: str = "sum"
    decay_gamma: float = 1.0
    penalty: str = "quadratic"
    penalty_coef: float = 0.5
    reg_strength_scale: float = 1.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(f.name, getattr(self, f.name))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field, in declaration order."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Design:
        """Validate and build; unknown fields and bad values raise `DesignError` naming them."""
        if not isinstance(data, Mapping):
            raise DesignError(f"a design must be a mapping of fields, got {type(data).__name__}")
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
        """A copy with some fields changed (validated)."""
        return Design.from_dict({**self.to_dict(), **changes})


# Published best strengths of different estimators differ by up to four orders of magnitude, and importance
# magnitudes differ by more (uniform L2 or MAS vs a Fisher, up to 1e-7 on Split-MNIST); the range holds every
# preset's scale with room on both sides.
SCALE_RANGE = (1e-8, 1e4)

SPACE: dict[str, Spec] = {
    "fisher_weight": Spec("float", 0.0, 1.0, doc="weight of the Fisher estimator in the mixture"),
    "fisher_labels": Spec(
        "choice", choices=("exact", "sampled", "empirical"), doc="labels the Fisher is taken over"
    ),
    "mas_weight": Spec("float", 0.0, 1.0, doc="weight of MAS output-norm sensitivity"),
    "si_weight": Spec("float", 0.0, 1.0, doc="weight of the SI path integral"),
    "si_clamp": Spec("choice", choices=(False, True), doc="clamp SI's Omega at 0 (published SI: no)"),
    "uniform_weight": Spec("float", 0.0, 1.0, doc="weight of uniform importance (L2)"),
    "data_examples": Spec("int", 16, 1024, log=True, doc="examples the data-based estimators average over"),
    "data_subset": Spec("choice", choices=("first", "random"), doc="the first n examples or a seeded subset"),
    "data_seed": Spec("int", 0, 999, doc="seed of the random subset and of sampled labels"),
    "norm": Spec("choice", choices=("none", "mean", "max", "rms", "rank"), doc="per-tensor normalization"),
    "rescale": Spec("choice", choices=("none", "fisher"), doc="rescale the mixture to the Fisher's total"),
    "power": Spec("float", 0.25, 2.0, doc="exponent applied to the mixture"),
    "clip_quantile": Spec("float", 0.9, 1.0, doc="cap at this per-tensor quantile (1: no cap)"),
    "floor": Spec("float", 0.0, 0.5, doc="floor as a fraction of the per-tensor mean (0: none)"),
    "accumulate": Spec("choice", choices=("sum", "decay", "max"), doc="accumulation across contexts"),
    "decay_gamma": Spec("float", 0.5, 1.0, doc="decay factor of `decay` accumulation"),
    "penalty": Spec("choice", choices=("quadratic",), doc="penalty form"),
    "penalty_coef": Spec("choice", choices=(0.5, 1.0), doc="constant factor of the penalty"),
    "reg_strength_scale": Spec(
        "float", SCALE_RANGE[0], SCALE_RANGE[1], log=True, doc="multiplies the benchmark's reg_strength"
    ),
}


def _coerce(name: str, value: Any) -> Any:
    """JSON gives ints for whole floats; accept them for float fields (bool never counts as a number)."""
    spec = SPACE[name]
    if spec.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    numeric_choices = any(isinstance(c, float) for c in spec.choices)
    if spec.kind == "choice" and numeric_choices and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check(name: str, value: Any) -> None:
    """Raise `DesignError` naming `name` when `value` is outside its field's domain."""
    spec = SPACE[name]
    if spec.kind == "choice":
        if not any(type(value) is type(c) and value == c for c in spec.choices):
            raise DesignError(f"design field {name!r}: {value!r} is not one of {list(spec.choices)}")
        return
    if spec.kind == "int":
        ok_type = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok_type = isinstance(value, float) and math.isfinite(value)
    if not ok_type:
        raise DesignError(f"design field {name!r}: {value!r} is not a finite {spec.kind}")
    if not spec.low <= value <= spec.high:
        raise DesignError(f"design field {name!r}: {value!r} is outside [{spec.low!r}, {spec.high!r}]")


def suggest(trial: Any, fixed: Mapping[str, Any] | None = None) -> Design:
    """Sample a design from an Optuna trial: every field not in `fixed` is suggested, under its own name."""
    fixed = dict(fixed or {})
    unknown = sorted(set(fixed) - set(SPACE))
    if unknown:
        raise DesignError(f"unknown design field(s) in fixed: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, spec in SPACE.items():
        if name in fixed:
            values[name] = _coerce(name, fixed[name])
        elif spec.kind == "float":
            values[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log)
        elif spec.kind == "int":
            values[name] = trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log)
        else:
            values[name] = trial.suggest_categorical(name, list(spec.choices))
    return Design(**values)


def trial_params(design: Design, fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Optuna params of `design` (every field not in `fixed`), for `study.enqueue_trial`."""
    fixed = fixed or {}
    return {name: value for name, value in design.to_dict().items() if name not in fixed}
