"""Final evaluation: cache keys, cache hits, resuming an interrupted run, a missing dataset, the report, and the
search CLI's part (candidate and tuned baselines taken from studies)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clharness.errors import DataError
from clharness.protocol import PROTOCOLS
from clharness.runner import RunConfig
from search_fakes import generated

from cli import final_eval as final_eval_cli
from evaluation import cache, claims
from evaluation import final_eval as fe
from evaluation.errors import UserError
from search import export

REPO = Path(__file__).resolve().parents[1]
HOOKS = REPO / "tests" / "hooks"
TINY = {"iters": 20, "contexts": 2}
# Accuracies the fake harness returns for the candidate, per seed. By hand: mean 0.93, squared deviations
# 0.0009 + 0.0001 + 0.0016 = 0.0026, sample variance 0.0013, SE = sqrt(0.0013 / 3) = 0.0208.
CANDIDATE_ACC = {42: 0.90, 43: 0.92, 44: 0.97}


class FakeHarness:
    """Stands in for clharness.runner: returns result records, counts calls, can fail on demand."""

    def __init__(self, *, fail_after: int | None = None, missing: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.checkpoints: list[object] = []
        self.fail_after = fail_after
        self.missing = missing

    def run(self, hooks_path: str, cfg: object, *, progress: bool = True, **kw: object) -> dict:
        self.checkpoints.append(kw.get("checkpoint"))
        return self._result(Path(hooks_path).stem.split("-")[0], cfg)

    def run_joint(self, cfg: object, *, progress: bool = True) -> dict:
        return self._result("joint", cfg)

    def _result(self, name: str, cfg: object) -> dict:
        experiment, seed = cfg.experiment, cfg.seed  # type: ignore[attr-defined]
        if experiment in self.missing:
            raise DataError(f"CIFAR-100 not found under /nowhere: put cifar-100-python there ({experiment})")
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("power cut")
        self.calls.append((name, experiment, seed))
        acc = CANDIDATE_ACC[seed] if name == "candidate" else 0.5 + 0.01 * (seed - 42)
        k = cfg.contexts or PROTOCOLS[experiment].contexts  # type: ignore[attr-defined]
        matrix = [[acc + 0.02 * (i - j) for j in range(i + 1)] for i in range(k)]
        matrix[-1] = [acc] * k  # the final row averages to exactly `acc`
        return {
            "experiment": experiment,
            "seed": seed,
            "average_accuracy": acc,
            "per_context_accuracy": matrix[-1],
            "acc_matrix": matrix,
            "device": "cpu",
            "data_source": "torchvision",
            "timing": {"total_s": 0.01},
        }


@pytest.fixture
def none_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `none` preset's source, without depending on the generator."""
    monkeypatch.setattr(fe, "preset_source", lambda name: (HOOKS / "no_reg.py").read_text())


def _eval(tmp_path: Path, fake: FakeHarness, **kw: object) -> tuple[fe.Outcome, Path]:
    args: dict = {
        "methods": ["candidate", "none", "joint"],
        "hooks": HOOKS / "scaffold_ewc.py",
        "benchmarks": ["splitMNIST"],
        "seeds": [42, 43, 44],
        "out_dir": tmp_path / "results",
        "overrides": TINY,
        "run_fn": fake.run,
        "joint_fn": fake.run_joint,
        "log": lambda line: None,
    }
    args.update(kw)
    return fe.final_eval(**args)


def test_cache_key_covers_module_protocol_and_seed_but_not_device() -> None:
    version = cache.code_version()
    cfg = fe.make_config("splitMNIST", 42, device="cpu")
    key, fields = cache.run_key("a" * 64, cfg, version)
    assert fields["config"]["iters"] == 2000 and fields["config"]["eval_split"] == "test"
    assert fields["config"]["acc_matrix"] is True and "cifar_trunk" not in fields["config"]
    assert cache.run_key("a" * 64, fe.make_config("splitMNIST", 43, device="cuda"), version)[0] == key
    assert cache.run_key("b" * 64, cfg, version)[0] != key
    tiny = fe.make_config("splitMNIST", 42, device="cpu", overrides=TINY)
    assert cache.run_key("a" * 64, tiny, version)[0] != key
    assert cache.run_key("a" * 64, cfg, "harness-other")[0] != key
    # None and the published value are the same protocol, so they share results
    explicit = fe.make_config("splitMNIST", 42, device="cpu", overrides={"iters": 2000, "contexts": 5})
    assert cache.run_key("a" * 64, explicit, version)[0] == key


def test_cache_keys_and_paths_are_those_of_the_cached_results() -> None:
    """Pinned: every record under results/runs and results/fidelity/runs is found by these exact keys."""
    assert cache.code_version() == "harness-1" and cache.FINAL_EVAL_VERSION == 1
    final = fe.make_config("splitMNIST", 42, device="cpu")
    assert cache.run_key("a" * 64, final, "harness-1")[0] == "a55906bc5666776f"
    assert cache.run_key("c" * 64, fe.make_config("CIFAR100", 44, device="cuda"), "harness-1")[0] == (
        "4163a2d0200052e2"
    )
    proxy_seed = RunConfig(
        experiment="permMNIST", seed=1001, val_fraction=0.1, eval_split="val", device="cpu"
    )
    assert cache.run_key("b" * 64, proxy_seed, "harness-1")[0] == "3d55fda6d340a6a3"
    path = cache.result_path(Path("r"), "ewc", "permMNIST", "3d55fda6d340a6a3", 1001)
    assert path == Path("r/permMNIST/ewc__3d55fda6d340a6a3__seed1001.json")
    # A learning-rate-matched proxy is another run; the protocol's rate named explicitly is not the same key
    # either (the key records the override), so proxies always leave `lr` None unless they change it.
    faster = dataclasses.replace(proxy_seed, iters=500, lr=1e-3)
    assert cache.run_key("b" * 64, faster, "harness-1")[1]["config"]["lr"] == 1e-3
    assert (
        cache.run_key("b" * 64, faster, "harness-1")[0]
        != cache.run_key("b" * 64, dataclasses.replace(faster, lr=None), "harness-1")[0]
    )


def test_every_cached_record_is_found_under_its_key() -> None:
    """The records shipped in results/ carry their key fields: recomputing the key from them gives the file."""
    records = sorted((REPO / "results").glob("**/runs/*/*__*__seed*.json"))
    if not records:
        pytest.skip("no cached runs in this checkout")
    for path in records:
        record = json.loads(path.read_text())
        result, fields = record["result"], record["key_fields"]
        config = {k: v for k, v in fields["config"].items() if k != "protocol"}
        cfg = RunConfig(seed=record["seed"], **config)
        key, _ = cache.run_key(fields["module"], cfg, cache.code_version())
        assert key == record["key"], path
        assert path == cache.result_path(
            path.parents[1], record["method"], record["experiment"], key, cfg.seed
        )
        if "equivalent_module" in record:  # made by a module with the same code (cache.code_sha256)
            assert (
                record["equivalent_module"].split("-")[-1].removesuffix(".py") == result["hooks_sha256"][:12]
            )
        else:
            assert result.get("hooks_sha256") in (None, fields["module"]), path


def test_end_to_end_then_cache_hit(tmp_path: Path, none_preset: None) -> None:
    fake = FakeHarness()
    outcome, readme = _eval(tmp_path, fake)
    assert outcome.complete and len(outcome.ran) == 9 and len(fake.calls) == 9
    runs = sorted((tmp_path / "results" / "runs" / "splitMNIST").glob("*.json"))
    assert len(runs) == 9
    record = json.loads(runs[0].read_text())
    assert record["key_fields"]["config"]["iters"] == 20 and record["result"]["average_accuracy"] > 0

    # rerun: everything is cached, the harness is not called again
    again = FakeHarness(fail_after=0)
    outcome2, _ = _eval(tmp_path, again)
    assert again.calls == [] and len(outcome2.cached) == 9 and outcome2.complete

    # the table: mean ± standard error (sample std, ddof=1, over sqrt(n)); the values are worked out above
    text = readme.read_text()
    assert "| `candidate` | 0.9300 ± 0.0208 | 3 |" in text
    assert "Permuted-MNIST: no results" in text and "Split-CIFAR100: no results" in text
    assert "[harness]" not in text.split("Sources")[0]  # published numbers only on their methods' rows
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    cell = summary["results"]["splitMNIST"]["candidate"]
    assert (
        cell["n"] == 3
        and cell["se"] == pytest.approx((0.0013 / 3) ** 0.5)
        and cell["mean"] == pytest.approx(0.93)
    )
    for png in ("splitMNIST_contexts.png", "splitMNIST_average.png"):
        data = (tmp_path / "results" / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    (stored,) = (tmp_path / "results" / "modules").glob("candidate-*.py")
    assert stored.read_text() == (HOOKS / "scaffold_ewc.py").read_text()


def test_one_seed_shows_n1_without_error(tmp_path: Path, none_preset: None) -> None:
    _, readme = _eval(tmp_path, FakeHarness(), seeds=[43], methods=["candidate"])
    assert "| `candidate` | 0.9200 (n=1) | 1 |" in readme.read_text()


def test_interrupted_run_resumes(tmp_path: Path, none_preset: None) -> None:
    with pytest.raises(RuntimeError, match="power cut"):
        _eval(tmp_path, FakeHarness(fail_after=2))
    assert len(list((tmp_path / "results" / "runs" / "splitMNIST").glob("*.json"))) == 2
    assert not list((tmp_path / "results" / "runs").rglob("*.tmp"))  # nothing half-written
    fake = FakeHarness()
    outcome, _ = _eval(tmp_path, fake)
    assert len(fake.calls) == 7 and len(outcome.cached) == 2 and outcome.complete
    # seed-major order, joint (the longest run) first: the two finished runs were seed 42's joint and candidate
    assert {(j.method.name, j.seed) for j in outcome.cached} == {("joint", 42), ("candidate", 42)}
    assert [(j.method.name, j.seed) for j in outcome.ran][:4] == [
        ("none", 42),
        ("joint", 43),
        ("candidate", 43),
        ("none", 43),
    ]


class TimedHarness(FakeHarness):
    """A fake harness whose runs take `seconds[(experiment, seed)]` on a fake clock (`perf_counter`)."""

    def __init__(self, seconds: dict[tuple[str, int], float]) -> None:
        super().__init__()
        self.seconds, self.now = seconds, 0.0

    def perf_counter(self) -> float:
        return self.now

    def _result(self, name: str, cfg: object) -> dict:
        self.now += self.seconds[(cfg.experiment, cfg.seed)]  # type: ignore[attr-defined]
        return super()._result(name, cfg)


def test_eta_from_the_durations_of_finished_and_cached_runs(
    tmp_path: Path, none_preset: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seconds = {("splitMNIST", s): 40.0 for s in (42, 43, 44)}
    seconds |= {("permMNIST", 42): 500.0, ("permMNIST", 43): 900.0, ("permMNIST", 44): 900.0}
    fake = TimedHarness(seconds)
    monkeypatch.setattr(fe, "time", fake)  # execute() times each run with the fake clock

    def etas(seeds: list[int]) -> dict[str, str]:
        logs: list[str] = []
        _eval(tmp_path, fake, benchmarks=["splitMNIST", "permMNIST"], seeds=seeds, log=logs.append)
        running = [line.split(": running (") for line in logs if ": running (" in line]
        return {tag: rest.split(" left after it, ")[1].removesuffix(")") for tag, rest in running}

    # 12 runs, 3 methods x 2 seeds per benchmark, split-MNIST first, joint first within a seed.
    eta = etas([42, 43])
    assert (
        eta["[1/12] splitMNIST joint seed 42"]
        == "ETA unknown for permMNIST, splitMNIST (no finished run yet)"
    )
    # 5 split-MNIST runs left at 40 s each; Permuted-MNIST not measured yet
    assert (
        eta["[2/12] splitMNIST candidate seed 42"]
        == "ETA 3 min + unknown for permMNIST (no finished run yet)"
    )
    assert eta["[6/12] splitMNIST none seed 43"] == "ETA 40 s + unknown for permMNIST (no finished run yet)"
    assert eta["[7/12] permMNIST joint seed 42"] == "ETA unknown for permMNIST (no finished run yet)"
    assert eta["[8/12] permMNIST candidate seed 42"] == "ETA 42 min"  # 5 x 500 s
    assert eta["[11/12] permMNIST candidate seed 43"] == "ETA 20 min"  # 2 x mean(500, 500, 500, 900) s
    assert eta["[12/12] permMNIST none seed 43"] == "ETA 11 min"  # mean(500 x 3, 900 x 2) s

    # A third seed: before any new run finishes, the cached runs' durations give the ETA.
    eta = etas([42, 43, 44])
    assert len(eta) == 6
    # 3 x 40 s + 3 x mean(500 x 3, 900 x 3) s = 2220 s
    assert eta["[1/6] splitMNIST joint seed 44"] == "ETA 37 min"


def test_eta_is_wall_time_shared_among_the_processes_running_the_plan() -> None:
    """Two processes side by side each log the time left for both, not the sum of every run left."""
    from types import SimpleNamespace

    jobs: list = [SimpleNamespace(experiment="permMNIST")] * 4 + [SimpleNamespace(experiment="CIFAR100")]
    durations = {"permMNIST": [600.0, 600.0]}
    assert fe.estimate_remaining(jobs[:4], durations) == "ETA 40 min"
    assert fe.estimate_remaining(jobs[:4], durations, 2) == "ETA 20 min on 2 processes"
    assert fe.estimate_remaining(jobs, durations, 2) == (
        "ETA 20 min on 2 processes + unknown for CIFAR100 (no finished run yet)"
    )


def test_each_run_keeps_a_checkpoint_beside_its_record_until_the_record_is_written(
    tmp_path: Path, none_preset: None
) -> None:
    """The harness is handed `<record>.ckpt` (so a killed run resumes there); storing the record deletes it."""
    fake = FakeHarness()
    methods = fe.resolve_methods(
        ["candidate", "none"], hooks=HOOKS / "scaffold_ewc.py", module_dir=tmp_path / "modules"
    )
    jobs = fe.plan(methods, ["splitMNIST"], [42], runs_dir=tmp_path / "runs", overrides=TINY)
    left_over = cache.checkpoint_path(jobs[0].path)
    left_over.parent.mkdir(parents=True)
    left_over.write_bytes(b"state after context 3")
    fe.run_jobs(jobs, run_fn=fake.run, joint_fn=fake.run_joint, overrides=TINY, log=lambda line: None)
    assert fake.checkpoints == [cache.checkpoint_path(job.path) for job in jobs]
    assert all(job.path.is_file() for job in jobs)
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_eta_counts_the_live_processes_holding_claims_on_the_plan(
    tmp_path: Path, none_preset: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another live process's claim on a run left halves the ETA; once it dies, its run is taken over here."""
    fake = TimedHarness({("splitMNIST", s): 60.0 for s in (42, 43)})
    monkeypatch.setattr(fe, "time", fake)
    methods = fe.resolve_methods(
        ["candidate", "none"], hooks=HOOKS / "scaffold_ewc.py", module_dir=tmp_path / "modules"
    )
    jobs = fe.plan(methods, ["splitMNIST"], [42, 43], runs_dir=tmp_path / "runs", overrides=TINY)
    quiet = {"overrides": TINY, "joint_fn": fake.run_joint, "log": lambda line: None}
    fe.run_jobs(jobs[:2], run_fn=fake.run, **quiet)  # seed 42: two cached runs of 60 s each
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        owner = {"host": socket.gethostname(), "pid": other.pid, "token": "theirs", "since": time.time()}
        claims.claim_path(jobs[3].path).write_text(json.dumps(owner), encoding="utf-8")

        def run_then_the_other_dies(hooks_path: str, cfg: object, **kw: object) -> dict:
            other.kill()
            other.wait()
            return fake.run(hooks_path, cfg, **kw)

        logs: list[str] = []
        outcome = fe.run_jobs(
            jobs, run_fn=run_then_the_other_dies, overrides=TINY, joint_fn=fake.run_joint, log=logs.append
        )
    finally:
        other.kill()
        other.wait()
    assert [line for line in logs if ": running (" in line] == [
        # 2 runs left (this one and the claimed one) x 60 s, shared by 2 processes
        "[1/2] splitMNIST candidate seed 43: running (1 left after it, ETA 60 s on 2 processes)",
        "[2/2] splitMNIST none seed 43: running (0 left after it, ETA 60 s)",
    ]
    assert [(j.method.name, j.seed) for j in outcome.ran] == [("candidate", 43), ("none", 43)]
    assert not claims.claim_path(jobs[3].path).exists()


def test_missing_dataset_skips_that_benchmark_only(tmp_path: Path, none_preset: None) -> None:
    logs: list[str] = []
    fake = FakeHarness(missing=("CIFAR100",))
    outcome, readme = _eval(
        tmp_path, fake, benchmarks=["CIFAR100", "splitMNIST"], seeds=[42, 43], log=logs.append
    )
    assert not outcome.complete and set(outcome.data_errors) == {"CIFAR100"}
    assert len(outcome.skipped) == 6 and len(outcome.ran) == 6
    assert {c[1] for c in fake.calls} == {"splitMNIST"}
    messages = [line for line in logs if line.startswith("CIFAR100: dataset missing")]
    assert len(messages) == 1 and "cifar-100-python" in messages[0] and "\n" not in messages[0]
    text = readme.read_text()
    assert "Split-CIFAR100: no results** (dataset missing: CIFAR-100 not found" in text
    assert "| `candidate` | 0.9300 ± 0.0208 | 2 |" not in text  # two seeds here: 0.91 ± 0.01
    assert "| `candidate` | 0.9100 ± 0.0100 | 2 |" in text


def test_cli_exit_code_2_when_something_could_not_run(
    tmp_path: Path, none_preset: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    fake = FakeHarness(missing=("permMNIST",))
    monkeypatch.setattr(cache, "default_runners", lambda: (fake.run, fake.run_joint))
    monkeypatch.setattr(cache, "check_data", lambda experiment, data_dir=None: None)
    parser = argparse.ArgumentParser()
    final_eval_cli.register(parser.add_subparsers())
    out = tmp_path / "r"
    argv = ["final-eval", "--hooks", str(HOOKS / "scaffold_ewc.py"), "--methods", "candidate", "joint"]
    argv += ["--benchmarks", "splitMNIST", "permMNIST", "--seeds", "42", "--out", str(out)]
    args = parser.parse_args(argv)
    # the published protocol, but the fake harness makes it instant
    assert args.func(args) == 2
    assert len(list((out / "runs" / "splitMNIST").glob("*.json"))) == 2
    assert "permMNIST: dataset missing" in capsys.readouterr().out
    args = parser.parse_args([*argv[:-2], "--out", str(out), "--benchmarks", "splitMNIST"])
    assert args.func(args) == 0


def test_unknown_method_and_missing_candidate_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown method 'ewk'"):
        fe.resolve_methods(["ewk"], module_dir=tmp_path)
    with pytest.raises(UserError, match=r"nope\.py not found"):
        fe.resolve_methods(["candidate"], hooks=tmp_path / "nope.py", module_dir=tmp_path)


def test_real_harness_tiny_final_eval(
    tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real harness end to end at 5 iterations x 2 contexts; the rerun is all cache hits."""
    monkeypatch.setenv("CL_DATA_DIR", str(mnist_root))

    def refuse(*a: object, **k: object) -> dict:
        raise AssertionError("the harness was called on a cached run")

    kw = {"methods": ["candidate", "joint"], "hooks": HOOKS / "no_reg.py", "seeds": [42, 43]}
    kw["overrides"] = {"iters": 5, "contexts": 2}
    outcome, readme = _eval(tmp_path, FakeHarness(), run_fn=None, joint_fn=None, **kw)
    assert outcome.complete and len(outcome.ran) == 4
    records = {
        (r["method"], r["seed"]): r
        for r in (json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").rglob("*.json"))
    }
    assert set(records) == {("candidate", 42), ("candidate", 43), ("joint", 42), ("joint", 43)}
    cand = records["candidate", 42]["result"]
    assert cand["eval_split"] == "test" and cand["iters"] == 5 and cand["contexts"] == 2
    assert len(cand["acc_matrix"]) == 2 and cand["acc_matrix"][-1] == cand["per_context_accuracy"]
    assert 0.5 < cand["average_accuracy"] <= 1.0  # two-way tasks: 5 Adam steps already beat chance
    outcome2, _ = _eval(tmp_path, FakeHarness(), run_fn=refuse, joint_fn=refuse, **kw)
    assert len(outcome2.cached) == 4 and not outcome2.ran
    a, b = (records["candidate", s]["result"]["average_accuracy"] for s in (42, 43))
    # two seeds: sample std = |a - b| / sqrt(2), so SE = |a - b| / 2
    assert f"| `candidate` | {(a + b) / 2:.4f} ± {abs(a - b) / 2:.4f} | 2 |" in readme.read_text()


def test_presets_are_generated_modules_the_harness_loads(tmp_path: Path) -> None:
    from clharness.hooks import load_hooks

    methods = fe.resolve_methods(list(fe.PRESET_METHODS), module_dir=tmp_path)
    assert [m.name for m in methods] == list(fe.PRESET_METHODS)
    assert len({m.sha256 for m in methods}) == len(methods)
    for m in methods:
        assert m.path == tmp_path / f"{m.name}-{m.sha256[:12]}.py" and load_hooks(m.path).sha256 == m.sha256


def test_tuned_baseline_and_study_candidate_come_from_the_studys_best_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from search import storage

    monkeypatch.setattr(storage, "default_storage_url", lambda name: f"sqlite:///{tmp_path / name}.db")
    assert export.study_modules(None, None) == (None, {})
    with pytest.raises(UserError, match="--study si: no storage"):
        export.study_modules(None, "si")
    study = storage.open_study("si", create=True)
    for number, value in enumerate((0.5, 0.9, 0.9)):  # trial 1 is the best: trial 2 is a later tie
        study.add_trial(
            optuna.trial.create_trial(value=value, user_attrs=generated("si", number, preset="si"))
        )
    best = generated("si", 1, preset="si")["module_source"]
    candidate, tuned = export.study_modules(None, "si")
    assert candidate is not None and candidate.source == best and "study `si`" in candidate.label
    assert set(tuned) == {"si"} and tuned["si"] == candidate
    assert export.study_modules(["candidate", "ewc"], None) == (None, {})  # only what is asked for

    assert fe.resolve_methods(None, tuned=tuned, module_dir=tmp_path / "m", hooks=HOOKS / "no_reg.py")[
        1
    ].name == ("tuned_si")
    (method,) = fe.resolve_methods(["tuned_si"], tuned=tuned, module_dir=tmp_path / "m")
    assert method.path is not None and method.path.read_text() == best
    with pytest.raises(UserError, match="tuned_ewc: study 'ewc' has no storage"):
        fe.resolve_methods(["tuned_ewc"], tuned=tuned, module_dir=tmp_path / "m")


def test_tuned_best_is_the_tuned_baseline_with_the_best_promoted_validation_score(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from search import storage

    monkeypatch.setattr(storage, "default_storage_url", lambda name: f"sqlite:///{tmp_path / name}.db")
    with pytest.raises(UserError, match="tuned_best: no tuned baseline study has promoted trials yet"):
        export.best_tuned_baseline()
    storage.open_study("l2", create=True)  # a study without promotion takes no part
    for name, promoted in (("ewc", [(0, 0.70), (3, 0.74)]), ("mas", [(1, 0.72)])):
        study = storage.open_study(name, create=True)
        for trial, value in promoted:
            entry = {"trial": trial, "fidelity": "full", "iterations": 100, "value": value}
            study.set_user_attr(f"promoted:full:{trial}", entry)
    # a cheaper fidelity does not compete with the full one
    study.set_user_attr(
        "promoted:iters10:1", {"trial": 1, "fidelity": "iters10", "iterations": 10, "value": 0.99}
    )
    lines: list[str] = []
    assert export.best_tuned_baseline(lines.append) == "tuned_ewc"
    assert lines == ["tuned_best: tuned_ewc 0.7400, tuned_mas 0.7200 (promoted, validation split)"]


def test_a_result_of_another_module_is_never_filed(tmp_path: Path, none_preset: None) -> None:
    fake = FakeHarness()

    def run_other(hooks_path: str, cfg: object, **kw: object) -> dict:
        return {**fake.run(hooks_path, cfg), "hooks_sha256": "f" * 64}

    with pytest.raises(RuntimeError, match="changed during the run"):
        _eval(tmp_path, fake, run_fn=run_other)
    # only joint training, which runs first and has no module, was filed
    filed = [p.name.split("__")[0] for p in (tmp_path / "results" / "runs").rglob("*.json")]
    assert filed == ["joint"]


def test_a_module_equal_to_a_preset_is_not_run_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fe, "preset_source", lambda name: (HOOKS / "scaffold_ewc.py").read_text())
    fake = FakeHarness()
    _eval(tmp_path, fake, methods=["ewc"], seeds=[42])
    again = FakeHarness(fail_after=0)
    outcome, readme = _eval(tmp_path, again, methods=["candidate", "ewc"], seeds=[42])
    assert again.calls == [] and len(outcome.cached) == 2
    (copy,) = (tmp_path / "results" / "runs" / "splitMNIST").glob("candidate__*.json")
    record = json.loads(copy.read_text())
    assert (
        record["method"] == "candidate"
        and record["copied_from"].startswith("ewc__")
        and "copied_at" in record
    )
    assert "| `candidate` | 0.5000 (n=1) | 1 |" in readme.read_text()


def test_a_module_that_differs_only_in_its_docstring_is_the_same_experiment(
    tmp_path: Path, none_preset: None
) -> None:
    code = (HOOKS / "scaffold_ewc.py").read_text()
    body = code.split('"""', 2)[2] if code.startswith('"""') else code
    first, second, other = (tmp_path / n for n in ("first.py", "second.py", "other.py"))
    first.write_text('"""Generated from preset x."""\n' + body)
    second.write_text('"""Generated from study s, trial 3."""\n# a comment\n' + body)
    other.write_text('"""Generated from preset x."""\n' + body + "\nEXTRA = 1\n")
    assert cache.code_sha256(first.read_text()) == cache.code_sha256(second.read_text())
    assert cache.code_sha256(first.read_text()) != cache.code_sha256(other.read_text())
    _eval(tmp_path, FakeHarness(), methods=["candidate"], hooks=first, seeds=[42])
    again = FakeHarness()
    outcome, _ = _eval(tmp_path, again, methods=["candidate"], hooks=second, seeds=[42])
    assert again.calls == [] and len(outcome.cached) == 1
    records = {json.loads(p.read_text())["key"]: json.loads(p.read_text()) for p in
               (tmp_path / "results" / "runs" / "splitMNIST").glob("candidate__*.json")}  # fmt: skip
    (copy,) = [r for r in records.values() if "equivalent_module" in r]
    assert copy["equivalent_module"].startswith("candidate-") and copy["key_fields"]["module"] == (
        cache.sha256_text(second.read_text())
    )
    # other code is another experiment
    third = FakeHarness()
    _eval(tmp_path, third, methods=["candidate"], hooks=other, seeds=[42])
    assert len(third.calls) == 1

    # run_cached (promotion, the panel) reuses the same way, from the modules kept beside its runs
    runs = tmp_path / "fid" / "runs"
    cfg = fe.make_config("splitMNIST", 42, device="cpu", overrides=TINY)
    a, sha_a = cache.store_module(tmp_path / "fid" / "modules" / "panel", "a", first.read_text())
    b, sha_b = cache.store_module(tmp_path / "fid" / "modules" / "study", "trial_3", second.read_text())
    fake = FakeHarness()
    record, cached = cache.run_cached("a", a, sha_a, cfg, cache_dir=runs, run_fn=fake.run)
    assert not cached and len(fake.calls) == 1
    record2, cached2 = cache.run_cached("trial_3", b, sha_b, cfg, cache_dir=runs, run_fn=fake.run)
    assert cached2 and len(fake.calls) == 1 and record2["result"] == record["result"]


def test_split_mnist_runs_five_seeds_and_permuted_mnist_three_by_default(tmp_path: Path) -> None:
    fake = FakeHarness()
    _eval(tmp_path, fake, methods=["none"], benchmarks=["splitMNIST", "permMNIST"], seeds=None)
    assert [(e, s) for _, e, s in fake.calls] == [
        *(("splitMNIST", s) for s in (42, 43, 44, 45, 46)),
        *(("permMNIST", s) for s in (42, 43, 44)),
    ]
    again = FakeHarness()
    _eval(tmp_path / "b", again, methods=["none"], benchmarks=["splitMNIST", "permMNIST"], seeds=[7])
    assert [(e, s) for _, e, s in again.calls] == [("splitMNIST", 7), ("permMNIST", 7)]  # --seeds: every one


def test_split_cifar100_final_eval_pretrains_the_missing_trunk_then_reuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make final-eval` where CIFAR-10/100 are present (generated here in the real file format): the real
    harness pre-trains the trunk first (1 epoch here instead of 100), caches it and the features, runs, and a
    second evaluation finds everything cached."""
    from cifar_files import write_cifar10, write_cifar100
    from clharness import cifar

    data, cache_dir = tmp_path / "data", tmp_path / "cache"
    write_cifar100(data, train_per_class=30, test_per_class=1)  # 300 images per context: one batch of 256
    write_cifar10(data, train_per_class=10, test_per_class=1)
    monkeypatch.setenv("CL_DATA_DIR", str(data))
    monkeypatch.setenv("CL_CACHE_DIR", str(cache_dir))
    features = cifar.cifar100_features
    monkeypatch.setattr(
        cifar, "cifar100_features", lambda *a, **k: features(*a, **{**k, "trunk_mode_epochs": 1})
    )
    kw = {"methods": ["candidate"], "hooks": HOOKS / "no_reg.py", "seeds": [42], "benchmarks": ["CIFAR100"]}
    kw["overrides"] = {"iters": 2, "contexts": 2}
    outcome, readme = _eval(tmp_path, FakeHarness(), run_fn=None, joint_fn=None, device="cpu", **kw)
    assert outcome.complete and len(outcome.ran) == 1
    assert (cache_dir / "cifar10-trunk-e1-s42.pt").is_file()  # pre-trained first, with the trunk's seed
    assert len(list(cache_dir.glob("cifar100-features-*.pt"))) == 1
    (record,) = [
        json.loads(p.read_text()) for p in (tmp_path / "results" / "runs" / "CIFAR100").glob("*.json")
    ]
    result = record["result"]
    assert result["experiment"] == "CIFAR100" and result["cifar_trunk"] == "pretrained"
    assert len(result["per_context_accuracy"]) == 2 and 0.0 <= result["average_accuracy"] <= 1.0
    assert "Split-CIFAR100" in readme.read_text()

    def refuse(*a: object, **k: object) -> dict:
        raise AssertionError("the harness was called on a cached run")

    again, _ = _eval(tmp_path, FakeHarness(), run_fn=refuse, joint_fn=refuse, device="cpu", **kw)
    assert again.complete and len(again.cached) == 1


def test_two_methods_with_the_same_code_run_once_per_seed(tmp_path: Path, none_preset: None) -> None:
    # the candidate is a tuned baseline's module with another docstring: one run per seed, filed under both
    code = (HOOKS / "scaffold_ewc.py").read_text()
    body = code.split('"""', 2)[2] if code.startswith('"""') else code
    hooks = tmp_path / "candidate.py"
    hooks.write_text('"""Generated from study mas, trial 29."""\n' + body)
    tuned = {"mas": fe.ModuleSource('"""Tuned mas."""\n' + body, "study mas, trial 29")}
    fake = FakeHarness()
    outcome, _ = _eval(
        tmp_path,
        fake,
        methods=["candidate", "tuned_mas", "none"],
        hooks=hooks,
        tuned=tuned,
        seeds=[42, 43],
    )
    assert sorted(fake.calls) == [
        ("candidate", "splitMNIST", 42),
        ("candidate", "splitMNIST", 43),
        ("none", "splitMNIST", 42),
        ("none", "splitMNIST", 43),
    ]
    assert outcome.complete and len(outcome.ran) == 4 and len(outcome.cached) == 2
    copies = sorted((tmp_path / "results" / "runs" / "splitMNIST").glob("tuned_mas__*.json"))
    assert len(copies) == 2
    for path in copies:
        record = json.loads(path.read_text())
        assert record["method"] == "tuned_mas" and record["copied_from"].startswith("candidate__")
        assert record["result"]["average_accuracy"] == CANDIDATE_ACC[record["seed"]]


def test_the_searched_design_is_filed_beside_the_candidate_and_reuses_its_runs(
    tmp_path: Path, none_preset: None
) -> None:
    """`searched` (the campaign's best trial) differs from the candidate when a tuned baseline ships; when it is
    the candidate's code under another header, its runs are the candidate's, copied, not run again."""
    code = (HOOKS / "scaffold_ewc.py").read_text()
    body = code.split('"""', 2)[2] if code.startswith('"""') else code
    searched = fe.ModuleSource('"""Generated from study campaign, trial 105."""\n' + body, "study campaign")
    fake = FakeHarness()
    outcome, readme = _eval(tmp_path, fake, methods=["candidate", "searched"], searched=searched, seeds=[42])
    assert [c[0] for c in fake.calls] == ["candidate"] and len(outcome.cached) == 1
    (copy,) = (tmp_path / "results" / "runs" / "splitMNIST").glob("searched__*.json")
    assert json.loads(copy.read_text())["equivalent_module"].startswith("candidate-")
    assert "| `searched` |" in readme.read_text()
    with pytest.raises(UserError, match="method searched: the campaign study has no storage"):
        fe.resolve_methods(["searched"], module_dir=tmp_path / "m")
