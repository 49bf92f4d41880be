"""The code generator: a `Design` -> the source of a standalone hook module (HARNESS.md section 1).

The module it writes imports only torch and the standard library, holds only the components the design uses
(copied verbatim from `space.components`), names every number the design sets as a constant with its reason,
and opens with where it came from, how to regenerate it and the design as data. Nothing from outside enters the
source except validated identifiers and `repr()` of numbers; identical input gives identical bytes.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import tempfile
import textwrap
from collections.abc import Mapping
from pathlib import Path

from space import components
from space.design import Design, DesignError
from space.registry import (
    ACCUMULATIONS,
    CONSTANTS,
    DATA_ESTIMATORS,
    ESTIMATORS,
    HELPERS,
    NORMALIZATIONS,
    PENALTIES,
    RESCALES,
    TRANSFORMS,
)

LINE = 110  # the project's line length (pyproject.toml), which the output must pass ruff with

# Provenance keys are identifiers; string values are names (study names, presets): letters, digits, _ . -
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,59}")

_LABELS = {"exact": "exact Fisher", "sampled": "sampled-label Fisher", "empirical": "empirical Fisher"}


def _provenance(provenance: Mapping[str, str | int | float] | None) -> dict[str, str]:
    """Validate provenance and render each value safely: names as themselves, numbers by repr()."""
    out: dict[str, str] = {}
    for key in sorted(provenance or {}):
        value = (provenance or {})[key]
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise DesignError(f"provenance key {key!r} is not an identifier (letters, digits, _; up to 40)")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise DesignError(
                f"provenance {key!r}: only names and numbers are allowed, got {type(value).__name__}"
            )
        if isinstance(value, str):
            if not _NAME.fullmatch(value):
                raise DesignError(
                    f"provenance {key!r}: {value!r} is not a plain name (letters, digits, _ . -; up to 60)"
                )
            out[key] = value
        else:
            out[key] = repr(value)
    return out


def _regenerate_command(prov: Mapping[str, str]) -> str:
    """The command that writes this file again."""
    if "study" in prov:
        trial = f" --trial {prov['trial']}" if "trial" in prov else ""
        return f"python -m search export --study {prov['study']}{trial} --out custom_regularization.py"
    if "preset" in prov:
        return f"python -m search export --preset {prov['preset']} --out custom_regularization.py"
    return (
        "python -m search export --design design.json --out custom_regularization.py  # DESIGN below, as JSON"
    )


def _active(design: Design) -> dict[str, tuple[str, float]]:
    """Estimators with a nonzero weight: variable name -> (registry key, weight)."""
    candidates = {
        "fisher": (f"fisher_{design.fisher_labels}", design.fisher_weight),
        "mas": ("mas", design.mas_weight),
        "si": ("si", design.si_weight),
        "uniform": ("uniform", design.uniform_weight),
    }
    return {var: entry for var, entry in candidates.items() if entry[1] > 0.0}


def describe(design: Design) -> str:
    """One sentence saying what the design computes."""
    active = _active(design)
    if not active:
        return "no regularization (the penalty is 0)."
    names = {"fisher": _LABELS[design.fisher_labels], "mas": "MAS", "si": "SI", "uniform": "uniform (L2)"}
    terms = [
        names[v] if len(active) == 1 and w == 1.0 else f"{w!r} x {names[v]}" for v, (_, w) in active.items()
    ]
    text = " + ".join(terms)
    if design.norm != "none" and len(active) > 1:
        text = f"{text} (each {design.norm}-normalized per tensor)"
    steps = []
    if design.power != 1.0:
        steps.append(f"raised to {design.power!r}")
    if design.clip_quantile < 1.0:
        steps.append(f"capped at quantile {design.clip_quantile!r}")
    if design.floor > 0.0:
        steps.append(f"floored at {design.floor!r} x mean")
    if design.rescale == "fisher":
        steps.append("rescaled to the Fisher's total")
    if steps:
        text = f"{text}, {', '.join(steps)}"
    accumulate = {"sum": "summed", "decay": f"decayed by {design.decay_gamma!r}", "max": "max"}[
        design.accumulate
    ]
    return (
        f"importance = {text}; across contexts {accumulate}; penalty {design.penalty_coef!r} x quadratic, "
        f"reg_strength_scale {design.reg_strength_scale!r}."
    )


def _comment(text: str, indent: str = "") -> str:
    """A comment block wrapped at the line length."""
    width = LINE - len(indent) - 2
    return "\n".join(f"{indent}# {line}" for line in textwrap.wrap(text, width))


def _assign(target: str, expr_terms: list[str], indent: str, op: str = " + ") -> str:
    """`target = a + b + ...`, laid out the way ruff format does."""
    flat = f"{indent}{target} = {op.join(expr_terms)}"
    if len(flat) <= LINE:
        return flat
    inner = indent + "    "
    if len(inner) + len(op.join(expr_terms)) <= LINE:
        return f"{indent}{target} = (\n{inner}{op.join(expr_terms)}\n{indent})"
    lines = [f"{inner}{expr_terms[0]}"] + [f"{inner}{op.strip()} {t}" for t in expr_terms[1:]]
    return f"{indent}{target} = (\n" + "\n".join(lines) + f"\n{indent})"


def _closure(names: list[str]) -> list[str]:
    """Add every helper and constant the given names need, transitively."""
    todo, seen = list(names), []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.append(name)
        todo.extend(HELPERS.get(name, ()))
    return seen


def _source_order(name: str) -> int:
    return inspect.getsourcelines(getattr(components, name))[1]


def generate_source(design: Design, provenance: Mapping[str, str | int | float] | None = None) -> str:
    """The hook module's source for `design`. Deterministic; provenance values must be names or numbers."""
    if not isinstance(design, Design):
        raise DesignError(f"generate_source needs a space.Design, got {type(design).__name__}")
    prov = _provenance(provenance)
    active = _active(design)
    needed: list[str] = ["_regularized"]
    constants: list[tuple[str, str, str]] = []  # (name, value, reason)
    body = _estimate_body(design, active, needed, constants) if active else None
    penalty = _penalty_body(design, needed, constants) if active else None

    names = _closure(needed)
    helper_constants = [n for n in CONSTANTS if n in names]
    functions = sorted((n for n in names if n not in CONSTANTS), key=_source_order)

    out: list[str] = [_header(design, prov)]
    imports = ["from __future__ import annotations", ""]
    stdlib = sorted({"Iterator"} | ({"Callable"} if "_per_example_sums" in functions else set()))
    imports += [f"from collections.abc import {', '.join(stdlib)}", "", "import torch"]
    out.append("\n".join(imports))
    out.append(_design_block(design))
    block = []
    for name, value, reason in constants:
        block.append(f"{_comment(reason)}\n{name} = {value}")
    for name in helper_constants:
        block.append(f"# {CONSTANTS[name]}\n{name} = {getattr(components, name)!r}")
    out.append("\n\n".join(block) if block else "")
    for name in functions:
        out.append(inspect.getsource(getattr(components, name)).rstrip())
    if body is None:
        out.append(_NONE_ESTIMATE)
        out.append(_NONE_PENALTY)
    else:
        out.append(body)
        out.append(penalty or "")
    # One blank line after the docstring and after the imports, two around definitions (ruff's layout).
    head = "\n\n".join(out[:3])
    return "\n\n\n".join(part for part in [head, *out[3:]] if part) + "\n"


def _header(design: Design, prov: Mapping[str, str]) -> str:
    if "study" in prov:
        source = f"study {prov['study']}" + (f", trial {prov['trial']}" if "trial" in prov else "")
    elif "preset" in prov:
        source = f"the preset {prov['preset']}"
    else:
        source = "a design file"
    lines = [
        f'"""Continual-learning regularizer generated from {source} by space/generator.py.',
        "",
        *textwrap.wrap(describe(design), LINE),
        "",
        "Edit the design rather than this file. Regenerate it with:",
        "",
        f"    {_regenerate_command(prov)}",
        "",
        "Hook contract: HARNESS.md sections 1-2. Imports only torch and the standard library.",
    ]
    if prov:
        lines += ["", *textwrap.wrap("Provenance: " + ", ".join(f"{k}={v}" for k, v in prov.items()), LINE)]
    return "\n".join(lines) + '\n"""'


def _literal(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # validated choices: plain words, double-quoted as ruff formats them
    if isinstance(value, float) and not math.isfinite(value):
        raise DesignError(f"non-finite number {value!r} in a design")
    return repr(value)


def _design_block(design: Design) -> str:
    items = "\n".join(f"    {json.dumps(k)}: {_literal(v)}," for k, v in design.to_dict().items())
    return (
        "# The design this file was generated from (space.Design; `python -m search export --design` takes it as\n"
        "# JSON). The constants below are what the code uses.\n"
        f"DESIGN = {{\n{items}\n}}\n\n"
        "# Multiplies the benchmark's reg_strength (HARNESS.md section 1).\n"
        f'CONFIG_OVERRIDES = {{"reg_strength_scale": {design.reg_strength_scale!r}}}'
    )


_SIGNATURE_ESTIMATE = """def estimate_importance(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    prev_params: dict[str, torch.Tensor],
    device: torch.device,
) -> dict[str, torch.Tensor]:"""

_SIGNATURE_PENALTY = """def compute_regularization_loss(
    model: torch.nn.Module,
    importance_dict: dict[str, torch.Tensor],
    prev_params_dict: dict[str, torch.Tensor],
) -> torch.Tensor:"""

_NONE_ESTIMATE = f'''{_SIGNATURE_ESTIMATE}
    """No regularization: zero importance for every regularized parameter."""
    return {{k: torch.zeros_like(p) for k, p in _regularized(model)}}'''

_NONE_PENALTY = f'''{_SIGNATURE_PENALTY}
    """No regularization: R = 0."""
    return torch.zeros((), device=next(model.parameters()).device)'''


def _estimate_body(
    design: Design,
    active: dict[str, tuple[str, float]],
    needed: list[str],
    constants: list[tuple[str, str, str]],
) -> str:
    """The source of `estimate_importance` for a design with at least one active estimator."""
    fisher_key = f"fisher_{design.fisher_labels}"
    # The rescaling reference is the design's Fisher, computed even when it is not mixed in.
    computed = dict(active)
    if design.rescale == "fisher" and "fisher" not in computed:
        computed["fisher"] = (fisher_key, 0.0)
    data_vars = [v for v, (key, _) in computed.items() if key in DATA_ESTIMATORS]
    random_subset = design.data_subset == "random"
    sampled = "fisher" in data_vars and design.fisher_labels == "sampled"
    single = len(active) == 1 and next(iter(active.values()))[1] == 1.0
    plain = (
        single
        and design.power == 1.0
        and design.clip_quantile >= 1.0
        and design.floor == 0.0
        and design.rescale == "none"
    )
    if data_vars:
        how = "a seeded random subset" if random_subset else "the first ones, in order"
        constants.append(
            (
                "N_EXAMPLES",
                repr(design.data_examples),
                f"Examples of the finished context the importance is averaged over ({how}).",
            )
        )
        if random_subset or sampled:
            uses = (
                "of the random subset" if random_subset else "",
                "of the sampled labels" if sampled else "",
            )
            what = " and ".join(u for u in uses if u)
            constants.append(("DATA_SEED", repr(design.data_seed), f"Seed {what}."))
        needed.append("_examples")
    for var, (key, _) in computed.items():
        needed.append(ESTIMATORS[key].name)
        needed.extend(ESTIMATORS[key].requires)
        if var == "si":
            constants.append(
                (
                    "CLAMP_SI",
                    repr(design.si_clamp),
                    "Clamp SI's Omega at 0 (W < 0 where steps went uphill); published SI does not.",
                )
            )
    if not single:
        for var, (_, weight) in active.items():
            constants.append(
                (f"{var.upper()}_WEIGHT", repr(weight), f"Weight of the {var} estimator in the mixture.")
            )

    lines = [
        _SIGNATURE_ESTIMATE,
        f'    """{_docline(describe(design))}"""',
        "    params = dict(_regularized(model))",
    ]
    if data_vars:
        lines += [
            "    was_training = model.training",
            "    model.eval()  # per-example gradients: examples independent (no dropout, BatchNorm statistics)",
            "    try:",
            f"        xs, ys = _examples(dataset, N_EXAMPLES, {'DATA_SEED' if random_subset else 'None'}, device)",
        ]
        for var in data_vars:
            func = ESTIMATORS[computed[var][0]].name
            extra = ", torch.Generator().manual_seed(DATA_SEED)" if var == "fisher" and sampled else ""
            lines.append(f"        {var} = {func}(model, params, xs, ys{extra})")
        lines += ["    finally:", "        model.train(was_training)"]
    for var in computed:
        if var == "si":
            lines.append("    si = _si(model, params, prev_params, clamp=CLAMP_SI)")
        elif var == "uniform":
            lines.append("    uniform = _uniform(params)")

    if plain:
        result = next(iter(active))
    else:
        result = "new"
        norm = NORMALIZATIONS[design.norm]
        if design.norm != "none":
            needed.append(norm.name)
            needed.extend(norm.requires)

        def term(var: str) -> str:
            value = f"{var}[k]" if design.norm == "none" else f"{norm.name}({var}[k])"
            return value if single else f"{var.upper()}_WEIGHT * {value}"

        lines += ["    new = {}", "    for k in params:"]
        steps = [_assign("mixed", [term(v) for v in active], "        ")]
        if design.power != 1.0:
            constants.append(
                (
                    "POWER",
                    repr(design.power),
                    "Exponent of the mixture (SI and MAS scale like the Fisher's root).",
                )
            )
            needed.append(TRANSFORMS["power"].name)
            steps.append("        mixed = _power(mixed, POWER)")
        if design.clip_quantile < 1.0:
            constants.append(
                (
                    "CLIP_QUANTILE",
                    repr(design.clip_quantile),
                    "Per-tensor quantile every importance is capped at.",
                )
            )
            needed.append(TRANSFORMS["clip_quantile"].name)
            steps.append("        mixed = _clip_quantile(mixed, CLIP_QUANTILE)")
        if design.floor > 0.0:
            constants.append(
                (
                    "FLOOR_FRACTION",
                    repr(design.floor),
                    "Lowest importance, as a fraction of the tensor's mean: no weight is left free.",
                )
            )
            needed.append(TRANSFORMS["floor"].name)
            steps.append("        mixed = _floor(mixed, FLOOR_FRACTION)")
        if design.rescale == "fisher":
            needed.extend([RESCALES["fisher"].name, *RESCALES["fisher"].requires])
            steps.append(
                "        mixed = _rescale_to(mixed, fisher[k])  # the Fisher's total: reg_strength keeps its sense"
            )
        steps.append("        new[k] = mixed")
        lines += steps

    if design.accumulate == "sum":
        lines.append(f"    return {result}  # the loop adds it to the carried importance: a plain sum")
    elif design.accumulate == "decay":
        needed.append(ACCUMULATIONS["decay"].name)
        lines.append(f"    return _accumulate_decay(model._custom_importance, {result}, DECAY_GAMMA)")
    else:
        needed.append(ACCUMULATIONS["max"].name)
        lines.append(f"    return _accumulate_max(model._custom_importance, {result})")
    return "\n".join(lines)


def _penalty_body(design: Design, needed: list[str], constants: list[tuple[str, str, str]]) -> str:
    """The source of `compute_regularization_loss`."""
    penalty = PENALTIES[design.penalty]
    needed.extend([penalty.name, *penalty.requires])
    why = (
        "0.5: EWC's quadratic (Laplace) approximation"
        if design.penalty_coef == 0.5
        else "as SI and MAS publish"
    )
    constants.append(("PENALTY_COEF", repr(design.penalty_coef), f"Constant factor of the penalty ({why})."))
    coef = "PENALTY_COEF"
    if design.accumulate == "decay":
        constants.append(
            (
                "DECAY_GAMMA",
                repr(design.decay_gamma),
                "Decay of the carried importance per context; online EWC also weighs the penalty by it.",
            )
        )
        coef = "PENALTY_COEF * DECAY_GAMMA"
    return "\n".join(
        [
            _SIGNATURE_PENALTY,
            f'    """R = {coef} * sum importance (theta - anchor)^2; 0 while nothing is carried."""',
            f"    return {penalty.name}(model, importance_dict, prev_params_dict, {coef})",
        ]
    )


def _docline(text: str) -> str:
    """A one-line docstring that fits (4 spaces of indent and the quotes)."""
    room = LINE - 4 - 6
    return text if len(text) <= room else text[: room - 3].rstrip() + "..."


def write_module(path: str | os.PathLike[str], source: str) -> None:
    """Write `source` to `path` atomically (a temporary file in the same folder, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(source)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
