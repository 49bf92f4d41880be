"""Progress on stdout while a study runs: a line per finished trial and, on a terminal, a live line per step."""

from __future__ import annotations

import sys
import time
from datetime import datetime

import optuna
from clharness.protocol import PROTOCOLS
from optuna.trial import FrozenTrial

from search.records import counts_toward_budget, rank_trials
from search.studies import StudyDef


def format_scores(trial: FrozenTrial) -> str:
    """`permMNIST 0.9012, splitMNIST 0.9876`: a trial's proxy accuracy per benchmark."""
    scores = trial.user_attrs.get("scores") or {}
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, int | float))


def format_best(trials: list[FrozenTrial]) -> str:
    """`0.8520 (#4: permMNIST 0.9012, splitMNIST 0.9876)`, or `-` with no complete trial."""
    best = next(iter(rank_trials(trials)), None)
    if best is None or best.value is None:
        return "-"
    scores = format_scores(best)
    return f"{best.value:.4f} (#{best.number}{': ' + scores if scores else ''})"


def format_duration(seconds: float) -> str:
    """`45 s`, `12 min`, `3.4 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def seconds_per_trial(trials: list[FrozenTrial], last: int = 20) -> float | None:
    """Mean wall time of the last `last` counted trials (from their start and end times), None without any."""
    spans = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if counts_toward_budget(t) and t.datetime_start is not None and t.datetime_complete is not None
    ]
    spans = spans[-last:]
    return sum(spans) / len(spans) if spans else None


def step_positions(study_def: StudyDef) -> list[str]:
    """What step n (1-based, index n - 1) of a trial has reached: `permMNIST seed 1001, context 4/10`."""
    out: list[str] = []
    for b in study_def.benchmarks:
        n = b.contexts if b.contexts is not None else PROTOCOLS[b.experiment].contexts
        for seed in b.seeds:
            out.extend(f"{b.label} seed {seed}, context {k}/{n}" for k in range(1, n + 1))
    return out


def live_progress_enabled() -> bool:
    """The updating per-context line is drawn on a terminal only (a log gets the per-trial lines)."""
    return sys.stdout.isatty()


class Progress:
    """Progress on stdout: one line per finished trial (done / budget, the best so far with its per-benchmark
    scores, trials per hour since this command began, the ETA of the budget) and, on a terminal, one updating
    line with the benchmark, seed and context the running trial has reached.

    `started_at`: epoch seconds when the command began (for the rate); `worker_index` of `n_workers` tags the
    lines when there are several."""

    def __init__(
        self,
        study_def: StudyDef,
        *,
        n_trials: int,
        started_at: float,
        worker_index: int = 0,
        n_workers: int = 1,
    ) -> None:
        self.n_trials = n_trials
        self.started_at = started_at
        self.tag = f"[worker {worker_index}] " if n_workers > 1 else ""
        self.live = live_progress_enabled()
        self.positions = step_positions(study_def)
        self._shown = False
        self._t0 = time.monotonic()

    def _clear(self) -> None:
        if self._shown:
            sys.stdout.write("\r\x1b[K")
            self._shown = False

    def say(self, text: str) -> None:
        self._clear()
        print(f"{self.tag}{text}", flush=True)

    def trial_started(self) -> None:
        self._t0 = time.monotonic()

    def step(self, number: int, step: int) -> None:
        """The trial reported step `step`: redraw the live line."""
        if not self.live:
            return
        where = self.positions[step - 1] if 0 < step <= len(self.positions) else f"step {step}"
        total = len(self.positions)
        text = f"{self.tag}trial {number}: {where} (step {step}/{total}), {time.monotonic() - self._t0:.0f} s"
        sys.stdout.write(f"\r{text}\x1b[K")
        sys.stdout.flush()
        self._shown = True

    def trial_done(self, study: optuna.Study, trial: FrozenTrial, seconds: float) -> None:
        trials = study.get_trials(deepcopy=False)
        counted = [t for t in trials if counts_toward_budget(t)]
        since = datetime.fromtimestamp(self.started_at)
        recent = [t for t in counted if t.datetime_complete is not None and t.datetime_complete >= since]
        hours = max(time.time() - self.started_at, 1e-9) / 3600
        rate = len(recent) / hours
        left = max(self.n_trials - len(counted), 0)
        eta = f", ETA {format_duration(left / rate * 3600)}" if rate > 0 and left else ""
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
        note = f" ({trial.user_attrs['warm_start']})" if "warm_start" in trial.user_attrs else ""
        reason = trial.user_attrs.get("fail_reason")
        self.say(
            f"trial {trial.number}{note} {trial.state.name.lower()} {value} in {seconds:.0f} s"
            f"{' - ' + reason if reason else ''} | {len(counted)}/{self.n_trials} done, "
            f"best {format_best(trials)}, {rate:.0f} trials/h{eta}"
        )
