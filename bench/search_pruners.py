"""Which pruner: the same small study run with each pruner, comparing the best value found and the time taken.

The study is Split-MNIST with all 5 contexts at 40 iterations each (5 pruning steps), the same seeded TPE
sampler and warm start for every pruner; each run has the same trial budget on a fresh temporary storage.
Usage: .venv/bin/python bench/search_pruners.py [--n-trials 16] [--pruners none median successive_halving
hyperband]   (needs real MNIST: $CL_DATA_DIR, else <repo>/data)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from optuna.trial import TrialState

from search.records import quiet_optuna
from search.storage import open_study
from search.studies import load_study_def
from search.workers import run_study

STUDY = """\
n_trials = {n_trials}
warm_start = ["ewc", "si"]
[sampler]
name = "tpe"
seed = 0
n_startup_trials = 6
[pruner]
name = "{pruner}"
n_startup_trials = 4
n_warmup_steps = 2
min_resource = 2
reduction_factor = 3
[[benchmark]]
experiment = "splitMNIST"
iters = 40
contexts = 5
train_subset = 2048
seeds = [1000]
"""


def main() -> None:
    """Run the comparison and print one JSON line per pruner."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-trials", type=int, default=16)
    p.add_argument("--pruners", nargs="+", default=["none", "median", "successive_halving", "hyperband"])
    args = p.parse_args()
    with quiet_optuna(), tempfile.TemporaryDirectory() as tmp:
        for pruner in args.pruners:
            path = Path(tmp) / f"prune_{pruner}.toml"
            path.write_text(STUDY.format(n_trials=args.n_trials, pruner=pruner))
            url = f"sqlite:///{Path(tmp) / f'{pruner}.db'}"
            t0 = time.perf_counter()
            run_study(load_study_def(path), url, device="cpu")
            seconds = time.perf_counter() - t0
            trials = open_study(path.stem, url).get_trials()
            complete = [t.value for t in trials if t.state == TrialState.COMPLETE]
            steps = sum(len(t.intermediate_values) for t in trials)
            print(
                json.dumps(
                    {
                        "pruner": pruner,
                        "trials": len(trials),
                        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
                        "contexts_trained": steps,
                        "best": round(max(complete), 4),
                        "seconds": round(seconds, 1),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
