"""The proxy objective: one trial = one generated hook module scored on the study's benchmarks.

The design sampled from the trial is turned into module source by `space.generate_source`; that exact source
is written to a temporary file, run by the harness on every benchmark of the study (validation split, proxy
seeds) and stored on the trial, so what was scored is what `search export` writes. The value is the mean over
benchmarks of the proxy average accuracy. After every context the trial reports the objective so far, with
contexts not yet trained counted as 0 (step = contexts so far, counted across benchmarks), and asks the pruner.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from statistics import fmean
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.studies import StudyDef

Objective = Callable[[optuna.Trial], float]

# fail_kind user attribute: "design" = the design itself failed (it used its budget slot; not retried);
# "crash" = the worker was interrupted or its environment failed (re-queued; the slot stays open).
DESIGN = "design"
CRASH = "crash"


class DesignFailed(Exception):
    """The design's module failed in the harness (bad hook output, generator refusal): the trial fails."""


def counts_toward_budget(trial: FrozenTrial) -> bool:
    """Whether a trial used one of the study's `n_trials`: complete, pruned, or failed by its own design."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get("fail_kind") == DESIGN


def make_objective(study_def: StudyDef, *, data_dir: str | None = None, device: str = "auto") -> Objective:
    """The objective of `study_def`'s trials (the harness caches data per process: reuse it for many)."""
    from clharness.errors import DataError, DivergenceError, HookError
    from clharness.protocol import PROTOCOLS
    from clharness.runner import RunConfig, run

    import space

    n_bench = len(study_def.benchmarks)
    total_steps = sum(
        (b.contexts or PROTOCOLS[b.experiment].contexts) * len(b.seeds) for b in study_def.benchmarks
    )

    def objective(trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        try:
            design = space.suggest(trial, fixed=study_def.fixed)
            source = space.generate_source(
                design, provenance={"study": study_def.name, "trial": trial.number}
            )
        except ValueError as exc:  # space.DesignError: the sampled combination cannot be generated
            _fail(trial, f"design rejected: {exc}")
            raise DesignFailed(str(exc)) from exc
        trial.set_user_attr("design", design.to_dict())
        trial.set_user_attr("module_source", source)
        scores: dict[str, float] = {}
        per_context: dict[str, list[float]] = {}
        step = 0
        finished = 0.0  # the objective's share already earned by finished runs (benchmark x seed)
        try:
            with tempfile.TemporaryDirectory(prefix="cl-trial-") as tmp:
                path = Path(tmp) / "custom_regularization.py"
                path.write_text(source, encoding="utf-8")
                for bench in study_def.benchmarks:
                    n_contexts = bench.contexts or PROTOCOLS[bench.experiment].contexts
                    weight = 1.0 / (n_bench * len(bench.seeds))  # of one run in the objective
                    seed_scores: list[float] = []
                    seed_accs: list[list[float]] = []
                    for seed in bench.seeds:

                        def on_context_end(
                            k: int, accs: list[float], exp: str = bench.experiment, w: float = weight,
                            n: int = n_contexts, base: float = finished,
                        ) -> None:  # fmt: skip
                            nonlocal step
                            step += 1
                            # The objective so far with every context not yet trained counted as 0: it equals
                            # the objective at the last step and rises as contexts are learned, the shape the
                            # median pruner expects (it compares a trial's best value over steps).
                            trial.report(base + w * sum(accs) / n, step)
                            if step < total_steps and trial.should_prune():  # the last step is paid for
                                raise optuna.TrialPruned(f"pruned after context {k} of {exp} (step {step})")

                        cfg = RunConfig(
                            experiment=bench.experiment,
                            seed=seed,
                            iters=bench.iters,
                            contexts=bench.contexts,
                            val_fraction=bench.val_fraction,
                            eval_split="val",
                            device=device,
                            data_dir=data_dir,
                            train_subset=bench.train_subset,
                        )
                        try:
                            result = run(path, cfg, progress=False, on_context_end=on_context_end)
                        except DivergenceError as exc:
                            # A diverged network has no meaningful accuracy on any context: report 0 so the
                            # sampler learns to avoid the region, then prune.
                            trial.report(0.0, step + 1)
                            _fail(trial, f"{bench.experiment} seed {seed}: {exc}", kind=None)
                            raise optuna.TrialPruned(str(exc)) from exc
                        except HookError as exc:
                            _fail(trial, f"{bench.experiment} seed {seed}: {exc}")
                            raise DesignFailed(str(exc)) from exc
                        except (optuna.TrialPruned, DataError, MemoryError):
                            raise  # pruned, or the environment's fault: not the design's
                        except Exception as exc:  # the module itself raised (its code, not its outputs)
                            where = _last_frame(exc)
                            _fail(
                                trial, f"{bench.experiment} seed {seed}: {type(exc).__name__}: {exc}{where}"
                            )
                            raise DesignFailed(str(exc)) from exc
                        seed_scores.append(float(result["average_accuracy"]))
                        seed_accs.append([float(a) for a in result["per_context_accuracy"]])
                        finished += weight * seed_scores[-1]
                    scores[bench.experiment] = fmean(seed_scores)
                    per_context[bench.experiment] = [fmean(col) for col in zip(*seed_accs, strict=True)]
        finally:
            # partial scores are kept on pruned and failed trials too
            trial.set_user_attr("scores", scores)
            trial.set_user_attr("per_context", per_context)
            trial.set_user_attr("wall_time_s", round(time.perf_counter() - t0, 3))
        return fmean(scores.values())

    return objective


def _last_frame(exc: BaseException) -> str:
    """' (file:line)' of the innermost frame of the exception, to find the failing line of a module."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""


def _fail(trial: optuna.Trial, reason: str, kind: str | None = DESIGN) -> None:
    trial.set_user_attr("fail_reason", reason)
    if kind is not None:
        trial.set_user_attr("fail_kind", kind)


def describe(trial: FrozenTrial) -> dict[str, Any]:
    """The attributes `status` and reports show for a trial."""
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "scores": attrs.get("scores", {}),
        "wall_time_s": attrs.get("wall_time_s"),
        "warm_start": attrs.get("warm_start"),
        "fail_reason": attrs.get("fail_reason"),
    }
