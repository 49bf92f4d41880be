"""What optuna-dashboard shows of a study beyond Optuna's own records: names, notes and module files.

Written through public APIs of Optuna and optuna-dashboard, into the study's storage and an artifact store:

- the objective's name, `records.METRIC` (`Study.set_metric_names`), instead of "Objective 0";
- the study's note (`optuna_dashboard.save_note`): the study file's `description`, how to read the scores, and
  the promoted trials' scores at higher fidelity. `search.promote` stores those as study user attributes
  (`promoted:<fidelity>:<trial>`), since a finished trial's user attributes cannot be set through Optuna's
  public API; the note shows them as one table, best first. The part above `NOTE_END` is rewritten whenever a
  study is prepared for a run or served by `python -m search dashboard`; what a user writes below it is kept;
- the promoted study (`NAME:promoted`, `search.promote.record_promoted`): its note, and each trial's note with
  its promoted scores (`promoted_study_note`, `promoted_trial_note`);
- each trial's note: its design in one sentence (`space.describe`), written while the trial runs;
- each trial's module as an artifact (`ARTIFACT_NAME`, opened as text, downloaded as a `.py` file) in a
  `FileSystemArtifactStore` beside the storage (`studies/local/NAME.artifacts/` for `studies/local/NAME.db`),
  which `python -m search dashboard` serves. The module is an artifact and nothing else: the trial's user
  attributes keep only its sha256 (`module_sha256`; trials of older studies keep its text, `module_source`,
  which the dashboard shows as its sha256), against which `search export` and promote check the module they
  generate again from the design.
"""

from __future__ import annotations

import sys
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from search import optuna_adapter
from search.records import (
    LEGACY_METRIC,
    METRIC,
    PROMOTED_METRIC,
    best_promoted,
    metric_name,
    promoted,
    promoted_study_name,
)
from search.storage import local_dir, sqlite_path
from search.studies import repo_root

ARTIFACT_NAME = "custom_regularization.py"
# Served as text, so that the browser opens it; the dashboard's download button keeps the file name.
ARTIFACT_MIMETYPE = "text/plain; charset=utf-8"
# The study attribute naming the artifact folder (relative to the repository when inside it).
ARTIFACT_DIR_ATTR = "artifact_dir"
NOTE_END = (
    "_Above the line: written by `python -m search` (rewritten when the study is run or its dashboard "
    "starts). Notes written below it are kept._"
)


# ---------------------------------------------------------------------------------------------------------
# Artifact store


def artifact_dir(storage_url: str, study_name: str) -> Path:
    """The artifact folder of a study: `<db without .db>.artifacts/` beside a SQLite file.

    Other storages (PostgreSQL, shared by several machines) get `studies/local/<name>.artifacts/` on each
    machine: every machine keeps the modules of the trials it ran, and any trial's module is generated again
    from its design (`search export`).
    """
    db = sqlite_path(storage_url)
    if db is not None:
        return db.resolve().with_suffix(".artifacts")
    return local_dir() / f"{study_name}.artifacts"


def display_path(path: Path) -> str:
    """`path` relative to the repository when inside it (how the study records it), else absolute."""
    try:
        return path.relative_to(repo_root()).as_posix()
    except ValueError:
        return str(path)


def study_artifact_dir(study: optuna.Study) -> Path | None:
    """The artifact folder recorded on the study by `annotate_study`, or None."""
    value = study.user_attrs.get(ARTIFACT_DIR_ATTR)
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else repo_root() / path


def artifact_store(path: Path) -> optuna.artifacts.FileSystemArtifactStore:
    """A file-system artifact store at `path` (created)."""
    path.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(path))


# ---------------------------------------------------------------------------------------------------------
# Notes


def merge_note(current: str, generated: str) -> str:
    """`generated` above the end line, then whatever a user wrote below the end line of `current`."""
    _, found, kept = current.partition(NOTE_END)
    if not found and current.strip():
        kept = "\n\n" + current.strip()  # a note written before these notes existed: keep it below
    return f"{generated.rstrip()}\n\n---\n{NOTE_END}{kept}"


def description_of(study: optuna.Study) -> str:
    """The `description` of the study file the study was run with (its `study_file` attribute)."""
    text = study.user_attrs.get("study_file")
    if not isinstance(text, str):
        return ""
    try:
        value = tomllib.loads(text).get("description", "")
    except tomllib.TOMLDecodeError:
        return ""
    return value if isinstance(value, str) else ""


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "—"


def promoted_table(entries: Sequence[Mapping[str, Any]], benchmarks: Sequence[str]) -> list[str]:
    """Markdown rows of the promoted trials: highest fidelity first, then best value first."""
    benches = list(benchmarks) or sorted({b for e in entries for b in e.get("scores", {})})
    header = ["fidelity", "trial", "value", "proxy value"]
    for b in benches:
        header += [f"{b} accuracy", f"{b} gap closed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ordered = sorted(
        entries, key=lambda e: (-e.get("iterations", 0), -e.get("value", 0.0), e.get("trial", 0))
    )
    for e in ordered:
        row = [
            str(e.get("fidelity", "?")),
            str(e.get("trial", "?")),
            _fmt(e.get("value")),
            _fmt(e.get("proxy_value")),
        ]
        for b in benches:
            row += [_fmt(e.get("scores", {}).get(b)), _fmt(e.get("gaps", {}).get(b))]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def study_note(study: optuna.Study, description: str) -> str:
    """The generated part of the study's note."""
    benchmarks = [b for b in study.user_attrs.get("benchmarks", []) if isinstance(b, str)]
    lines = [f"**{description}**", ""] if description else []
    if metric_name(study) == METRIC:
        lines += [
            f"**Objective: {METRIC}.** Per benchmark, the share of the gap between no regularization "
            "(`none`, 0) and joint training (1) that a design closes, both measured at the study's proxy "
            "settings; the weighted mean over benchmarks. Per-benchmark scores are the trials' user "
            "attributes `proxy_<benchmark>` (average validation accuracy) and `gap_<benchmark>` (share of the "
            "gap closed), which the dashboard sorts and plots: pick one as the history plot's y axis.",
        ]
    else:
        lines += [
            f"**Objective: {LEGACY_METRIC}.** This study was scored before the gap-share objective: a trial's "
            "value is the mean over benchmarks of its proxy average validation accuracy; its per-benchmark "
            "scores are the user attribute `scores`.",
        ]
    lines += [
        "",
        f"A trial's note says what its design computes, and its artifact `{ARTIFACT_NAME}` is the exact "
        "module it scored (open or download it); its user attribute `module_sha256` is the module's sha256. "
        "Trials run before notes and module files were stored have neither; `python -m search export --study "
        f"{study.study_name} --trial N --out FILE` writes any trial's module, generated again from its design "
        "and checked against that sha256.",
        "",
    ]
    entries = promoted(study)
    if entries:
        best = best_promoted(study)
        lines += [
            "### Promoted trials",
            "",
            "Re-run at a higher fidelity by `python -m search promote` (value: the same gap share, with `none` "
            "and joint run at that fidelity). `make regenerate` exports the best at the highest fidelity"
            + (f": trial {best['trial']}." if best else ".")
            + f" Each is also a trial of the study `{promoted_study_name(study.study_name)}` in this storage, "
            "with its scores as sortable user attributes `promoted_<benchmark>` and `promoted_gap_<benchmark>`.",
            "",
            *promoted_table(entries, benchmarks),
            "",
        ]
    else:
        lines += [
            f"No trial has been promoted yet (`python -m search promote --study {study.study_name}`).",
            "",
        ]
    return "\n".join(lines)


def refresh_note(study: optuna.Study, generated: str) -> bool:
    """Rewrite the generated part of the study's note when it changed; returns whether it wrote."""
    from optuna_dashboard import get_note, save_note  # deferred: a 1 s import every command would pay

    current = get_note(study)
    note = merge_note(current, generated)
    if note == current:
        return False
    save_note(study, note)
    return True


def refresh_study_note(study: optuna.Study, description: str) -> bool:
    """Rewrite the generated part of the study's note when it changed; returns whether it wrote."""
    return refresh_note(study, study_note(study, description))


def promoted_study_note(source: str, benchmarks: Sequence[str]) -> str:
    """The generated part of the note of study `source`'s promoted study."""
    attrs = ", ".join(f"`promoted_{b}`, `promoted_gap_{b}`" for b in benchmarks) or "`promoted_<benchmark>`"
    return "\n".join(
        [
            f"**The promoted trials of study `{source}`**, one trial here per trial of `{source}` and fidelity "
            "that `python -m search promote` ran: the same parameters, re-run on the validation split at that "
            "fidelity (user attributes `fidelity`, `iterations`; `source_trial` is its number in "
            f"`{source}`).",
            "",
            f"**Objective: {PROMOTED_METRIC}**, the share of the gap between `none` (0) and joint training (1) "
            "closed, both run at the same fidelity; compare values within one fidelity. Per benchmark: "
            f"{attrs} (average validation accuracy, gap closed) beside the proxy's `proxy_<benchmark>`; sort "
            "or plot them (the history plot's y axis).",
            "",
            f"Written from the user attributes `promoted:<fidelity>:<trial>` of `{source}`, which `export` and "
            "`make regenerate` read; `promote` and `python -m search dashboard` add what is missing here.",
        ]
    )


def promoted_trial_note(
    entry: Mapping[str, Any], description: str, source: str, proxy: Mapping[str, float]
) -> str:
    """A promoted trial's note: its design, its scores at the promoted fidelity beside the proxy's (`proxy`:
    {benchmark: accuracy}), and its module."""
    lines = ["**Design:**", "", *(f"- {clause}" for clause in description.split("; ")), ""]
    lines += [
        f"**Promoted** trial {entry['trial']} of study `{source}` at fidelity `{entry['fidelity']}` "
        f"({entry['iterations']} training iterations; validation split; gap closed: 0 is `none`, 1 is joint "
        "training, both at that fidelity):",
        "",
        "| benchmark | accuracy | gap closed | proxy accuracy |",
        "|---|---|---|---|",
        *(
            f"| {b} | {acc:.4f} | {_fmt(entry['gaps'].get(b))} | {_fmt(proxy.get(b))} |"
            for b, acc in entry["scores"].items()
        ),
        "",
        f"**Module:** the artifact `{ARTIFACT_NAME}`, the module the promotion ran (generated again from trial "
        f"{entry['trial']}'s design); `python -m search export --study {source} --trial {entry['trial']} --out "
        "FILE` writes the same code with the fidelity that chose it in its header.",
    ]
    return "\n".join(lines)


def trial_note(
    trial: optuna.Trial, description: str, scores: Mapping[str, tuple[float, float]] | None = None
) -> str:
    """A trial's note: its design in one sentence, its proxy scores once it has any, and where its module is."""
    # the sentence's clauses one per line: the dashboard does not wrap a note wider than the page
    lines = ["**Design:**", "", *(f"- {clause}" for clause in description.split("; ")), ""]
    if scores:
        lines += [
            "**Proxy scores** (validation split; gap closed: 0 is `none`, 1 is joint training):",
            "",
            "| benchmark | accuracy | gap closed |",
            "|---|---|---|",
            *(f"| {b} | {acc:.4f} | {gap:.4f} |" for b, (acc, gap) in scores.items()),
            "",
        ]
    lines.append(
        f"**Module:** the artifact `{ARTIFACT_NAME}` (open or download it), whose sha256 is the user attribute "
        f"`module_sha256`; `python -m search export --study {trial.study.study_name} --trial {trial.number} "
        "--out FILE` writes it."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Entry points


def annotate_study(study: optuna.Study, description: str, storage_url: str) -> None:
    """Name the objective, record the artifact folder and write the study's note (each only when changed)."""
    name = metric_name(study)
    if study.metric_names != [name]:
        with optuna_adapter.no_experimental_warning():
            study.set_metric_names([name])
    folder = display_path(artifact_dir(storage_url, study.study_name))
    if study.user_attrs.get(ARTIFACT_DIR_ATTR) != folder:
        study.set_user_attr(ARTIFACT_DIR_ATTR, folder)
    refresh_study_note(study, description)


def _warn(trial: optuna.Trial, exc: Exception) -> None:
    print(
        f"trial {trial.number}: dashboard note or artifact not written: {type(exc).__name__}: {exc}",
        file=sys.stderr,
        flush=True,
    )


def note_scores(trial: optuna.Trial, description: str, scores: Mapping[str, tuple[float, float]]) -> None:
    """Rewrite the trial's note with its proxy scores ({benchmark: (accuracy, gap closed)}). Never raises."""
    from optuna_dashboard import save_note  # deferred: a 1 s import every command would pay

    try:
        save_note(trial, trial_note(trial, description, scores))
    except Exception as exc:  # the trial's score does not depend on its annotations
        _warn(trial, exc)


def annotate_trial(trial: optuna.Trial, *, description: str, source: str) -> None:
    """The trial's note and its module as an artifact. Never raises: a failure here must not cost the trial."""
    from optuna_dashboard import save_note  # deferred: a 1 s import every command would pay

    try:
        save_note(trial, trial_note(trial, description))
        folder = study_artifact_dir(trial.study)
        if folder is None:
            return  # a study not prepared by `prepare_study` (an objective used alone): no artifact folder
        upload_module(trial, folder, source)
    except Exception as exc:  # the trial's score does not depend on its annotations
        _warn(trial, exc)


def upload_module(trial: optuna.Trial, folder: Path, source: str) -> None:
    """`source` as the running trial's artifact `ARTIFACT_NAME`, in the artifact store at `folder`."""
    with tempfile.TemporaryDirectory(prefix="cl-artifact-") as tmp:
        path = Path(tmp) / ARTIFACT_NAME
        path.write_text(source, encoding="utf-8")
        optuna.artifacts.upload_artifact(
            artifact_store=artifact_store(folder),
            file_path=str(path),
            study_or_trial=trial,
            mimetype=ARTIFACT_MIMETYPE,
        )
