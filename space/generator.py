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
import textwrap
from collections.abc import Mapping
from typing import Any

from clharness.atomic import write_atomic

from space import components, generator_kfac, kfac
from space.design import Design, DesignError
from space.generator_kfac import Constants
from space.registry import (
    ACCUMULATIONS,
    CONSTANTS,
    ESTIMATORS,
    HELPERS,
    NORMALIZATIONS,
    PENALTY,
    SCALES,
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


_NAMES = {"fisher": "Fisher", "mas": "MAS", "si": "SI", "uniform": "uniform (L2)"}


def _estimator_name(design: Design, name: str) -> str:
    return _LABELS[design.fisher_labels] if name == "fisher" else _NAMES[name]


def _plain(design: Design) -> bool:
    """True when the importance is one estimator's output as it is (no normalization, transform or rescale)."""
    used = design.estimator_list
    untouched = design.norm == "none" and design.power == 1.0 and design.clip_quantile >= 1.0
    if len(used) != 1 or not untouched:
        return False
    # Rescaling the exact Fisher to its own total changes nothing.
    return design.reference == "none" or (
        design.reference == "fisher" and used[0] == "fisher" and design.fisher_labels == "exact"
    )


def _describe_kfac(design: Design) -> str:
    labels = _LABELS[design.fisher_labels]
    text = f"Kronecker-factored {labels} (K-FAC) per nn.Linear layer, diagonal elsewhere"
    if design.kfac_damping:
        text += f", factors damped by {design.kfac_damping!r} x their mean diagonal"
    text += ", rescaled to the exact Fisher's total" if design.reference == "fisher" else ", raw"
    text += ", over every example" if design.data_examples == 0 else f", over {design.data_examples} examples"
    if design.data_examples:
        text += f" ({design.data_subset})"
    across = "one pair per context, summed" if design.kfac_accumulate == "per_context" else "one merged pair"
    if design.kfac_accumulate == "merged" and design.reference == "fisher":
        across += " (at the contexts' summed trace)"
    how = (
        "exact" if design.kfac_rank == 0 else f"in the top-{design.kfac_rank} eigenbasis, diagonal outside it"
    )
    return (
        f"importance = {text}; across contexts {across}; penalty {how}; "
        f"reg_strength_scale {design.reg_strength_scale!r}."
    )


def describe(design: Design) -> str:
    """One sentence saying what the design computes."""
    used = design.estimator_list
    if not used:
        return "no regularization (the penalty is 0)."
    if design.kfac:
        return _describe_kfac(design)
    names = [_estimator_name(design, e) for e in used]
    if len(used) == 1:
        text = names[0]
    else:
        text = f"{design.mix!r} x {names[0]} + {round(1.0 - design.mix, 12)!r} x {names[1]}"
    if design.norm != "none":
        text += f" ({'each ' if len(used) > 1 else ''}{design.norm}-normalized per tensor)"
    elif len(used) > 1:
        text += " (each brought to a unit total)"
    steps = []
    if design.power != 1.0:
        steps.append(f"raised to {design.power!r}")
    if design.clip_quantile < 1.0:
        steps.append(f"capped at quantile {design.clip_quantile!r} per tensor")
    if not _plain(design) and design.reference == "fisher":
        steps.append("rescaled to the exact Fisher's total")
    elif design.reference == "fisher_first":
        steps.append("rescaled to the first context's exact-Fisher total (every context alike)")
    if steps:
        text = f"{text}, {', '.join(steps)}"
    if "data_examples" in design.to_dict():
        if design.data_examples == 0:
            text += ", over every example of the context"
        else:
            text += f", over {design.data_examples} examples ({design.data_subset})"
    accumulate = {"sum": "summed", "decay": f"decayed by {design.decay_gamma!r}", "max": "max"}[
        design.accumulate
    ]
    return f"importance = {text}; across contexts {accumulate}; reg_strength_scale {design.reg_strength_scale!r}."


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


def _component(name: str) -> Any:
    """A building block by name: from `space.components`, else from `space.kfac` (the structured family)."""
    return getattr(components, name) if hasattr(components, name) else getattr(kfac, name)


def _source_order(name: str) -> tuple[int, int]:
    """Building blocks in the order of their files: components first, then the structured family's."""
    return (0 if hasattr(components, name) else 1, inspect.getsourcelines(_component(name))[1])


def generate_source(design: Design, provenance: Mapping[str, str | int | float] | None = None) -> str:
    """The hook module's source for `design`. Deterministic; provenance values must be names or numbers."""
    if not isinstance(design, Design):
        raise DesignError(f"generate_source needs a space.Design, got {type(design).__name__}")
    prov = _provenance(provenance)
    needed: list[str] = ["_regularized"]
    constants: Constants = []
    if not design.estimator_list:
        body, penalty = _NONE_ESTIMATE, _NONE_PENALTY
    else:
        head = [
            _SIGNATURE_ESTIMATE,
            f'    """{_docline(describe(design))}"""',
            "    params = dict(_regularized(model))",
        ]
        if design.kfac:
            lines = _reading(design, needed, constants, "factors are")
            lines += generator_kfac.estimate_lines(design, needed, constants)
            penalty_lines = generator_kfac.penalty_lines(design, needed)
        else:
            lines = _estimate_lines(design, needed, constants)
            penalty_lines = _penalty_lines(design, needed, constants)
        body = "\n".join(head + lines)
        penalty = "\n".join([_SIGNATURE_PENALTY, *penalty_lines])

    names = _closure(needed)
    helper_constants = [n for n in CONSTANTS if n in names]
    functions = sorted((n for n in names if n not in CONSTANTS), key=_source_order)

    out: list[str] = [_header(design, prov)]
    imports = ["from __future__ import annotations", ""]
    stdlib = sorted(
        {"Iterator"}
        | ({"Callable"} if {"_per_example_sums", "_kronecker_factors"} & set(functions) else set())
    )
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
        out.append(inspect.getsource(_component(name)).rstrip())
    out += [body, penalty]
    # One blank line after the docstring and after the imports, two around definitions (ruff's layout).
    head_text = "\n\n".join(out[:3])
    return "\n\n\n".join(part for part in [head_text, *out[3:]] if part) + "\n"


def _header(design: Design, prov: Mapping[str, str]) -> str:
    if "study" in prov:
        source = f"study {prov['study']}" + (f", trial {prov['trial']}" if "trial" in prov else "")
        if "fidelity" in prov:  # promoted: the trial was chosen by its score at this fidelity
            source += f" (chosen at fidelity {prov['fidelity']})"
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


def _design_fields(design: Design) -> dict[str, Any]:
    """The design's fields less those at a value that changes nothing (an exponent of 1, no clip, no normalization
    of a single estimator); `Design.from_dict` gives them back as the defaults they are."""
    neutral: dict[str, Any] = {"power": 1.0, "clip_quantile": 1.0}
    if len(design.estimator_list) == 1:
        neutral["norm"] = "none"
    return {k: v for k, v in design.to_dict().items() if k not in neutral or neutral[k] != v}


def _design_block(design: Design) -> str:
    items = "\n".join(f"    {json.dumps(k)}: {_literal(v)}," for k, v in _design_fields(design).items())
    return (
        "# The design (the code reads the constants below; `python -m search export --design` takes it as JSON).\n"
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


def _reading(design: Design, needed: list[str], constants: Constants, what: str) -> list[str]:
    """The lines that stack the examples the design reads in eval mode, inside a `try:` that restores the mode."""
    needed.append("_examples")
    lines = [
        "    was_training = model.training",
        "    model.eval()  # per-example gradients: examples independent (no dropout, BatchNorm statistics)",
        "    try:",
    ]
    if design.data_examples == 0:
        return [*lines, "        xs, ys = _examples(dataset, range(len(dataset)), device)  # every example"]
    random = design.data_subset == "random"
    how = "a seeded random subset" if random else "the first ones, in order"
    why = f"Examples of the finished context the {what} averaged over ({how})."
    constants.append(("N_EXAMPLES", repr(design.data_examples), why))
    if not random:
        return [*lines, "        xs, ys = _examples(dataset, range(min(N_EXAMPLES, len(dataset))), device)"]
    constants.append(("SUBSET_SEED", "0", "Seed of the random subset of examples."))
    return [
        *lines,
        "        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(SUBSET_SEED))",
        "        xs, ys = _examples(dataset, order[:N_EXAMPLES].tolist(), device)",
    ]


def _estimate_lines(design: Design, needed: list[str], constants: Constants) -> list[str]:
    """The body of `estimate_importance` of a diagonal design, after its docstring and `params`."""
    used = design.estimator_list
    # What each variable holds: estimator name -> registry key; the exact Fisher is also the reference scale.
    computed = {e: (f"fisher_{design.fisher_labels}" if e == "fisher" else e) for e in used}
    reference_var = "fisher" if computed.get("fisher") == "fisher_exact" else "exact_fisher"
    if design.reference != "none" and reference_var == "exact_fisher":
        computed["exact_fisher"] = "fisher_exact"
    data_vars = [v for v, key in computed.items() if key not in ("si", "uniform")]
    lines = _reading(design, needed, constants, "importance is") if data_vars else []
    if computed.get("fisher") == "fisher_sampled":
        constants.append(("LABEL_SEED", "0", "Seed of the labels drawn from the model's softmax."))
    if "si" in used:
        why = "Clamp SI's Omega at 0 (W < 0 where steps went uphill); published SI does not."
        constants.append(("CLAMP_SI", repr(design.si_clamp), why))
    for key in computed.values():
        needed.extend([ESTIMATORS[key].name, *ESTIMATORS[key].requires])
    for var in data_vars:
        func = ESTIMATORS[computed[var]].name
        extra = ", torch.Generator().manual_seed(LABEL_SEED)" if computed[var] == "fisher_sampled" else ""
        lines.append(f"        {var} = {func}(model, params, xs, ys{extra})")
    if data_vars:
        lines += ["    finally:", "        model.train(was_training)"]
    if "si" in used:
        lines.append("    si = _si(model, params, prev_params, clamp=CLAMP_SI)")
    if "uniform" in used:
        lines.append("    uniform = _uniform(params)")
    result = used[0] if _plain(design) else _combine(design, needed, constants, lines)
    if design.reference == "fisher" and not _plain(design):
        needed.extend([SCALES["reference"].name, *SCALES["reference"].requires])
        result = f"_to_reference({result}, {reference_var})"
    elif design.reference == "fisher_first":
        needed.extend([SCALES["first_reference"].name, *SCALES["first_reference"].requires])
        result = f"_to_first_reference(model, {result}, {reference_var})"
    if design.accumulate == "sum":
        why = "# the loop adds it to the carried importance: a plain sum"
        if len(f"    return {result}  {why}") > LINE:
            return [*lines, f"    {why}", f"    return {result}"]
        return [*lines, f"    return {result}  {why}"]
    if result not in (*used, "new"):
        lines.append(f"    new = {result}")
        result = "new"
    accumulate = ACCUMULATIONS[design.accumulate].name
    needed.append(accumulate)
    gamma = ", DECAY_GAMMA" if design.accumulate == "decay" else ""
    return [*lines, f"    return {accumulate}(model._custom_importance, {result}{gamma})"]


def _combine(design: Design, needed: list[str], constants: Constants, lines: list[str]) -> str:
    """Append the lines that mix, normalize and transform the estimators per tensor; return what holds the result."""
    used = design.estimator_list
    if len(used) == 2:
        constants.append(
            ("MIX", repr(design.mix), f"Share of {used[0]} in the mixture; {used[1]} has the rest.")
        )
    if design.norm != "none":
        norm = NORMALIZATIONS[design.norm]
        needed.extend([norm.name, *norm.requires])
        terms = [f"{norm.name}({v}[k])" for v in used]
    elif len(used) == 2:  # mixed at a unit total each, so that their scales do not decide the mixture
        needed.extend([SCALES["unit_total"].name, *SCALES["unit_total"].requires])
        lines += [f"    {v}_unit = _unit_total({v})" for v in used]
        terms = [f"{v}_unit[k]" for v in used]
    else:
        terms = [f"{used[0]}[k]"]
    if len(terms) == 2:
        terms = [f"MIX * {terms[0]}", f"(1.0 - MIX) * {terms[1]}"]
    steps = []  # each one wraps the expression before it
    if design.power != 1.0:
        why = "Exponent of the importance (SI and MAS scale like the Fisher's root)."
        constants.append(("POWER", repr(design.power), why))
        if "si" in used and not design.si_clamp:  # signed: |x|^p with x's sign
            needed.append(TRANSFORMS["power"].name)
            steps.append("_power({}, POWER)")
        else:  # every estimate is >= 0
            steps.append("{}.pow(POWER)")
    if design.clip_quantile < 1.0:
        why = "Per-tensor quantile every importance is capped at: a few huge entries cannot freeze weights."
        constants.append(("CLIP_QUANTILE", repr(design.clip_quantile), why))
        needed.append(TRANSFORMS["clip_quantile"].name)
        steps.append("_clip_quantile({}, CLIP_QUANTILE)")
    if terms == [f"{used[0]}[k]"] and not steps:
        return used[0]
    expr = " + ".join(terms)
    for step in steps:
        expr = step.format(f"({expr})" if step.startswith("{") and " " in expr else expr)
    if len(line := f"    new = {{k: {expr} for k in params}}") <= LINE:
        lines.append(line)
        return "new"
    lines += ["    new = {}", "    for k in params:", _assign("mixed", terms, "        ")]
    lines += [f"        mixed = {step.format('mixed')}" for step in steps]
    lines.append("        new[k] = mixed")
    return "new"


def _penalty_lines(design: Design, needed: list[str], constants: Constants) -> list[str]:
    """The body of `compute_regularization_loss` of a diagonal design."""
    needed.extend([PENALTY.name, *PENALTY.requires])
    coef = "0.5"
    if design.accumulate == "decay":
        why = "Decay of the carried importance per context; online EWC also weighs the penalty by it."
        constants.append(("DECAY_GAMMA", repr(design.decay_gamma), why))
        coef = "0.5 * DECAY_GAMMA"
    return [
        f'    """R = {coef} * sum importance (theta - anchor)^2; 0 while nothing is carried."""',
        f"    return {coef} * {PENALTY.name}(model, importance_dict, prev_params_dict)",
    ]


def _docline(text: str) -> str:
    """A one-line docstring that fits (4 spaces of indent and the quotes)."""
    room = LINE - 4 - 6
    return text if len(text) <= room else text[: room - 3].rstrip() + "..."


def write_module(path: str | os.PathLike[str], source: str) -> None:
    """Write `source` to `path` atomically (clharness.atomic)."""
    write_atomic(path, source)
