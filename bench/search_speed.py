"""Speed of the search: wall time of one proxy trial per study, and trials per hour with 1 and 2 workers.

One proxy trial = the study's objective on its first warm-start preset (the published design), timed twice in
one process: the first includes loading the data, the second is what every later trial of a worker costs.
Throughput runs `--n-trials` trials of a study with 1 and then 2 worker processes on fresh temporary storages;
the first trials of a study are its warm-start presets, so both runs do the same work.
Usage: .venv/bin/python bench/search_speed.py [--studies tiny mnist] [--throughput-study mnist] [--n-trials 4]
(needs real MNIST: --data-dir, else $CL_DATA_DIR, else <repo>/data)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import optuna

import space
from search.data_check import cifar100_present
from search.objective import make_objective
from search.records import quiet_optuna
from search.studies import load_study_def
from search.workers import default_threads, run_study


def one_trial(study_name: str, data_dir: str | None, device: str) -> dict[str, float]:
    """Seconds of the first (data loading included) and second proxy trial of the study's first preset."""
    study_def = load_study_def(study_name)
    preset = study_def.warm_start[0] if study_def.warm_start else "ewc"
    objective = make_objective(study_def, data_dir=data_dir, device=device)
    study = optuna.create_study(direction="maximize")  # in memory: nothing is kept
    out: dict[str, float] = {}
    for label in ("first_s", "second_s"):
        study.enqueue_trial(space.trial_params(space.PRESETS[preset], study_def.fixed))
        trial = study.ask()
        t0 = time.perf_counter()
        value = objective(trial)
        out[label] = round(time.perf_counter() - t0, 1)
        study.tell(trial, value)
        out["value"] = round(value, 4)
    return out


def throughput(
    study_name: str, n_trials: int, workers: int, data_dir: str | None, device: str, threads: int | None
) -> float:
    """Trials per hour of `workers` processes running the study's first `n_trials` trials."""
    study_def = load_study_def(study_name)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        t0 = time.perf_counter()
        run_study(
            study_def,
            url,
            n_trials=n_trials,
            n_workers=workers,
            data_dir=data_dir,
            device=device,
            threads=threads,
        )
        return round(n_trials / ((time.perf_counter() - t0) / 3600), 1)


def main() -> None:
    """Run the measurements and print them as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", nargs="+", default=["tiny", "mnist", "default"])
    p.add_argument("--throughput-study", default="mnist")
    p.add_argument("--n-trials", type=int, default=4, help="trials per throughput run (default 4; 0 skips)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: as `run`)")
    args = p.parse_args()
    report: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start",
        "device": args.device,
    }
    import torch

    torch.set_num_threads(args.threads or default_threads(1))
    report["threads_per_worker"] = {w: args.threads or default_threads(w) for w in args.workers}
    with quiet_optuna():
        trials: dict[str, object] = {}
        for name in args.studies:
            study_def = load_study_def(name)
            if "CIFAR100" in study_def.experiments and not cifar100_present(args.data_dir):
                trials[name] = "skipped: CIFAR-100 is not in the data dir"
                continue
            trials[name] = one_trial(name, args.data_dir, args.device)
            print(name, trials[name], flush=True)
        report["one_trial"] = trials
        rates = {}
        for w in args.workers if args.n_trials > 0 else []:
            rates[f"{w}_workers_trials_per_hour"] = throughput(
                args.throughput_study, args.n_trials, w, args.data_dir, args.device, args.threads
            )
            print(w, "workers:", rates[f"{w}_workers_trials_per_hour"], "trials/h", flush=True)
        report["throughput"] = {"study": args.throughput_study, "n_trials": args.n_trials, **rates}
    report["load_average_at_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
