"""The proxy objective: one trial = one generated hook module scored on the study's benchmarks.

The design sampled from the trial is turned into module source by `space.generate_source`; that exact source
is written to a temporary file and run by the harness on every benchmark of the study (validation split, proxy
seeds). The trial keeps its design and the module's sha256 (`module_sha256`), and the module itself as its
dashboard artifact: `search export` generates the module again from the design and checks the sha256, so what
was scored is what it writes.

Scale: a benchmark's score is the share of the gap between no regularization (`none`) and joint training that
the design closes, both measured once per study at the same proxy settings (the study's `anchors`): 0 is
`none`, 1 is joint. The objective is the weighted mean of those shares, with the study file's benchmark
weights (docs/search.md says how they were measured). A trial reports after every context, benchmarks in the
study file's order, with contexts not yet trained counted as 0: the value rises through the trial and equals
the objective at the last step, the shape the percentile and median pruners compare at equal steps. The anchors
are measured on the data the trials train on (the offline MNIST subset's: `measure_offline_anchors`).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from statistics import fmean
from typing import Any

import optuna
from clharness.errors import DataError, DivergenceError, HookError
from clharness.protocol import PROTOCOLS

from evaluation.cache import (
    CachedRun,
    check_data,
    sha256_text,
    share_work,
    store_module,
    validation_configs,
)
from evaluation.claims import exclusive
from evaluation.fidelity import gap_share
from search import data_check, interrupts
from search.annotate import annotate_trial, note_scores, study_artifact_dir
from search.records import DESIGN
from search.studies import BenchmarkProxy, StudyDef

# `space` and `clharness.runner` import torch: they are imported where a trial or an anchor runs, so that a
# command that only reads studies (status, export) starts without it.

Objective = Callable[[optuna.Trial], float]

# The folder of the anchors' run cache, beside the studies' artifact folders.
ANCHOR_RUNS = "anchor-runs"


class DesignFailed(Exception):
    """The design's module failed in the harness (bad hook output, generator refusal): the trial fails."""


def chance_accuracy(experiment: str) -> float:
    """Accuracy of a guess among a context's classes."""
    protocol = PROTOCOLS[experiment]
    return 1.0 / (protocol.classes_per_context or protocol.n_classes)


def proxy_config(bench: BenchmarkProxy, seed: int, *, data_dir: str | None, device: str) -> Any:
    """The RunConfig of one proxy stream of a study benchmark (validation split)."""
    (cfg,) = validation_configs(
        bench.experiment,
        [seed],
        val_fraction=bench.val_fraction,
        device=device,
        data_dir=data_dir,
        iters=bench.iters,
        contexts=bench.contexts,
        train_subset=bench.train_subset,
        lr=bench.lr,
    )
    return cfg


def anchor_key(bench: BenchmarkProxy) -> str:
    """The study attribute that holds one benchmark's anchors; its proxy settings are part of the name."""
    settings = f"{bench.iters}-{bench.contexts}-{bench.train_subset}-{bench.val_fraction}-{'.'.join(map(str, bench.seeds))}"
    if bench.lr is not None:  # (studies made before the field keep their attribute names)
        settings += f"-lr{bench.lr}"
    return f"anchors:{bench.experiment}:{settings}"


def none_source() -> str:
    """The module of the `none` anchor (no regularization), as the generator writes the preset."""
    import space

    return space.generate_source(space.PRESETS["none"], {"preset": "none"})


def anchor_cache(study: optuna.Study) -> Path | None:
    """The run cache of the anchors: beside the study's artifact folder (`studies/campaign/anchor-runs/` for
    `studies/campaign/NAME.db`), shared by every study there; None when the study records no artifact folder."""
    folder = study_artifact_dir(study)
    return None if folder is None else folder.parent / ANCHOR_RUNS


def live_progress() -> bool:
    """Whether the harness draws its per-iteration bar (a terminal); a log gets one line per run."""
    return sys.stderr.isatty()


class AnchorProgress:
    """One line when each anchor run starts and one when it ends (`anchor 2/6: joint on permMNIST_lr seed
    1001: 0.9512 in 41 s`), so that the minutes before a new study's first trial are never silent."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.log, self.done = total, log, 0

    def run(self, label: str, bench: str, seed: int, measure: Callable[[], float]) -> float:
        self.done += 1
        what = f"anchor {self.done}/{self.total}: {label} on {bench} seed {seed}"
        self.log(f"{what} ...")
        t0 = time.perf_counter()
        value = measure()
        self.log(f"{what}: {value:.4f} in {time.perf_counter() - t0:.0f} s")
        return value


def _say_anchors(benches: Sequence[BenchmarkProxy], log: Callable[[str], None], where: str) -> int:
    n = 2 * sum(len(b.seeds) for b in benches)
    log(
        f"anchors: `none` and joint training at the proxy settings of {', '.join(b.label for b in benches)} "
        f"({n} runs {where}), the 0 and 1 of the objective's scale; measured once, before the first trial"
    )
    return n


def measure_anchors(
    benches: Sequence[BenchmarkProxy],
    cache_dir: Path,
    *,
    data_dir: str | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """`none` and joint training at each benchmark's proxy settings: mean average accuracy over its seeds, by
    the benchmark's `anchor_key`.

    The runs go through the run cache in `cache_dir`, claimed one at a time: two workers starting together split
    them instead of both running all, and a later study with the same proxy settings reads them back. Each run
    this process makes is said when it starts and ends (`AnchorProgress`).
    """
    none_path, none_sha = store_module(cache_dir / "modules", "none", none_source())
    runs_dir = cache_dir / "runs"
    label_of: dict[int, tuple[str, int]] = {}
    runs: dict[str, list[CachedRun]] = {}
    for bench in benches:
        group = []
        for seed in bench.seeds:
            for label, path, sha in (("none", none_path, none_sha), ("joint", None, "joint")):
                run = CachedRun(label, path, sha, proxy_config(bench, seed, data_dir=data_dir, device=device))
                label_of[id(run)] = (bench.label, seed)
                group.append(run)
        runs[anchor_key(bench)] = group
    every = [run for group in runs.values() for run in group]
    progress = AnchorProgress(_say_anchors(benches, log, f"cached in {cache_dir}"), log)
    live = live_progress()

    def hooks_run(path: str, cfg: Any, **kw: Any) -> dict[str, Any]:
        from clharness.runner import run

        check_data(cfg.experiment, cfg.data_dir)  # what the cache checks when it picks the runner itself
        return run(path, cfg, **{**kw, "progress": live})

    def joint_run(cfg: Any, **kw: Any) -> dict[str, Any]:
        from clharness.runner import run_joint

        check_data(cfg.experiment, cfg.data_dir)
        return run_joint(cfg, **{**kw, "progress": live})

    with closing(share_work(every, lambda r: r.record(runs_dir), log=log)) as work:  # closed: claims released
        for run in work:
            bench_label, seed = label_of[id(run)]
            progress.run(
                run.label,
                bench_label,
                seed,
                functools.partial(run.execute, runs_dir, run_fn=hooks_run, joint_fn=joint_run),
            )
    if progress.done < progress.total:
        log(f"anchors: {progress.total - progress.done} of {progress.total} runs read from the cache")
    return {
        key: {
            label: fmean(r.execute(runs_dir) for r in group if r.label == label)
            for label in ("none", "joint")
        }
        for key, group in runs.items()
    }


def _accuracy(fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> float:
    """The average accuracy of the harness run `fn(*args, **kwargs)`."""
    return float(fn(*args, **kwargs)["average_accuracy"])


def measure_offline_anchors(
    benches: Sequence[BenchmarkProxy],
    *,
    data_dir: str | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """The anchors of a study on the offline MNIST subset, measured on those same images.

    The run cache files benchmark runs only (it refuses the offline subset, and its keys do not name the data),
    so these runs are made here and kept only on the study (`study_anchors`)."""
    from clharness.runner import run, run_joint

    progress = AnchorProgress(_say_anchors(benches, log, "on the offline MNIST subset"), log)
    live = live_progress()
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cl-anchor-") as tmp:
        none_path = Path(tmp) / "none.py"
        none_path.write_text(none_source(), encoding="utf-8")
        for bench in benches:
            values: dict[str, list[float]] = {"none": [], "joint": []}
            for seed in bench.seeds:
                cfg = proxy_config(bench, seed, data_dir=data_dir, device=device)
                values["none"].append(
                    progress.run(
                        "none",
                        bench.label,
                        seed,
                        functools.partial(_accuracy, run, none_path, cfg, progress=live),
                    )
                )
                values["joint"].append(
                    progress.run(
                        "joint",
                        bench.label,
                        seed,
                        functools.partial(_accuracy, run_joint, cfg, progress=live),
                    )
                )
            out[anchor_key(bench)] = {label: fmean(v) for label, v in values.items()}
    return out


def study_anchors(
    study: optuna.Study, study_def: StudyDef, *, data_dir: str | None = None, device: str = "auto"
) -> dict[str, dict[str, float]]:
    """Every benchmark's anchors, measured once (`measure_anchors`) and kept in the study's user attributes.

    On the offline MNIST subset they are measured on it (`measure_offline_anchors`), by one worker at a time
    (a claim beside the study's artifact folder): the others wait and read them from the study."""
    missing = [b for b in study_def.benchmarks if anchor_key(b) not in study.user_attrs]
    if missing and data_check.is_offline(data_check.probe(study_def.experiments, data_dir)):
        folder = study_artifact_dir(study)
        with (
            contextlib.nullcontext()
            if folder is None
            else exclusive(folder.with_suffix(".anchors"), poll_s=2.0)
        ):
            missing = [b for b in study_def.benchmarks if anchor_key(b) not in study.user_attrs]
            if missing:
                measured = measure_offline_anchors(missing, data_dir=data_dir, device=device)
                for key, values in measured.items():
                    study.set_user_attr(key, values)
    elif missing:
        with contextlib.ExitStack() as stack:
            cache_dir = anchor_cache(study) or Path(  # nowhere to share them: this process's own runs
                stack.enter_context(tempfile.TemporaryDirectory(prefix="cl-anchor-"))
            )
            measured = measure_anchors(missing, cache_dir, data_dir=data_dir, device=device)
        # Two workers starting together both write them: the same cached runs, the same values.
        for key, values in measured.items():
            study.set_user_attr(key, values)
    attrs = study.user_attrs
    return {b.label: dict(attrs[anchor_key(b)]) for b in study_def.benchmarks}


def make_objective(study_def: StudyDef, *, data_dir: str | None = None, device: str = "auto") -> Objective:
    """The objective of `study_def`'s trials (the harness caches data per process: reuse it for many)."""
    from clharness.runner import run

    import space

    total_weight = sum(b.weight for b in study_def.benchmarks)
    total_steps = study_def.n_steps
    anchors: dict[str, dict[str, float]] = {}

    def objective(trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        if not anchors:
            anchors.update(study_anchors(trial.study, study_def, data_dir=data_dir, device=device))
        try:
            design = space.suggest(trial, fixed=study_def.fixed, scale_center=study_def.scale_center)
            source = space.generate_source(
                design, provenance={"study": study_def.name, "trial": trial.number}
            )
        except ValueError as exc:  # space.DesignError: the sampled combination cannot be generated
            _fail(trial, f"design rejected: {exc}")
            raise DesignFailed(str(exc)) from exc
        description = space.describe(design)
        trial.set_user_attr("design", design.to_dict())
        trial.set_user_attr("description", description)
        # The module's sha256, not its text: `search.export.trial_module` generates it again from the design and
        # checks it; its text is the trial's artifact (a long attribute made the dashboard's trial page unreadable).
        trial.set_user_attr("module_sha256", sha256_text(source))
        # For optuna-dashboard: the description as the trial's note, the module as a file to open or download.
        annotate_trial(trial, description=description, source=source)
        scores: dict[str, float] = {}
        per_context: dict[str, list[float]] = {}
        step = 0
        finished = 0.0  # the objective's share already earned by finished runs (benchmark x seed)
        try:
            with tempfile.TemporaryDirectory(prefix="cl-trial-") as tmp:
                path = Path(tmp) / "custom_regularization.py"
                path.write_text(source, encoding="utf-8")
                for bench in study_def.benchmarks:
                    anchor = anchors[bench.label]
                    n_contexts = bench.contexts or PROTOCOLS[bench.experiment].contexts
                    weight = bench.weight / (total_weight * len(bench.seeds))  # of one run in the objective
                    seed_scores: list[float] = []
                    seed_accs: list[list[float]] = []
                    for seed in bench.seeds:

                        def on_context_end(
                            k: int, accs: list[float], exp: str = bench.label, w: float = weight,
                            n: int = n_contexts, base: float = finished, a: Mapping[str, float] = anchor,
                        ) -> None:  # fmt: skip
                            nonlocal step
                            interrupts.raise_if_interrupted()  # a Ctrl-C that was swallowed stops the trial here
                            step += 1
                            # Contexts not yet trained count as accuracy 0: the value rises through the run.
                            trial.report(base + w * gap_share(sum(accs) / n, a), step)
                            if step < total_steps and trial.should_prune():  # the last step is paid for
                                raise optuna.TrialPruned(f"pruned after context {k} of {exp} (step {step})")

                        cfg = proxy_config(bench, seed, data_dir=data_dir, device=device)
                        try:
                            result = run(path, cfg, progress=False, on_context_end=on_context_end)
                        except DivergenceError as exc:
                            # A diverged network has no meaningful accuracy on any context: report the value
                            # of a run at chance level so that the sampler avoids the region, then prune.
                            chance = gap_share(chance_accuracy(bench.experiment), anchor)
                            trial.report(finished + weight * chance, step + 1)
                            _fail(trial, f"{bench.label} seed {seed}: {exc}", kind=None)
                            raise optuna.TrialPruned(str(exc)) from exc
                        except HookError as exc:
                            _fail(trial, f"{bench.label} seed {seed}: {exc}")
                            raise DesignFailed(str(exc)) from exc
                        except (optuna.TrialPruned, DataError, MemoryError):
                            raise  # pruned, or the environment's fault: not the design's
                        except Exception as exc:  # the module itself raised (its code, not its outputs)
                            where = _last_frame(exc)
                            _fail(trial, f"{bench.label} seed {seed}: {type(exc).__name__}: {exc}{where}")
                            raise DesignFailed(str(exc)) from exc
                        seed_scores.append(float(result["average_accuracy"]))
                        seed_accs.append([float(a) for a in result["per_context_accuracy"]])
                        finished += weight * gap_share(seed_scores[-1], anchor)
                    scores[bench.label] = fmean(seed_scores)
                    per_context[bench.label] = [fmean(col) for col in zip(*seed_accs, strict=True)]
                    # One attribute per benchmark, so that the dashboard can sort and plot them.
                    trial.set_user_attr(f"proxy_{bench.label}", scores[bench.label])
                    trial.set_user_attr(f"gap_{bench.label}", gap_share(scores[bench.label], anchor))
        finally:
            # partial scores are kept on pruned and failed trials too
            trial.set_user_attr("scores", scores)
            trial.set_user_attr("per_context", per_context)
            trial.set_user_attr("wall_time_s", round(time.perf_counter() - t0, 3))
            if scores:  # for optuna-dashboard: the scores in the trial's note too, beside its description
                gaps = {b: (s, gap_share(s, anchors[b])) for b, s in scores.items()}
                note_scores(trial, description, gaps)
        return objective_value(scores, study_def, anchors)

    return objective


def objective_value(
    scores: Mapping[str, float], study_def: StudyDef, anchors: Mapping[str, Mapping[str, float]]
) -> float:
    """The weighted mean over benchmarks of the gap share each average accuracy closes."""
    total = sum(b.weight for b in study_def.benchmarks)
    return sum(b.weight * gap_share(scores[b.label], anchors[b.label]) for b in study_def.benchmarks) / total


def _last_frame(exc: BaseException) -> str:
    """' (file:line)' of the innermost frame of the exception, to find the failing line of a module."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""


def _fail(trial: optuna.Trial, reason: str, kind: str | None = DESIGN) -> None:
    trial.set_user_attr("fail_reason", reason)
    if kind is not None:
        trial.set_user_attr("fail_kind", kind)
