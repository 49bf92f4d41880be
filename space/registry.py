"""One explicit table per kind of component, each entry a documented function of `space.components`.

The design's fields name entries of these tables; the code generator copies an entry's function and everything
it `requires` (helpers and constants of `space.components`) into the module it writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from space import components as c


@dataclass(frozen=True)
class Component:
    """One registry entry: the function and the helpers it calls."""

    func: Callable[..., Any]
    requires: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The function's name, as it appears in generated code."""
        return self.func.__name__


# Importance estimators. The Fisher variants are one estimator of the design (`fisher`) whose `fisher_labels`
# field picks the entry.
ESTIMATORS: dict[str, Component] = {
    "fisher_exact": Component(c._fisher_exact, ("_per_example_sums",)),
    "fisher_sampled": Component(c._fisher_sampled, ("_per_example_sums", "_label_nll")),
    "fisher_empirical": Component(c._fisher_empirical, ("_per_example_sums", "_label_nll")),
    "si": Component(c._si),
    "mas": Component(c._mas, ("_per_example_sums",)),
    "uniform": Component(c._uniform),
}

# Per-tensor normalizations applied to every estimator before mixing (design field `norm`; "none" mixes
# estimators brought to a unit total instead).
NORMALIZATIONS: dict[str, Component] = {
    "mean": Component(c._norm_mean, ("_TINY",)),
    "rank": Component(c._norm_rank),
}

# Transforms of the mixture, applied in this order (design fields `power`, `clip_quantile`).
TRANSFORMS: dict[str, Component] = {
    "power": Component(c._power),
    "clip_quantile": Component(c._clip_quantile),
}

# Mixing and calibration: estimators mixed at a unit total, and the result put on the exact Fisher's total,
# this context's or the first context's (design field `reference`: fisher, fisher_first).
SCALES: dict[str, Component] = {
    "unit_total": Component(c._unit_total, ("_total", "_TINY")),
    "reference": Component(c._to_reference, ("_total", "_TINY")),
    "first_reference": Component(c._to_first_reference, ("_total", "_TINY")),
}

# Accumulation across contexts (design field `accumulate`), given that the loop adds what is returned.
ACCUMULATIONS: dict[str, Component] = {
    "sum": Component(c._accumulate_sum),
    "decay": Component(c._accumulate_decay),
    "max": Component(c._accumulate_max),
}

# The penalty: sum importance (theta - theta*)^2; the generated module weighs it by 0.5 (times gamma under
# decayed accumulation).
PENALTY = Component(c._quadratic_penalty, ("_QuadraticPenalty",))

# Helpers the components call, with what they call in turn.
HELPERS: dict[str, tuple[str, ...]] = {
    "_regularized": (),
    "_examples": (),
    "_per_example_sums": ("_EXAMPLE_CHUNK",),
    "_label_nll": (),
    "_total": (),
    "_QuadraticPenalty": ("_PENALTY_BLOCK_FLOATS",),
    "_unit_total": ("_total", "_TINY"),
    "_to_reference": ("_total", "_TINY"),
    "_to_first_reference": ("_total", "_TINY"),
    "_norm_mean": ("_TINY",),
    "_fisher_sampled": ("_EXAMPLE_CHUNK",),
    # The structured family (space/kfac.py).
    "_kronecker_factors": ("_EXAMPLE_CHUNK",),
    "_sampled_labels": ("_EXAMPLE_CHUNK",),
    "_kfac_total": (),
    "_merge_pair": ("_TINY",),
    "_kfac_carry": ("_merge_pair", "_TINY"),
    "_eigenbasis": (),
    "_lowrank_carry": ("_eigenbasis",),
    "_kfac_layers": ("_regularized",),
    "_kfac_exact_penalty": ("_KroneckerExact", "_kfac_layers", "_delta"),
    "_kfac_lowrank_penalty": ("_KroneckerLowRank", "_kfac_layers"),
    "_diagonal_penalty": ("_regularized",),
}

# Module constants the components use, with the reason the generated file states for each.
CONSTANTS: dict[str, str] = {
    "_TINY": "Keeps the normalization of an all-zero tensor at zero instead of 0/0.",
    "_EXAMPLE_CHUNK": "Examples per batched pass of the estimators: memory stays bounded however many are used.",
    "_PENALTY_BLOCK_FLOATS": "Floats per block of the penalty on a CPU (512 KiB in float32): theta - c stays in the L2 cache.",
}
