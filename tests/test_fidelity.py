"""Proxy fidelity: the right runs (proxy and full, validation split), Spearman's rho, caching, random designs."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

import space
from evaluation import fidelity as fid
from evaluation.errors import UserError
from search.fidelity import measure
from search.plausibility import study_randoms, summarize
from search.storage import open_study

# Four designs whose proxy ranks are 1, 2, 3, 4 and full ranks 2, 1, 3, 4:
# rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
PROXY = {0.1: 0.95, 0.2: 0.90, 0.3: 0.85, 0.4: 0.80}
FULL = {0.1: 0.97, 0.2: 0.98, 0.3: 0.96, 0.4: 0.91}


class FakeDesign:
    def __init__(self, q: float) -> None:
        self.q = q

    def to_dict(self) -> dict:
        return {"q": self.q}

    @classmethod
    def from_dict(cls, data: dict) -> FakeDesign:
        if not isinstance(data, dict) or set(data) != {"q"}:
            raise ValueError(f"not a design of the fake space: {data!r}")
        return cls(data["q"])


@pytest.fixture(autouse=True)
def fake_space(monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-parameter space: design {"q": x} -> source `Q = x`."""
    monkeypatch.setattr(
        space, "suggest", lambda trial, fixed=None: FakeDesign(trial.suggest_float("q", 0, 1)), raising=False
    )
    monkeypatch.setattr(
        space, "generate_source", lambda design, provenance=None: f"Q = {design.q!r}\n", raising=False
    )
    monkeypatch.setattr(space, "Design", FakeDesign)  # a trial's module is generated again from its design


class FakeRunner:
    """Scores of the designs above; any other design q scores q on the proxy and 1 - q in full (rho = -1)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list = []
        self.fail = fail

    def __call__(self, hooks_path: str, cfg: object, **kw: object) -> dict:
        if self.fail:
            raise AssertionError("a cached run was run again")
        self.calls.append(cfg)
        q = float(re.search(r"Q = (\S+)", Path(hooks_path).read_text()).group(1))
        full = cfg.iters is None  # type: ignore[attr-defined]
        acc = (FULL if full else PROXY).get(q, 1 - q if full else q)
        return {"average_accuracy": acc, "per_context_accuracy": [acc], "data_source": "torchvision"}


def make_study(tmp_path: Path, qs: list[float]) -> tuple[Path, str]:
    study_file = tmp_path / "fid.toml"
    study_file.write_text(
        textwrap.dedent(
            """\
            n_trials = 10
            [sampler]
            name = "random"
            [pruner]
            name = "none"
            [[benchmark]]
            experiment = "splitMNIST"
            iters = 10
            contexts = 2
            val_fraction = 0.2
            seeds = [1000, 1001]
            """
        )
    )
    url = f"sqlite:///{tmp_path / 'fid.db'}"
    study = open_study("fid", url, create=True)
    for q in qs:
        value = PROXY[q]
        attrs = {"design": {"q": q}, "module_source": f"Q = {q!r}\n", "scores": {"splitMNIST": value}}
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    study.add_trial(
        optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"design": {"q": 9}})
    )
    return study_file, url


def test_spearman_of_known_ranks_and_the_runs_made(tmp_path: Path) -> None:
    study_file, url = make_study(tmp_path, [0.4, 0.3, 0.2, 0.1])
    runner = FakeRunner()
    out = tmp_path / "out"
    summary = measure(
        str(study_file), top=4, random=0, storage=url, out_dir=out, run_fn=runner, log=lambda s: None
    )
    res = summary["benchmarks"]["splitMNIST"]
    assert res["spearman_rho"] == pytest.approx(0.8) and res["n"] == 4
    # proxy: 2 seeds x 4 designs at the study's settings; full: 1 run each at the published protocol
    proxy = [c for c in runner.calls if c.iters is not None]
    full = [c for c in runner.calls if c.iters is None]
    assert len(proxy) == 8 and len(full) == 4
    assert {(c.iters, c.contexts, c.seed) for c in proxy} == {(10, 2, 1000), (10, 2, 1001)}
    assert {(c.contexts, c.seed, c.train_subset) for c in full} == {(None, 1000, None)}
    assert all(c.eval_split == "val" and c.val_fraction == 0.2 for c in runner.calls)
    text = (out / "fid.md").read_text()
    assert "**0.800**" in text and "| `trial_3` | top | 0.9500 | 0.9700 | 1 | 2 |" in text
    assert json.loads((out / "fid.json").read_text())["benchmarks"]["splitMNIST"]["n"] == 4

    # rerun: everything cached; other proxy settings rerun only the proxy runs
    measure(str(study_file), top=4, random=0, storage=url, out_dir=out, run_fn=FakeRunner(fail=True))
    again = FakeRunner()
    measure(
        str(study_file), top=4, random=0, storage=url, out_dir=out, run_fn=again, proxy_overrides={"iters": 5}
    )
    assert len(again.calls) == 8 and {c.iters for c in again.calls} == {5}
    assert (out / "fid__iters5.md").is_file() and "**0.800**" in (out / "fid.md").read_text()


def test_random_designs_are_seeded_and_distinct_from_the_top(tmp_path: Path) -> None:
    study_file, url = make_study(tmp_path, [0.1, 0.2])
    kw = {"top": 1, "random": 3, "storage": url, "log": lambda s: None}
    a = measure(str(study_file), out_dir=tmp_path / "a", run_fn=FakeRunner(), seed=7, **kw)
    b = measure(str(study_file), out_dir=tmp_path / "b", run_fn=FakeRunner(), seed=7, **kw)
    rows_a = a["benchmarks"]["splitMNIST"]["designs"]
    assert [r["label"] for r in rows_a] == ["trial_0", "random_0", "random_1", "random_2"]
    assert rows_a == b["benchmarks"]["splitMNIST"]["designs"]
    sources = {p.read_text() for p in (tmp_path / "a" / "modules" / "fid").glob("*.py")}
    assert len(sources) == 4


def test_too_few_designs_is_a_user_error(tmp_path: Path) -> None:
    study_file, url = make_study(tmp_path, [0.1])
    with pytest.raises(UserError, match="at least 3 designs"):
        measure(str(study_file), top=1, random=1, storage=url, out_dir=tmp_path, run_fn=FakeRunner())


def test_spearman_undefined_below_three() -> None:
    rho, p = fid.spearman([0.1, 0.2], [0.3, 0.4])
    assert rho != rho and p != p  # NaN


def test_random_designs_alone_need_no_storage(tmp_path: Path) -> None:
    study_file, _ = make_study(tmp_path, [])
    absent = f"sqlite:///{tmp_path / 'absent.db'}"
    summary = measure(
        str(study_file), top=0, random=3, storage=absent, out_dir=tmp_path / "o", run_fn=FakeRunner()
    )
    res = summary["benchmarks"]["splitMNIST"]
    assert res["n"] == 3 and not (tmp_path / "absent.db").exists()
    # each design's proxy score is its q and its full score 1 - q: the ranks are reversed
    for row in res["designs"]:
        assert row["origin"] == "random" and row["proxy"] + row["full"] == pytest.approx(1.0)
    assert res["spearman_rho"] == pytest.approx(-1.0)


def test_random_designs_bench_takes_a_studys_random_start_and_counts_the_plausible(tmp_path: Path) -> None:
    """bench/random_designs.py --from-study (`search.plausibility`): the first N sampled trials, a crash standing
    in for its retry, a diverged design scoring chance; refused when the study's random start is shorter than N."""
    from search.records import CRASH, DESIGN
    from search.storage import make_storage

    study_file = tmp_path / "rnd.toml"
    study_file.write_text(
        'n_trials = 20\nwarm_start = ["ewc"]\n[sampler]\nname = "tpe"\nn_startup_trials = 5\n'
        '[[benchmark]]\nexperiment = "permMNIST"\niters = 30\ncontexts = 2\nseeds = [1001]\n'
    )
    url = f"sqlite:///{tmp_path / 'rnd.db'}"
    study = optuna.create_study(study_name="rnd", storage=make_storage(url), direction="maximize")

    def add(state: TrialState, acc: float | None = None, **attrs: Any) -> None:
        trial = study.ask()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if acc is not None:
            trial.set_user_attr("proxy_permMNIST", acc)
        study.tell(trial, acc if state == TrialState.COMPLETE else None, state=state)

    add(TrialState.COMPLETE, 0.9, warm_start="ewc")
    add(TrialState.COMPLETE, 0.8)
    add(TrialState.FAIL, fail_kind=CRASH)  # its retry is the next trial
    add(TrialState.COMPLETE, 0.7)
    add(TrialState.FAIL, fail_kind=DESIGN)
    add(TrialState.COMPLETE, 0.6)
    got = study_randoms(str(study_file), url, 4, ["permMNIST"])
    assert got == {
        "random_0": {"permMNIST": 0.8},
        "random_1": {"permMNIST": 0.7},
        "random_2": {"permMNIST": 0.1},  # chance: 1 of 10
        "random_3": {"permMNIST": 0.6},
    }
    with pytest.raises(UserError, match="only 4 trials at random"):
        study_randoms(str(study_file), url, 5, ["permMNIST"])
    # the figure: the share within the margin of the best preset, on the mean over the proxies and on each
    scores = {**got, "preset_ewc": {"permMNIST": 0.705}, "preset_si": {"permMNIST": 0.5}}
    summary = summarize(scores, ["permMNIST"], 0.01)
    assert summary["mean"]["best_preset"] == "preset_ewc"
    assert summary["mean"]["close"] == ["random_0", "random_1"]
    assert summary["mean"]["share_within_margin"] == 0.5 and summary["permMNIST"] == summary["mean"]


def test_plausibility_is_counted_on_the_mean_of_two_proxies_and_on_each() -> None:
    scores = {
        "preset_a": {"lr": 0.90, "n500": 0.78},  # mean 0.84: the best preset on the mean and on lr
        "preset_b": {"lr": 0.80, "n500": 0.79},  # the best on n500
        "random_0": {"lr": 0.89, "n500": 0.78},  # mean 0.835: close on the mean and on both
        "random_1": {"lr": 0.86, "n500": 0.795},  # mean 0.8275: close on n500 only
        "random_2": {"lr": 0.91},  # one proxy missing: not in the mean yet
    }
    summary = summarize(scores, ["lr", "n500"], 0.01)
    assert summary["mean"]["best_preset"] == "preset_a" and summary["mean"]["close"] == ["random_0"]
    assert summary["mean"]["random_scored"] == 2 and summary["mean"]["share_within_margin"] == 0.5
    assert summary["lr"]["close"] == ["random_0", "random_2"]  # a design counts on each proxy it ran on
    assert summary["n500"]["best_preset"] == "preset_b" and summary["n500"]["close"] == [
        "random_0",
        "random_1",
    ]
