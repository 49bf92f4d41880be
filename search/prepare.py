"""Preparing a study, once per command before its workers start: its scoring checked against the one its trials
were scored with, its definition recorded, its warm starts enqueued once however many processes start together.

The warm starts are enqueued under a guard held in the storage itself (`storage_guard`, a marker study), so that
processes on several machines sharing one PostgreSQL study meet there too.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection

from evaluation.errors import UserError
from search import data_check, interrupts
from search.annotate import annotate_study
from search.interrupts import signals_ignored
from search.storage import display_url, make_storage
from search.studies import StudyDef


def check_scoring(study_def: StudyDef, recorded: Any, where: str) -> None:
    """Refuse (UserError) a study file whose scoring differs from the one the study's trials were scored with:
    their values would no longer be comparable. Sampler, pruner, budget and workers may change."""
    now = json.loads(json.dumps(study_def.scoring))  # as the storage holds it (tuples become lists)
    if recorded is None or recorded == now:
        return
    what = next((key for key in now if recorded.get(key) != now[key]), "benchmarks")
    if what == "space":  # studies made before the version was recorded sampled version 2 or an earlier one
        raise UserError(
            f"study {study_def.name!r} in {where} sampled version {recorded.get('space', '2 or earlier')} of the "
            f"design space, and the code now has version {now['space']}: its trials' values would mix. Give the "
            "study a new name"
        )
    if (
        what == "benchmarks"
        and recorded.get("benchmarks")
        and {json.dumps(b, sort_keys=True) for b in recorded["benchmarks"]}
        == {json.dumps(b, sort_keys=True) for b in now["benchmarks"]}
    ):
        raise UserError(
            f"study {study_def.name!r} in {where} reported its benchmarks in another order than {study_def.path} "
            f"now gives: old and new reports would mix under the pruner. `python -m search reorder --study "
            f"{study_def.name} --from URL --to NEW_URL` copies the study with its trials' reports in the new order"
        )
    raise UserError(
        f"study {study_def.name!r} in {where} was scored with {what} = {json.dumps(recorded.get(what))}, but "
        f"{study_def.path} now says {json.dumps(now[what])}: the trials' values would mix. Restore the file, or "
        "give the changed study a new name"
    )


# A guard's marker study older than this (seconds) was left by a process that died holding it: it is removed.
GUARD_STALE_S = 120.0
GUARD_POLL_S = 0.1


def guard_name(study_name: str, what: str) -> str:
    """The marker study of `storage_guard` (a study file's name has no colon: never a study of its own)."""
    return f"{study_name}:{what}-guard"


@contextlib.contextmanager
def storage_guard(
    storage: BaseStorage, name: str, *, stale_s: float = GUARD_STALE_S, poll_s: float = GUARD_POLL_S
) -> Iterator[None]:
    """Hold a guard named `name` in the storage itself for a block: of the processes asking at once, on this
    machine or any other sharing the storage, one holds it at a time.

    The guard is a marker study: creating a study is an insert under the storage's unique constraint on study
    names (SQLite, PostgreSQL, MySQL alike), so exactly one process creates it; the others wait until it is
    deleted. A marker that stays longer than `stale_s` belonged to a process that died holding it, and is
    removed.
    """
    seen: tuple[int, float] | None = None  # (marker id, when this process first saw it)
    while True:
        try:
            marker = storage.create_new_study([StudyDirection.MAXIMIZE], name)
            break
        except optuna.exceptions.DuplicatedStudyError:
            try:
                held = storage.get_study_id_from_name(name)
            except KeyError:  # released meanwhile
                continue
            if seen is None or seen[0] != held:
                seen = (held, time.monotonic())
            elif time.monotonic() - seen[1] > stale_s:
                with contextlib.suppress(KeyError):
                    storage.delete_study(held)
                seen = None
                continue
            time.sleep(poll_s)
    try:
        yield
    finally:
        with signals_ignored():
            storage.delete_study(marker)


def enqueue_warm_starts(study: optuna.Study, study_def: StudyDef, storage: BaseStorage) -> None:
    """Enqueue the study file's warm starts once, whatever the number of processes starting together.

    The check (the study's `warm_start` attribute) and the inserts happen under `storage_guard`, so two
    commands starting at the same instant on one new storage cannot both find none and both enqueue (seen: 2
    of 9 pairs ran a warm start twice, each spending a budget slot). The mark is set after the inserts: a
    process that dies between them leaves no mark, and the next one enqueues what is missing (`skip_if_exists`).
    """
    import space  # deferred: it imports torch, which a command that only reads studies does without

    with storage_guard(storage, guard_name(study.study_name, "warm-start")), interrupts.deferred():
        if "warm_start" in study.user_attrs:
            return  # another process enqueued them while this one waited
        for name in study_def.warm_start:
            params = space.trial_params(space.named(name), study_def.fixed)
            study.enqueue_trial(params, user_attrs={"warm_start": name}, skip_if_exists=True)
        study.set_user_attr("warm_start", list(study_def.warm_start))


def existing_study(storage: BaseStorage, name: str) -> optuna.Study | None:
    """Study `name` of `storage`, or None when the storage holds none of that name (nothing is created)."""
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return optuna.load_study(study_name=name, storage=storage)


def prepare_study(study_def: StudyDef, storage_url: str, data: dict[str, Any] | None = None) -> optuna.Study:
    """Create or load the study; record its definition; enqueue the warm-start presets the first time only.

    An existing study is checked first, before anything is written to it: its scoring and, given this run's
    `data`, its data record must be this run's.
    """
    storage = make_storage(storage_url)
    where = display_url(storage_url)
    found = existing_study(storage, study_def.name)
    if found is not None:
        check_scoring(study_def, found.user_attrs.get("scoring"), where)
        if data is not None:
            data_check.check_same(found.user_attrs.get(data_check.STUDY_ATTR), data, study_def.name, where)
    study = optuna.create_study(
        study_name=study_def.name, storage=storage, direction="maximize", load_if_exists=True
    )
    attrs = study.user_attrs
    check_scoring(study_def, attrs.get("scoring"), where)
    if "scoring" not in attrs:
        study.set_user_attr("scoring", study_def.scoring)
    text = study_def.path.read_text(encoding="utf-8")
    if attrs.get("study_file") != text:
        study.set_user_attr("study_file", text)  # what the dashboard shows as the study's definition
        study.set_user_attr("benchmarks", list(study_def.labels))
    annotate_study(study, study_def.description, storage_url)
    if study_def.warm_start and "warm_start" not in attrs:
        enqueue_warm_starts(study, study_def, storage)
    return study
