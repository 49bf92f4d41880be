"""`python -m search dashboard`: optuna-dashboard on a study's storage, on the loopback interface.

Before serving, the study is annotated (`search.annotate`: the objective's name, the study's note with its
description and promoted trials), its promoted study (`NAME:promoted`) gets the promotion results it lacks
(`search.promote.record_promoted`), and the dashboard gets the study's artifact store, so that every trial's
module opens and downloads as a file. A committed reference study (`studies/NAME.db`) is evidence and is not
written: the dashboard serves an in-memory copy of it, annotated, and says so. Like `status` and `export` it
reads your local study when you have one (`--reference`, `make dashboard REFERENCE=1`: the committed one) and
says which it reads.

Every storage is served through `ReadableStorage`: trials show the module's sha256, never its text (studies
written before the objective stored only the sha256 keep the text in `module_source`, one attribute on one line
that made the trial page about 111,000 px wide); the module itself is the trial's artifact.
"""

from __future__ import annotations

import argparse
import copy
import socket
from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from evaluation.cache import sha256_text
from evaluation.errors import UserError
from search import annotate, optuna_adapter
from search.cmd_status import study_name
from search.promote import record_promoted
from search.storage import (
    display_url,
    is_reference,
    make_storage,
    open_study,
    read_storage_url,
    storage_note,
)

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


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `dashboard` subcommand."""
    p = sub.add_parser("dashboard", help="serve optuna-dashboard for a study on 127.0.0.1")
    p.add_argument("--study", default="default", help="study name or study file")
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default: your studies/local/NAME.db, else the committed studies/NAME.db)",
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="serve the committed study (studies/campaign/NAME.db, else studies/NAME.db) even if you have a local one",
    )
    p.add_argument(
        "--port", type=int, default=None, help="port (default: 8080 when free, else any free port)"
    )
    p.set_defaults(func=main)


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
    return storage, what


def main(args: argparse.Namespace) -> int:
    """Serve the dashboard until Ctrl-C."""
    from optuna_dashboard import run_server

    name = study_name(args.study)
    url = read_storage_url(name, args.storage, reference=args.reference)
    open_study(name, url)  # fails with a clear message when the study does not exist
    storage, what = prepare(name, url)
    folder = annotate.artifact_dir(url, name)
    store = annotate.artifact_store(folder) if folder.is_dir() or not is_reference(url) else None
    port = args.port
    if port is None:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 8080))
            port = 8080
        except OSError:
            port = free_port()
    elif not 0 < port < 65536:
        raise UserError(f"--port must be in 1..65535, got {port}")
    modules = (
        f"modules from {annotate.display_path(folder)}" if store else "no module files (none were stored)"
    )
    print(
        f"optuna-dashboard for study {name}: storage {display_url(url)}{storage_note(name, url)}; {what}; "
        f"{modules}; at http://127.0.0.1:{port}/dashboard/studies/{optuna_adapter.study_id(storage, name)} "
        "(Ctrl-C stops it)",
        flush=True,
    )
    try:
        run_server(ReadableStorage(storage), host="127.0.0.1", port=port, artifact_store=store)
    except OSError as exc:
        raise UserError(f"cannot serve on 127.0.0.1:{port}: {exc}") from exc
    return 0
