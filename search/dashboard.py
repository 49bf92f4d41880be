"""What `python -m search dashboard` serves: a study's storage made readable, annotated and, for a committed
reference, copied into memory.

Every storage is served through `ReadableStorage`: trials show the module's sha256, never its text (studies
written before the objective stored only the sha256 keep the text in `module_source`, one attribute on one line
that made the trial page about 111,000 px wide); the module itself is the trial's artifact. Before serving, the
study is annotated (`search.annotate`: the objective's name, the study's note with its description and promoted
trials) and its promoted study (`NAME:promoted`) gets the promotion results it lacks
(`search.promote.record_promoted`). A committed reference study (`studies/NAME.db`) is evidence and is not
written: an in-memory copy of it is served instead.
"""

from __future__ import annotations

import copy
import io
import socket
from collections.abc import Container, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from evaluation.cache import sha256_text
from evaluation.errors import UserError
from search import annotate, optuna_adapter
from search.export import trial_module
from search.promote import record_promoted
from search.records import promoted_study_name, quiet_optuna
from search.storage import is_reference, make_storage, open_study

# Trial user attributes the dashboard does not show as they are stored: the module's text (its sha256 instead).
HIDDEN_ATTR = "module_source"


def readable_trial(trial: FrozenTrial) -> FrozenTrial:
    """`trial` as the dashboard shows it: `module_source` replaced by its sha256 (`module_sha256`)."""
    source = trial.user_attrs.get(HIDDEN_ATTR)
    if source is None:
        return trial
    shown = copy.copy(trial)
    attrs = {k: v for k, v in trial.user_attrs.items() if k != HIDDEN_ATTR}
    if isinstance(source, str):
        attrs.setdefault("module_sha256", sha256_text(source))
    shown.user_attrs = attrs
    return shown


class ReadableStorage(BaseStorage):
    """A storage as the dashboard serves it: every call goes to `inner`, and trials read back without their
    module's text (`readable_trial`). Notes and everything else the dashboard writes go to `inner` as they are.
    """

    def __init__(self, inner: BaseStorage) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # storage-specific extras (RDBStorage's, InMemoryStorage's)
        return getattr(self.inner, name)

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self.inner.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self.inner.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self.inner.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self.inner.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self.inner.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.inner.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self.inner.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.inner.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.inner.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self.inner.get_all_studies()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self.inner.create_new_trial(study_id, template_trial)

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any
    ) -> None:
        self.inner.set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.inner.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        return self.inner.set_trial_state_values(trial_id, state, values)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self.inner.set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.inner.set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.inner.set_trial_system_attr(trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return readable_trial(self.inner.get_trial(trial_id))

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return [readable_trial(t) for t in self.inner.get_all_trials(study_id, deepcopy, states)]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def in_memory_copy(name: str, url: str) -> tuple[InMemoryStorage, optuna.Study]:
    """Study `name` of `url` copied into memory: trials, attributes and the dashboard's notes and artifacts."""
    src_storage = make_storage(url)
    source = open_study(name, src_storage)
    storage = InMemoryStorage()
    return storage, optuna_adapter.copy_study(src_storage, name, storage, source.get_trials(deepcopy=False))


def prepare(name: str, url: str) -> tuple[BaseStorage, str]:
    """The storage to serve for study `name` of `url`, annotated and with its promoted study up to date, and
    what it is (the study's own storage, or an in-memory copy of a committed reference)."""
    storage: BaseStorage
    if is_reference(url):
        storage, study = in_memory_copy(name, url)
        what = "an in-memory copy of the committed reference; edits made in the dashboard are not saved"
    else:
        storage = make_storage(url)
        study = open_study(name, storage)
        what = "notes written in the dashboard are saved to the study"
    annotate.annotate_study(study, annotate.description_of(study), url)
    # A reference's promoted trials are rebuilt in memory, without module files: its folder is not written.
    folder = None if is_reference(url) else annotate.artifact_dir(url, name)
    record_promoted(study, storage, artifact_folder=folder)
    if folder is not None:
        restore_artifacts(storage, name, folder)
    return storage, what


def restore_artifacts(storage: BaseStorage, name: str, folder: Path) -> int:
    """Write into `folder` the module of every artifact that the trials of study `name` and of its promoted
    study name and the folder lacks; returns how many were written.

    The repository keeps the storages, not their artifact files (issue 31): each is a trial's module, generated
    again and checked against the trial (`search.export.trial_module`); a promoted trial's is its source trial's.
    A trial whose module cannot be given back keeps its artifact missing (the dashboard says it is not found).
    """
    store = annotate.artifact_store(folder)
    with quiet_optuna():
        study = optuna.load_study(study_name=name, storage=storage)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        pairs = [(t, t) for t in trials.values()]
        if promoted_study_name(name) in {s.study_name for s in storage.get_all_studies()}:
            companion = optuna.load_study(study_name=promoted_study_name(name), storage=storage)
            pairs += [
                (t, trials[t.user_attrs["source_trial"]])
                for t in companion.get_trials(deepcopy=False)
                if t.user_attrs.get("source_trial") in trials
            ]
    written = 0
    for shown, source in pairs:
        metas = optuna.artifacts.get_all_artifact_meta(shown, storage=storage)
        missing = [
            m
            for m in metas
            if m.filename == annotate.ARTIFACT_NAME and not (folder / m.artifact_id).is_file()
        ]
        if not missing:
            continue
        try:
            module = trial_module(source, name)
        except UserError:
            continue
        for meta in missing:
            store.write(meta.artifact_id, io.BytesIO(module.encode("utf-8")))
            written += 1
    return written
