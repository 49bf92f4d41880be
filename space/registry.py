"""One explicit table per kind of component, each entry a documented function of `space.components`.

The design's categorical fields name entries of these tables; the code generator copies an entry's function and
everything it `requires` (helpers and constants of `space.components`) into the module it writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from space import components as c


@dataclass(frozen=True)
class Component:
    """One registry entry: the function, its one-line summary, and the helpers it calls."""

    func: Callable[..., Any]
    requires: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The function's name, as it appears in generated code."""
        return self.func.__name__

    @property
    def summary(self) -> str:
        """The first line of the function's docstring."""
        return (self.func.__doc__ or "").strip().splitlines()[0]


def _norm_none(t: Any) -> Any:
    """No normalization: the estimator's own scale."""
    return t


# Importance estimators (mixed with the design's `*_weight` fields). The Fisher variants share one weight and
# the design's `fisher_labels` picks one of them.
ESTIMATORS: dict[str, Component] = {
    "fisher_exact": Component(c._fisher_exact, ("_per_example_sums",)),
    "fisher_sampled": Component(c._fisher_sampled, ("_per_example_sums", "_label_nll")),
    "fisher_empirical": Component(c._fisher_empirical, ("_per_example_sums", "_label_nll")),
    "si": Component(c._si),
    "mas": Component(c._mas, ("_per_example_sums", "_output_norm")),
    "uniform": Component(c._uniform),
}

# Estimators that read examples of the finished context (the others read only the model's attributes).
DATA_ESTIMATORS: frozenset[str] = frozenset({"fisher_exact", "fisher_sampled", "fisher_empirical", "mas"})

# Per-tensor normalizations applied to every estimator before mixing (design field `norm`).
NORMALIZATIONS: dict[str, Component] = {
    "none": Component(_norm_none),
    "mean": Component(c._norm_mean, ("_TINY",)),
    "max": Component(c._norm_max, ("_TINY",)),
    "rms": Component(c._norm_rms, ("_TINY",)),
    "rank": Component(c._norm_rank),
}

# Transforms of the mixture, applied in this order (design fields `power`, `clip_quantile`, `floor`).
TRANSFORMS: dict[str, Component] = {
    "power": Component(c._power),
    "clip_quantile": Component(c._clip_quantile),
    "floor": Component(c._floor),
}

# Rescaling of the transformed mixture to a reference magnitude (design field `rescale`): "fisher" rescales
# each tensor to the total of the design's Fisher estimator (unnormalized), as EWC's reg_strength expects.
RESCALES: dict[str, Component] = {
    "none": Component(_norm_none),
    "fisher": Component(c._rescale_to, ("_TINY",)),
}

# Accumulation across contexts (design field `accumulate`), given that the loop adds what is returned.
ACCUMULATIONS: dict[str, Component] = {
    "sum": Component(c._accumulate_sum),
    "decay": Component(c._accumulate_decay),
    "max": Component(c._accumulate_max),
}

# Penalty forms (design field `penalty`).
PENALTIES: dict[str, Component] = {
    "quadratic": Component(c._quadratic_penalty, ("_penalty_plan", "_QuadraticPenalty")),
}

# Helpers the components call, with what they call in turn.
HELPERS: dict[str, tuple[str, ...]] = {
    "_regularized": (),
    "_examples": (),
    "_per_example_sums": ("_GENERIC_CHUNK_FLOATS",),
    "_label_nll": (),
    "_output_norm": (),
    "_penalty_plan": ("_regularized", "_PENALTY_BLOCK_FLOATS"),
    "_QuadraticPenalty": (),
}

# Module constants the components use, with the reason the generated file states for each.
CONSTANTS: dict[str, str] = {
    "_TINY": "Keeps the normalization of an all-zero tensor at zero instead of 0/0.",
    "_GENERIC_CHUNK_FLOATS": (
        "Per-example gradients of parameters outside nn.Linear layers are held in chunks of at most this many\n"
        "# floats (256 MiB in float32), so that memory stays bounded whatever the network."
    ),
    "_PENALTY_BLOCK_FLOATS": (
        "On a CPU the penalty runs over blocks of at most this many floats (512 KiB in float32), so that\n"
        "# theta - theta* of a block stays in the L2 cache between its write and its two reads."
    ),
}
