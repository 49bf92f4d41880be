"""Reading a study back: the exact module source a trial scored, and the modules final-eval and fidelity take
from studies.

`trial_module` is the one way to a trial's module (export, promote, final-eval's tuned baselines and candidate,
fidelity and the panel): nothing from a study's storage is run or exported as it is stored; the module is
generated again from the trial's design and must be the one the trial stored. Trials are ranked by
`search.records.rank_trials`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from evaluation.cache import TUNED_BASELINES, sha256_text
from evaluation.errors import UserError
from evaluation.fidelity import DesignRun
from evaluation.final_eval import ModuleSource
from search import legacy_modules, storage
from search.records import best_promoted, best_trial, promoted, rank_promoted, rank_trials

# `space` imports torch: it is imported where a module is generated, so that reading a study starts without it.


def get_trial(study: optuna.Study, number: int | None = None) -> FrozenTrial:
    """Trial `number` of the study, or when `number` is None its best trial at the highest fidelity run
    (promoted trials first, `search.promote`; else the best proxy value)."""
    if number is None:
        entry = best_promoted(study)
        if entry is None:
            return best_trial(study)
        number = int(entry["trial"])
    trials = study.get_trials(deepcopy=False)
    matches = [t for t in trials if t.number == number]
    if not matches:
        raise UserError(f"study {study.study_name!r} has no trial {number} (trials 0..{len(trials) - 1})")
    found = matches[0]
    if found.state != TrialState.COMPLETE:
        # A failed or pruned trial was not fully scored (a failed one may not even run): never exported.
        state = {TrialState.FAIL: "failed", TrialState.RUNNING: "still running"}.get(
            found.state, found.state.name.lower()
        )
        reason = found.user_attrs.get("fail_reason")
        why = f" ({reason})" if reason else ""
        raise UserError(
            f"trial {number} of study {study.study_name!r} {state}{why}; only complete trials are exported "
            "(`python -m search status` lists them; without --trial the best is taken)"
        )
    return found


class ModuleMismatch(UserError):
    """A trial's stored module is not what its design generates: its storage was edited (never skipped)."""


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def trial_module(trial: FrozenTrial, study_name: str) -> str:
    """The module trial `trial` of study `study_name` scored, generated again from the trial's design.

    A trial keeps its design (JSON) and its module (`module_source`, or only its sha256 `module_sha256`); the
    storage may have been edited (a committed `.db`, a shared PostgreSQL study), so its text is never run or
    written as it is: the module is generated from the design (`space.generate_source` is deterministic, with
    the provenance the objective gives it: the study and the trial) and its sha256 must be the stored one. A
    mismatch, or a trial without a design the current space holds, is a UserError in one line. The complete
    trials of the committed studies, written by earlier generators, give their stored module when its sha256 is
    one the repository records for them (`search.legacy_modules`).
    """
    import space

    where = f"trial {trial.number} of study {study_name!r}"
    stored_source = trial.user_attrs.get("module_source")
    stored_sha = trial.user_attrs.get("module_sha256")
    if isinstance(stored_source, str):
        if isinstance(stored_sha, str) and stored_sha != sha256_text(stored_source):
            raise ModuleMismatch(
                f"{where}: refused, its stored module does not have its stored sha256 (the study was edited); "
                "nothing of it is run or exported"
            )
        stored_sha = sha256_text(stored_source)
    if not isinstance(stored_sha, str):
        raise UserError(
            f"{where} stored no module ({trial.state.name.lower()} before its module was generated)"
        )
    try:
        design = space.Design.from_dict(trial.user_attrs.get("design"))  # type: ignore[arg-type]
        source: str | None = space.generate_source(design, {"study": study_name, "trial": trial.number})
        why = "its design generates another module"
    except ValueError as exc:  # space.DesignError: no design, or none the current space holds
        source, why = None, f"its design cannot be generated again: {_one_line(str(exc))}"
    if source is not None and sha256_text(source) == stored_sha:
        return source
    if isinstance(stored_source, str) and legacy_modules.accepted(study_name, trial.number, stored_sha):
        # an earlier generator's module, recorded by the repository: it runs as it ran
        return stored_source
    raise ModuleMismatch(
        f"{where}: refused, its stored module (sha256 {stored_sha[:12]}) is not the one its design generates "
        f"({why}); the study was edited or written by another version of the generator, and nothing of it is "
        "run or exported"
    )


def trial_source(study_name: str, storage_url: str | None = None, trial: int | None = None) -> str:
    """The module source of trial `trial` (default: the best at the highest fidelity) of the study.

    A trial scored only by the proxy gives the exact bytes it scored. A promoted trial is written again from its
    design with the fidelity that chose it in the header (the code is the generator's, the same for the same
    design; the header names the fidelity); both are deterministic, so the export reproduces byte for byte.
    """
    study = storage.open_study(study_name, storage_url)
    frozen = get_trial(study, trial)
    source = trial_module(frozen, study.study_name)  # checked against its design, also when promoted
    entries = [e for e in promoted(study) if e["trial"] == frozen.number]
    if entries and isinstance(frozen.user_attrs.get("design"), dict):
        import space

        entry = max(entries, key=lambda e: e["iterations"])
        design = space.Design.from_dict(frozen.user_attrs["design"])
        provenance = {"study": study_name, "trial": frozen.number, "fidelity": entry["fidelity"]}
        return space.generate_source(design, provenance)
    return source


def best_source(study_name: str) -> ModuleSource | None:
    """The best trial's source of a study in its default storage; None when there is no storage or no trial."""
    url = storage.default_storage_url(study_name)
    if not Path(url[len("sqlite:///") :]).is_file():
        return None
    try:
        source = trial_source(study_name)
    except ModuleMismatch:
        raise  # an edited study is said, never taken for an absent one
    except UserError:  # no completed trial, no such study in that storage: the method is simply not there
        return None
    return ModuleSource(source, f"best trial of study `{study_name}`")


# The study whose best trial is the search's own design (final-eval's method `searched`).
SEARCH_STUDY = "campaign"


def searched_source() -> ModuleSource | None:
    """The search's own best design: the best trial of the campaign study at the highest fidelity run, or None
    when it has no storage or no completed trial."""
    return best_source(SEARCH_STUDY)


def top_designs(study: optuna.Study, k: int) -> list[DesignRun]:
    """The `k` best complete trials with a stored design (identical designs counted once), for fidelity."""

    out: list[DesignRun] = []
    seen: set[str] = set()
    for t in rank_trials(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))):
        design = t.user_attrs.get("design")
        if not isinstance(design, dict):
            continue
        canonical = json.dumps(design, sort_keys=True)
        if canonical in seen:
            continue
        seen.add(canonical)
        source = trial_module(t, study.study_name)
        out.append(DesignRun(f"trial_{t.number}", "top", t.number, float(t.value or 0.0), source, design))
        if len(out) == k:
            break
    return out


def best_tuned_baseline(log: Callable[[str], None] = print) -> str:
    """`tuned_<b>` for the tuned baseline whose study's best promoted score (full fidelity, validation split) is
    highest: the choice never looks at the test split. A UserError when no tuned study has been promoted."""
    urls = {b: storage.default_storage_url(b) for b in TUNED_BASELINES}
    ranked = rank_promoted(
        {b: url for b, url in urls.items() if (path := storage.sqlite_path(url)) and path.is_file()}
    )
    if not ranked:
        raise UserError(
            "tuned_best: no tuned baseline study has promoted trials yet; run `make promote STUDY=<baseline> TOP=3`"
        )
    log(
        "tuned_best: "
        + ", ".join(f"tuned_{b} {float(entry['value']):.4f}" for b, entry in ranked)
        + " (promoted, validation split)"
    )
    return f"tuned_{ranked[0][0]}"


def study_modules(
    methods: Sequence[str] | None, study: str | None
) -> tuple[ModuleSource | None, dict[str, ModuleSource]]:
    """The modules that come from studies: the candidate of `--study` and the tuned baselines asked for (all
    of them that exist when `methods` is None); a missing `--study` candidate is a UserError."""
    candidate = None
    if study is not None:
        candidate = best_source(study)
        if candidate is None:
            raise UserError(f"--study {study}: no storage or no completed trial to take the candidate from")
    wanted = (
        TUNED_BASELINES if not methods else [m[len("tuned_") :] for m in methods if m.startswith("tuned_")]
    )
    # the study that tunes baseline b is studies/<b>.toml
    tuned = {b: found for b in wanted if b in TUNED_BASELINES and (found := best_source(b)) is not None}
    return candidate, tuned
