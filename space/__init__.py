"""The regularizer design space: components, the `Design` dataclass, presets, sampling and the code generator.

Public interface (docs/INTERFACES.md, "Space"): `Design`, `DesignError`, `PRESETS`, `VARIANTS`, `suggest`, `outside_search`, `trial_params`,
`generate_source`, `write_module`; the component tables live in `space.registry`.
"""

from space.design import SPACE, SPACE_VERSION, Design, DesignError, outside_search, suggest, trial_params
from space.generator import describe, generate_source, write_module
from space.presets import PRESETS, VARIANTS, named

__all__ = [
    "PRESETS",
    "SPACE",
    "SPACE_VERSION",
    "VARIANTS",
    "Design",
    "DesignError",
    "describe",
    "generate_source",
    "named",
    "outside_search",
    "suggest",
    "trial_params",
    "write_module",
]
