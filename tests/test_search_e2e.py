"""The search with its real parts (space, generator, harness) on real MNIST, at tiny proxies.

A tiny study runs end to end (warm-start presets first, pruning, per-trial attributes), its best trial is
exported and the exported module, run by the harness, reproduces the trial's score; a diverging module and a
module that breaks the hook contract end their trials with the reason recorded while the study goes on.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from clharness.runner import RunConfig, run
from optuna.trial import TrialState

import space
from evaluation.cache import sha256_text
from search.export import trial_module, trial_source
from search.records import counts_toward_budget
from search.storage import open_study
from search.studies import load_study_def
from search.workers import run_study

# 3 contexts so that a trial can be pruned before its last step; the fewest examples keep importance cheap.
TINY = """\
n_trials = {n_trials}
warm_start = {warm_start}
[fixed]
data_examples = 200
[sampler]
name = "tpe"
seed = 0
n_startup_trials = 4
[pruner]
name = "median"
n_startup_trials = 2
n_warmup_steps = 1
[workers]
heartbeat_interval = 5
grace_period = 20
[[benchmark]]
experiment = "splitMNIST"
iters = 10
contexts = 3
train_subset = 256
val_fraction = 0.1
seeds = [1000]
"""
PROXY = {
    "seed": 1000,
    "iters": 10,
    "contexts": 3,
    "train_subset": 256,
    "val_fraction": 0.1,
    "eval_split": "val",
}


def tiny_study(tmp_path: Path, name: str, n_trials: int, warm_start: list[str]) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY.format(n_trials=n_trials, warm_start=str(warm_start).replace("'", '"')))
    return path


def test_tiny_study_end_to_end(tmp_path: Path, mnist_root: Path) -> None:
    study_def = load_study_def(tiny_study(tmp_path, "tiny_e2e", 6, ["ewc", "si_calibrated"]))
    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    assert run_study(study_def, url, data_dir=str(mnist_root), device="cpu") == 0
    trials = sorted(open_study("tiny_e2e", url).get_trials(), key=lambda t: t.number)
    assert sum(map(counts_toward_budget, trials)) == 6

    # The warm-start presets ran first, with exactly their parameters.
    for t, name in zip(trials[:2], ["ewc", "si_calibrated"], strict=True):
        assert t.user_attrs["warm_start"] == name
        assert t.params == space.trial_params({**space.PRESETS, **space.VARIANTS}[name], study_def.fixed)
        assert t.datetime_start <= min(u.datetime_start for u in trials[2:])

    states = [t.state for t in trials]
    assert TrialState.PRUNED in states, [(t.number, t.intermediate_values) for t in trials]
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert max(t.intermediate_values) < 3  # stopped before its last context
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete
    # The objective is the share of the none-to-joint gap closed, with both anchors measured once, at the
    # proxy settings, and kept on the study.
    study_attrs = open_study("tiny_e2e", url).user_attrs
    (anchor,) = [v for k, v in study_attrs.items() if k.startswith("anchors:splitMNIST:")]
    assert 0.5 < anchor["none"] < anchor["joint"] <= 1.0
    for t in complete:
        accs = t.user_attrs["per_context"]["splitMNIST"]
        assert len(accs) == 3 and all(0.0 <= a <= 1.0 for a in accs)
        assert t.user_attrs["scores"]["splitMNIST"] == pytest.approx(sum(accs) / 3)
        assert t.user_attrs["proxy_splitMNIST"] == t.user_attrs["scores"]["splitMNIST"]
        gap = (sum(accs) / 3 - anchor["none"]) / (anchor["joint"] - anchor["none"])
        assert t.value == pytest.approx(gap) == pytest.approx(t.user_attrs["gap_splitMNIST"])
        assert t.intermediate_values[3] == pytest.approx(t.value)  # the last report is the objective
        assert t.user_attrs["design"] == space.Design.from_dict(t.user_attrs["design"]).to_dict()
        assert t.user_attrs["wall_time_s"] > 0

    # The best trial exports to the very bytes it scored, and that module reproduces its score in the harness.
    best = max(complete, key=lambda t: t.value)
    out = tmp_path / "custom_regularization.py"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "search",
            "export",
            "--study",
            "tiny_e2e",
            "--storage",
            url,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == trial_source("tiny_e2e", url)
    assert sha256_text(out.read_text()) == best.user_attrs["module_sha256"]  # the module it scored
    result = run(
        out, RunConfig("splitMNIST", device="cpu", data_dir=str(mnist_root), **PROXY), progress=False
    )
    assert result["average_accuracy"] == pytest.approx(best.user_attrs["scores"]["splitMNIST"], abs=1e-6)


def test_diverging_and_broken_modules_are_recorded_and_the_study_goes_on(
    tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 0's module gets a huge strength (beyond the space's range, so it is injected into the generated
    source): it diverges and is pruned. Trial 1's module returns importance for a parameter that does not
    exist: the harness refuses it and the trial fails by design. Trials 2-3 run normally."""
    generate = space.generate_source

    def sabotaged(design: space.Design, provenance: dict[str, object] | None = None) -> str:
        source = generate(design, provenance)
        trial = (provenance or {}).get("trial")
        if trial == 0:
            source = source.replace(
                f'CONFIG_OVERRIDES = {{"reg_strength_scale": {design.reg_strength_scale!r}}}',
                'CONFIG_OVERRIDES = {"reg_strength_scale": 1e38}',
            )
            assert "1e38" in source
        if trial == 1:
            source += textwrap.dedent(
                """
                def estimate_importance(model, dataset, prev_params, device):
                    return {"no_such_parameter": torch.zeros(1)}
                """
            )
        return source

    monkeypatch.setattr(space, "generate_source", sabotaged)
    study_def = load_study_def(tiny_study(tmp_path, "tiny_diverge", 4, []))
    url = f"sqlite:///{tmp_path / 'div.db'}"
    assert run_study(study_def, url, data_dir=str(mnist_root), device="cpu") == 0
    trials = sorted(open_study("tiny_diverge", url).get_trials(), key=lambda t: t.number)
    assert sum(map(counts_toward_budget, trials)) == 4

    diverged = trials[0]
    assert diverged.state == TrialState.PRUNED
    assert "diverged" in diverged.user_attrs["fail_reason"]
    # Reported as a run at chance level (0.5 on Split-MNIST), in gap-share units.
    (anchor,) = [v for k, v in open_study("tiny_diverge", url).user_attrs.items() if k.startswith("anchors:")]
    chance = (0.5 - anchor["none"]) / (anchor["joint"] - anchor["none"])
    assert diverged.intermediate_values[max(diverged.intermediate_values)] == pytest.approx(chance)
    assert "1e38" in trial_module(diverged, "tiny_diverge")

    broken = trials[1]
    assert broken.state == TrialState.FAIL
    assert broken.user_attrs["fail_kind"] == "design"
    assert "estimate_importance after context 1" in broken.user_attrs["fail_reason"]  # the harness's reason

    assert [t.state for t in trials[2:]].count(TrialState.FAIL) == 0
    assert all(t.user_attrs.get("scores") for t in trials[2:] if t.state == TrialState.COMPLETE)


def test_two_proxies_of_one_benchmark_score_apart_and_weigh_in(tmp_path: Path, mnist_root: Path) -> None:
    """Two proxies of one experiment (a named second one): each has its own score, anchors and attributes, and
    the trial's value is their weighted mean of gap shares."""
    from evaluation.fidelity import gap_share
    from search.objective import anchor_key

    second = TINY.split("[[benchmark]]")[1].replace("iters = 10", 'iters = 20\nlr = 0.003\nname = "split_lr"')
    path = tmp_path / "two.toml"
    path.write_text(
        tiny_study(tmp_path, "x", 2, ["ewc"]).read_text()
        + "weight = 1.0\n[[benchmark]]"
        + second
        + "weight = 3.0\n"
    )
    study_def = load_study_def(path)
    assert study_def.labels == ("splitMNIST", "split_lr") and study_def.experiments == ("splitMNIST",)
    url = f"sqlite:///{tmp_path / 'two.db'}"
    assert run_study(study_def, url, data_dir=str(mnist_root), device="cpu") == 0
    study = open_study("two", url)
    assert study.user_attrs["benchmarks"] == ["splitMNIST", "split_lr"]
    trial = min((t for t in study.get_trials() if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    scores = trial.user_attrs["scores"]
    assert set(scores) == {"splitMNIST", "split_lr"} and scores["splitMNIST"] != scores["split_lr"]
    anchors = {b.label: study.user_attrs[anchor_key(b)] for b in study_def.benchmarks}
    gaps = {b: gap_share(s, anchors[b]) for b, s in scores.items()}
    assert trial.user_attrs["gap_split_lr"] == pytest.approx(gaps["split_lr"])
    assert trial.value == pytest.approx((gaps["splitMNIST"] + 3 * gaps["split_lr"]) / 4)
    # the second proxy's score is the harness's own at its settings
    with_lr = RunConfig(
        experiment="splitMNIST", data_dir=str(mnist_root), device="cpu", **{**PROXY, "iters": 20, "lr": 0.003}
    )
    module = tmp_path / "m.py"
    module.write_text(trial_module(trial, "two"))
    assert run(module, with_lr, progress=False)["average_accuracy"] == pytest.approx(scores["split_lr"])


def test_anchors_are_measured_once_for_every_study_of_a_folder(
    tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study's anchors are the harness's own `none` and joint runs at its proxy settings, filed in the run cache
    beside its artifact folder; a second study there with the same proxies reads them back without running."""
    import optuna
    from clharness.runner import run_joint

    from search.annotate import ARTIFACT_DIR_ATTR
    from search.objective import ANCHOR_RUNS, anchor_key, none_source, study_anchors

    study_def = load_study_def(tiny_study(tmp_path, "tiny_anchors", 1, []))
    url = f"sqlite:///{tmp_path / 'tiny.db'}"

    def study(name: str) -> optuna.Study:
        made = optuna.create_study(study_name=name, storage=url, direction="maximize")
        made.set_user_attr(ARTIFACT_DIR_ATTR, str(tmp_path / f"{name}.artifacts"))
        return made

    first = study_anchors(study("first"), study_def, data_dir=str(mnist_root), device="cpu")
    cfg = RunConfig(experiment="splitMNIST", data_dir=str(mnist_root), device="cpu", **PROXY)
    module = tmp_path / "none.py"
    module.write_text(none_source())
    assert first == {
        "splitMNIST": {
            "none": run(module, cfg, progress=False)["average_accuracy"],
            "joint": run_joint(cfg, progress=False)["average_accuracy"],
        }
    }
    records = sorted(p.name.split("__")[0] for p in (tmp_path / ANCHOR_RUNS / "runs").rglob("*.json"))
    assert records == ["joint", "none"]

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the anchors were run again")

    import clharness.runner

    monkeypatch.setattr(clharness.runner, "run", no_run)
    monkeypatch.setattr(clharness.runner, "run_joint", no_run)
    second = study("second")
    assert study_anchors(second, study_def, data_dir=str(mnist_root), device="cpu") == first
    assert second.user_attrs[anchor_key(study_def.benchmarks[0])] == first["splitMNIST"]
