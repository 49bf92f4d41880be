"""What a run record keeps of the module that ran, so that the module file itself need not be kept.

Module files beside the runs (`<runs>/../modules/<name>-<sha12>.py`) are copies: the generator is deterministic,
so a generated module is its design and its provenance (the study and trial, or the preset, it came from). A run
record keeps both under `module`, with the file's sha256, its `code_sha256` (what it does, blind to the
docstring: `reuse_identical` finds equivalent runs by it) and the command that writes every missing file back
(`python -m search modules`, search/modules.py), which checks each against its sha256. Modules written by earlier
generators are written back from the study that stored them or from the commit that last held the file
(`archived`).

Reading a module's design and provenance needs no torch: the DESIGN literal and the docstring's `Provenance:` line
are parsed from the text the generator wrote (space/generator.py, `_header` and `_design_block`).
"""

from __future__ import annotations

import ast
import hashlib
import re
from typing import Any

# The command that writes the module files of the run records back out (search/modules.py).
RESTORE_COMMAND = "python -m search modules"

_PROVENANCE = re.compile(r"^Provenance: (.*?)(?:\n\s*\n|\Z)", re.MULTILINE | re.DOTALL)


def sha256_text(text: str) -> str:
    """sha256 of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _without_docstring(tree: ast.Module) -> ast.Module:
    first = tree.body[0] if tree.body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        tree.body = tree.body[1:]
    return tree


def code_sha256(source: str) -> str:
    """sha256 of what a module does: its syntax tree without the module docstring (comments and layout never
    reach the tree). Two generated modules that differ only in their header (`preset mas_calibrated` or `study
    campaign, trial 3`) have the same one, and are the same experiment."""
    return hashlib.sha256(ast.dump(_without_docstring(ast.parse(source))).encode()).hexdigest()


def design_and_provenance(source: str) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The DESIGN literal of a generated module (None when it has none) and its provenance (key -> value as the
    header renders it; the generator renders a number and the same digits as a name alike)."""
    tree = ast.parse(source)
    design = None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "DESIGN"
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                value = None
            design = value if isinstance(value, dict) else None
    doc = ast.get_docstring(tree, clean=True) or ""
    match = _PROVENANCE.search(doc)
    provenance: dict[str, str] = {}
    if match:
        for item in " ".join(match.group(1).split()).split(", "):
            key, sep, value = item.partition("=")
            if sep:
                provenance[key] = value
    return design, provenance


def module_entry(source: str) -> dict[str, Any]:
    """What a run record keeps of the module `source` (its `module` field)."""
    entry: dict[str, Any] = {"sha256": sha256_text(source), "regenerate": RESTORE_COMMAND}
    try:
        entry["code_sha256"] = code_sha256(source)
        design, provenance = design_and_provenance(source)
    except SyntaxError:
        return entry
    if design is not None:
        entry["design"] = design
        entry["provenance"] = provenance
    return entry
