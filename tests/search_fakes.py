"""A stand-in objective for tests of the search machinery (storage, workers, retries) without the harness.

It behaves like the proxy objective: suggests one parameter, reports after every "context", asks the pruner
and stores the same user attributes. Its pace comes from the environment so a test can slow it down:
FAKE_STEP_S (seconds per context, default 0.05) and FAKE_STEPS (contexts per trial, default 3); FAKE_FAIL
makes every design fail. FAKE_BARRIER (a folder) and FAKE_WORKERS (a count) make each worker process's first
trial wait until that many processes have started a trial, so a test can require that every worker worked
(without it, a fast worker may take the whole budget before a slow one has imported torch).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import optuna

from search.objective import DESIGN, DesignFailed
from search.studies import StudyDef

BARRIER_TIMEOUT_S = 180.0
_arrived = False


def _meet_the_other_workers() -> None:
    """Sign in at FAKE_BARRIER and wait until FAKE_WORKERS processes have (once per process)."""
    global _arrived
    barrier = os.environ.get("FAKE_BARRIER")
    if not barrier or _arrived:
        return
    folder, expected = Path(barrier), int(os.environ.get("FAKE_WORKERS", "2"))
    (folder / str(os.getpid())).touch()
    _arrived = True
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(list(folder.iterdir())) < expected:
        if time.monotonic() > deadline:
            arrived = len(list(folder.iterdir()))
            raise RuntimeError(f"only {arrived} of {expected} workers started a trial")
        time.sleep(0.05)


def make_fake_objective(
    study_def: StudyDef, *, data_dir: str | None = None, device: str = "auto"
) -> Callable[[optuna.Trial], float]:
    """Objective factory with the signature of `search.objective.make_objective`."""
    step_s = float(os.environ.get("FAKE_STEP_S", "0.05"))
    steps = int(os.environ.get("FAKE_STEPS", "3"))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        if os.environ.get("FAKE_FAIL"):  # every design fails, as a systematic bug would make them
            trial.set_user_attr("fail_reason", "broken on purpose")
            trial.set_user_attr("fail_kind", DESIGN)
            raise DesignFailed("broken on purpose")
        _meet_the_other_workers()
        trial.set_user_attr("worker_pid", os.getpid())
        trial.set_user_attr("module_source", f"X = {x!r}\n")
        value = 0.0
        for step in range(1, steps + 1):
            time.sleep(step_s)
            value = 1.0 - (x - 0.3) ** 2  # best at x = 0.3
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}")
        trial.set_user_attr("scores", {b: value for b in study_def.experiments})
        trial.set_user_attr("per_context", {b: [value] * steps for b in study_def.experiments})
        trial.set_user_attr("wall_time_s", step_s * steps)
        return value

    return objective
