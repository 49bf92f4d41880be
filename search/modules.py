"""The module files the run records name, written back on demand: `python -m search modules` (`make modules`).

The repository does not keep the modules beside its runs (`results/**/modules/`, gitignored): each run record
keeps what the module was (`module`: sha256, design, provenance; evaluation/provenance.py), and this writes the
file back, checked against the sha256 the harness recorded (`hooks_sha256`). The ways, tried in order:

1. **design**: the generator, from the design and provenance the record keeps (every module the current
   generator wrote);
2. **study**: the trial of a committed study (`studies/**/*.db`) the provenance names, as `trial_module` gives it
   (a trial written by an earlier generator: the module its storage keeps, accepted by `search.legacy_modules`);
3. **archive**: the commit that last held the file (`module.archived`, `<commit>:<path>`), for modules of earlier
   generators that no study keeps (presets, panels, sweeps).

A module none of them gives back with its sha256 is named in one line (exit code 2); nothing is written for it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from clharness.atomic import write_atomic

from evaluation.errors import UserError
from evaluation.provenance import sha256_text
from search.studies import repo_root

# Where run records live: every `<runs>/<experiment>/<name>__<key>__seed<seed>.json` below these.
DEFAULT_ROOTS: tuple[str, ...] = ("results", "studies")
WAYS: tuple[str, ...] = ("present", "design", "study", "archive")


@dataclass(frozen=True)
class Wanted:
    """A module file a record names: where it goes, its sha256, and what the record keeps of it."""

    path: Path
    sha256: str
    entry: dict
    record: Path


def local_path(recorded: str) -> Path:
    """A record's `hooks_path` in this checkout: relative paths are the repository's; an absolute one written in
    another checkout is taken from its `results/` or `studies/` part on."""
    path = Path(recorded)
    root = repo_root()
    if not path.is_absolute():
        return root / path
    if path.is_relative_to(root):
        return path
    parts = path.parts
    for i, part in enumerate(parts):
        if part in DEFAULT_ROOTS:
            return root.joinpath(*parts[i:])
    return path


def wanted(roots: Iterable[Path]) -> Iterator[Wanted]:
    """Each module file named by a record under `roots`, once (copied records name their original's)."""
    seen: set[Path] = set()
    for root in roots:
        for record_path in sorted(root.rglob("*__seed*.json")):
            try:
                record = json.loads(record_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UserError(f"{record_path}: not a readable run record ({exc})") from exc
            result = record.get("result") if isinstance(record, dict) else None
            if not isinstance(result, dict) or not isinstance(result.get("hooks_path"), str):
                continue  # joint training, or not a run record
            path = local_path(result["hooks_path"])
            if path in seen:
                continue
            seen.add(path)
            entry = record.get("module") or {}
            yield Wanted(path, str(result.get("hooks_sha256") or entry.get("sha256")), entry, record_path)


def _from_design(want: Wanted) -> str | None:
    import space  # deferred: it imports torch

    design, provenance = want.entry.get("design"), want.entry.get("provenance") or {}
    if not isinstance(design, dict):
        return None
    try:
        return space.generate_source(space.Design.from_dict(design), provenance)
    except ValueError:  # a design of an earlier space
        return None


@functools.cache
def _storages() -> tuple[str, ...]:
    return tuple(f"sqlite:///{p}" for p in sorted((repo_root() / "studies").rglob("*.db")))


@functools.lru_cache(maxsize=4096)
def _study_module(study: str, trial: int) -> tuple[str, ...]:
    """The modules trial `trial` of a study named `study` gives in each committed storage that has it."""
    import optuna

    from search.export import trial_module
    from search.records import quiet_optuna

    found = []
    with quiet_optuna():
        for url in _storages():
            if study not in optuna.get_all_study_names(url):
                continue
            for t in optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False):
                if t.number == trial:
                    with contextlib.suppress(UserError):
                        found.append(trial_module(t, study))
    return tuple(found)


def _from_study(want: Wanted) -> str | None:
    provenance = want.entry.get("provenance") or {}
    study, trial = provenance.get("study"), str(provenance.get("trial", ""))
    if not study or not trial.isdigit() or "fidelity" in provenance:
        return None
    matches = [s for s in _study_module(study, int(trial)) if sha256_text(s) == want.sha256]
    return matches[0] if matches else None


def _from_archive(want: Wanted) -> str | None:
    archived = want.entry.get("archived")
    if not isinstance(archived, str) or ":" not in archived:
        return None
    done = subprocess.run(
        ["git", "-C", str(repo_root()), "show", archived], capture_output=True, text=True, check=False
    )
    return done.stdout if done.returncode == 0 else None


def source_of(want: Wanted) -> tuple[str, str]:
    """(way, source) that gives `want` back with its sha256; a UserError in one line when none does."""
    for way, find in (("design", _from_design), ("study", _from_study), ("archive", _from_archive)):
        source = find(want)
        if source is not None and sha256_text(source) == want.sha256:
            return way, source
    raise UserError(
        f"{want.path.relative_to(repo_root()) if want.path.is_relative_to(repo_root()) else want.path}: "
        f"no way gives back a module with sha256 {want.sha256[:12]} (named by {want.record.name}); "
        "its record keeps no design the generator reproduces, no study trial and no archived commit"
    )


def restore(roots: Iterable[Path], *, check: bool = False) -> Counter[str]:
    """Write back every module file a record under `roots` names and this checkout lacks (`check`: also
    regenerate those present, and write nothing); returns how many came each way (`WAYS`)."""
    counts: Counter[str] = Counter()
    for want in wanted(roots):
        present = want.path.is_file() and sha256_text(want.path.read_text(encoding="utf-8")) == want.sha256
        if present and not check:
            counts["present"] += 1
            continue
        way, source = source_of(want)
        counts[way] += 1
        if not present and not check:
            write_atomic(want.path, source)
    return counts
