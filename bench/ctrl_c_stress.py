"""Ctrl-C at random moments into a two-worker run of the stand-in objective: every run must exit with 130 and
leave no trial RUNNING (docs/search.md, "Ctrl-C").

    python bench/ctrl_c_stress.py --runs 20

Each run: a fresh SQLite study, 10 ms steps (so that a signal often lands in a storage call), SIGINT to the
whole process group 0-2 s after the first step is reported, as a terminal's Ctrl-C does.
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
from pathlib import Path

from optuna.trial import TrialState


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the stand-in objective
    from search_fakes import (
        fake_env,
        sqlite_url,
        start_fake_run,
        trials_of,
        wait_for_running_trial,
        write_study,
    )

    rng = random.Random(args.seed)
    bad = 0
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            url = sqlite_url(folder)
            proc = start_fake_run(write_study(folder, n_trials=6), url, 2, fake_env(step_s=0.01, steps=400))
            wait_for_running_trial("fake", url, proc)
            time.sleep(rng.uniform(0, 2))
            t0 = time.time()
            os.killpg(proc.pid, signal.SIGINT)
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
            running = [t.number for t in trials_of("fake", url) if t.state == TrialState.RUNNING]
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
