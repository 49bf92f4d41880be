"""A stand-in objective for tests of the search machinery (storage, workers, retries) without the harness,
and the helpers those tests share (a study file for it, running `python -m search run` with it).

It behaves like the proxy objective: suggests one parameter, reports after every "context", asks the pruner
and stores the same user attributes. Its pace comes from the environment so a test can slow it down:
FAKE_STEP_S (seconds per context, default 0.05) and FAKE_STEPS (contexts per trial, default 3); FAKE_FAIL
makes every design fail. FAKE_BARRIER (a folder) and FAKE_WORKERS (a count) make each worker process's first
trial wait until that many processes have started a trial, so a test can require that every worker worked
(without it, a fast worker may take the whole budget before a slow one has imported torch).
FAKE_DIE ("raise" or "kill") makes the first process that starts a trial die in it (FAKE_DIE_MARK, a file path,
records which one did): "raise" raises RuntimeError("fake worker died"), "kill" sends itself SIGKILL.

`fake_probe` stands in for the data probe (`search.data_check.probe`): FAKE_DATA="source:fingerprint" (default
"torchvision:fake") names the data the run would be scored on, without loading any.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from evaluation.cache import sha256_text
from evaluation.errors import UserError
from search.data_check import make_record
from search.objective import DesignFailed
from search.records import DESIGN
from search.storage import open_study
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


def fake_probe(experiments: object, data_dir: str | None) -> dict[str, object]:
    """A data record from FAKE_DATA, with the signature of `search.data_check.probe`."""
    source, _, fingerprint = os.environ.get("FAKE_DATA", "torchvision:fake").partition(":")
    return make_record({"MNIST": {"source": source, "sha256": fingerprint}}, str(data_dir or "fake-root"))


def _maybe_die() -> None:
    """FAKE_DIE: the first process to get here dies (the mark file makes it the only one)."""
    how, mark = os.environ.get("FAKE_DIE"), os.environ.get("FAKE_DIE_MARK")
    if not how or not mark:
        return
    try:
        fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError("fake worker died")


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
        _maybe_die()
        made = generated(trial.study.study_name, trial.number, x)
        trial.set_user_attr("design", made["design"])  # the design and the module's sha256, as the objective
        trial.set_user_attr("module_sha256", sha256_text(made["module_source"]))  # stores them
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


# ------------------------------------------------------------------------------------------------ test helpers


def generated(study: str, number: int, x: float = 0.0, preset: str = "ewc") -> dict[str, Any]:
    """The user attributes `design` and `module_source` the objective stored (before it kept only the module's
    sha256) for trial `number` of `study`: the preset at strength scale 1 + x, and the module the generator
    writes for it (what `trial_module` checks)."""
    import space

    design = space.PRESETS[preset].replace(reg_strength_scale=1.0 + x)
    source = space.generate_source(design, {"study": study, "trial": number})
    return {"design": design.to_dict(), "module_source": source}


TESTS = Path(__file__).resolve().parent
FAKE = "search_fakes:make_fake_objective"
FAKE_PROBE = "search_fakes:fake_probe"


def write_study(tmp_path: Path, name: str = "fake", n_trials: int = 6, extra: str = "") -> Path:
    """A study file for the fake objective: random sampler, no pruner, 1 s heartbeat, 3 s grace period."""
    path = tmp_path / f"{name}.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            n_trials = {n_trials}
            {extra}
            [sampler]
            name = "random"
            seed = 0
            [pruner]
            name = "none"
            [workers]
            heartbeat_interval = 1
            grace_period = 3
            [[benchmark]]
            experiment = "splitMNIST"
            iters = 10
            contexts = 2
            """
        )
    )
    return path


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def trials_of(name: str, url: str) -> list[FrozenTrial]:
    return open_study(name, url).get_trials(deepcopy=False)


def fake_env(step_s: float, steps: int = 3, **extra: str) -> dict[str, str]:
    """The environment of a subprocess that runs the fake objective (importable from tests/)."""
    env = dict(os.environ, FAKE_STEP_S=str(step_s), FAKE_STEPS=str(steps), **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


def run_argv(study: Path, url: str, workers: int = 1, *more: str) -> list[str]:
    """`python -m search run` on `study` with the fake objective and the fake data probe."""
    return [
        sys.executable, "-m", "search", "run", "--study", str(study), "--storage", url,
        "--workers", str(workers), "--objective", FAKE, "--data-probe", FAKE_PROBE, *more,
    ]  # fmt: skip


def start_fake_run(study: Path, url: str, workers: int, env: dict[str, str]) -> subprocess.Popen[str]:
    """`python -m search run` with the fake objective, in its own process group like a terminal job."""
    return subprocess.Popen(
        run_argv(study, url, workers),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_running_trial(
    name: str, url: str, proc: subprocess.Popen[str], timeout: float = 120
) -> list[FrozenTrial]:
    """Poll until some trial is RUNNING and has reported at least one step (the machine may be busy)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {proc.communicate()[0]}")
        try:
            running = [
                t for t in trials_of(name, url) if t.state == TrialState.RUNNING and t.intermediate_values
            ]
        except UserError:
            running = []
        if running:
            return running
        time.sleep(0.2)
    raise AssertionError("no trial started running in time")
