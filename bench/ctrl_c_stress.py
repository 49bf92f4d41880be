"""Ctrl-C at random moments into a two-worker run of a stand-in objective: every run must exit with 130 and
leave no trial RUNNING (docs/search.md, "Ctrl-C").

    python bench/ctrl_c_stress.py --runs 20

Each run: a fresh SQLite study, 10 ms steps (so that a signal often lands in a storage call), SIGINT to the
whole process group 0-2 s after the first step is reported, as a terminal's Ctrl-C does. The stand-in objective
and data probe are this script's own (`python -m search run --objective ctrl_c_stress:make_objective`, with this
folder on the run's PYTHONPATH): no harness, no data.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from evaluation.errors import UserError
from search.data_check import make_record
from search.storage import open_study

HERE = Path(__file__).resolve().parent
STEP_S = 0.01
STEPS = 400
# Random sampler, no pruner, a 1 s heartbeat and a 3 s grace period: the machinery without the harness.
STUDY = """\
n_trials = 6
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


def make_objective(
    study_def: object, *, data_dir: str | None = None, device: str = "auto"
) -> Callable[..., float]:
    """The stand-in objective (the signature of `search.objective.make_objective`): one parameter, `STEPS`
    reports `STEP_S` apart."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        value = 0.0
        for step in range(1, STEPS + 1):
            time.sleep(STEP_S)
            value = 1.0 - (x - 0.3) ** 2
            trial.report(value, step)
        return value

    return objective


def probe(experiments: object, data_dir: str | None) -> dict[str, Any]:
    """A data record without loading any data (the signature of `search.data_check.probe`)."""
    return make_record(
        {"MNIST": {"source": "torchvision", "sha256": "stand-in"}}, str(data_dir or "stand-in")
    )


def running_trials(url: str) -> list[int]:
    """The numbers of the study's RUNNING trials that have reported a step (none before the study exists)."""
    try:
        trials = open_study("stress", url).get_trials(deepcopy=False)
    except UserError:
        return []
    return [t.number for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]


def start_run(folder: Path) -> tuple[subprocess.Popen[str], str]:
    """`python -m search run` with two workers on the stand-in, in its own process group like a terminal job."""
    study = folder / "stress.toml"
    study.write_text(STUDY)
    url = f"sqlite:///{folder / 'study.db'}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    argv = [
        sys.executable, "-m", "search", "run", "--study", str(study), "--storage", url, "--workers", "2",
        "--objective", "ctrl_c_stress:make_objective", "--data-probe", "ctrl_c_stress:probe",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    return proc, url


def wait_for_a_step(proc: subprocess.Popen[str], url: str, timeout: float = 120) -> None:
    """Poll until some trial is RUNNING and has reported a step (the machine may be busy)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the run ended early ({proc.returncode}): {proc.communicate()[0]}")
        if running_trials(url):
            return
        time.sleep(0.2)
    raise SystemExit("no trial started running in time")


def main() -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    bad = 0
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            proc, url = start_run(Path(tmp))
            wait_for_a_step(proc, url)
            time.sleep(rng.uniform(0, 2))
            t0 = time.time()
            os.killpg(proc.pid, signal.SIGINT)
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
            running = [
                t.number
                for t in open_study("stress", url).get_trials(deepcopy=False)
                if t.state == TrialState.RUNNING
            ]
            ok = proc.returncode == 130 and not running
            bad += not ok
            print(
                f"run {i}: exit {proc.returncode} after {time.time() - t0:.1f} s, RUNNING trials {running}",
                flush=True,
            )
            if not ok:
                print(out[-3000:], flush=True)
    print(f"{args.runs - bad}/{args.runs} runs exited cleanly")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
