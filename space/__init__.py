"""The regularizer design space: components, the `Design` dataclass, presets, sampling and the code generator.

Public interface (docs/INTERFACES.md, "Space"): `Design`, `DesignError`, `PRESETS`, `suggest`, `trial_params`,
`generate_source`, `write_module`; the component tables live in `space.registry`.
"""

from space.design import SPACE, Design, DesignError, suggest, trial_params
from space.generator import describe, generate_source, write_module
from space.presets import PRESETS

__all__ = [
    "PRESETS",
    "SPACE",
    "Design",
    "DesignError",
    "describe",
    "generate_source",
    "suggest",
    "trial_params",
    "write_module",
]
