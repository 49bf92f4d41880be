"""The fidelity panel: every run planned once, cached, and proxies ranked against full runs."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

import space
from evaluation import panel as pnl
from evaluation.errors import UserError

PANEL = """\
modules = "mods"
val_fraction = 0.1
[full_seeds]
permMNIST = 1001
[[proxy]]
name = "good"
experiment = "permMNIST"
iters = 10
[[proxy]]
name = "reversed"
experiment = "permMNIST"
iters = 20
seeds = [1001, 1003]
"""
# Full scores of the designs; the "good" proxy keeps their order, the "reversed" one turns it round.
FULL = {"a": 0.95, "b": 0.90, "c": 0.85, "d": 0.80}


def _panel(tmp_path: Path) -> pnl.PanelDef:
    (tmp_path / "mods").mkdir()
    for label in FULL:
        (tmp_path / "mods" / f"{label}-000000000000.py").write_text(
            f"LABEL = {label!r}\n"
        )  # distinct code: distinct experiments
    (tmp_path / "panel.toml").write_text(PANEL)
    return pnl.load_panel(tmp_path / "panel.toml")


NONE, JOINT = 0.5, 1.0  # the anchors' accuracy at every proxy


def _fake_run(calls: list) -> Any:
    def run(path: str, cfg: Any, progress: bool = False, **kw: object) -> dict:
        label = Path(path).name.split("-")[0]
        calls.append((label, cfg.iters, cfg.seed))
        if label == "none":
            return {"average_accuracy": NONE, "hooks_sha256": None}
        full = FULL[label]
        acc = full if cfg.iters is None else (full - 0.1 if cfg.iters == 10 else 1.7 - full)
        return {
            "average_accuracy": acc,
            "per_context_accuracy": [acc + 0.01, acc - 0.01],
            "hooks_sha256": None,
        }

    return run


def _fake_joint(calls: list) -> Any:
    def run(cfg: Any, progress: bool = False) -> dict:
        calls.append(("joint", cfg.iters, cfg.seed))
        return {"average_accuracy": JOINT}

    return run


def test_every_run_once_and_the_cache_resumes(tmp_path: Path) -> None:
    panel = _panel(tmp_path)
    calls: list = []
    done = pnl.run_panel(
        panel,
        benchmarks=["permMNIST"],
        run_fn=_fake_run(calls),
        joint_fn=_fake_joint(calls),
        log=lambda _: None,
    )
    # 4 designs x (1 + 2 proxy seeds + 1 full run), and none and joint at each of the 3 proxy runs, each once
    assert done == 22 and len(calls) == len(set(calls)) == 22
    assert ("a", None, 1001) in calls and ("a", 20, 1003) in calls
    assert ("none", 20, 1003) in calls and ("joint", 10, 1001) in calls
    assert not list((tmp_path).rglob("*.claim"))
    again = pnl.run_panel(
        panel,
        benchmarks=["permMNIST"],
        run_fn=_fake_run(calls),
        joint_fn=_fake_joint(calls),
        log=lambda _: None,
    )
    assert again == 0 and len(calls) == 22  # everything came from the cache


def test_summary_ranks_each_proxy_against_the_full_runs(tmp_path: Path) -> None:
    panel = _panel(tmp_path)
    pnl.run_panel(
        panel, benchmarks=["permMNIST"], run_fn=_fake_run([]), joint_fn=_fake_joint([]), log=lambda _: None
    )
    summary = pnl.write_summary(panel, ["permMNIST"])
    res = summary["benchmarks"]["permMNIST"]
    assert res["full"] == pytest.approx(FULL) and res["best"] == "a"
    good, reversed_ = res["proxies"]
    assert good["proxy"] == "good" and good["spearman_rho"] == pytest.approx(1.0) and good["best_in_top3"]
    assert reversed_["spearman_rho"] == pytest.approx(-1.0) and reversed_["best_in_top3"] is False
    assert reversed_["settings"]["seeds"] == [1001, 1003] and good["n"] == 4
    # cost in training steps (10 contexts of the protocol), and the cheapest proxy that ranks well is named
    assert (good["steps"], reversed_["steps"]) == (10 * 10, 20 * 10 * 2)
    assert good["passes"] and not reversed_["passes"] and res["cheapest_passing"] == "good"
    assert good["spearman_rho_strong"] != good["spearman_rho_strong"]  # NaN: 2 strong designs give no rho
    # the strong half (a 0.85, b 0.80 at the good proxy) in gap units of its anchors (0.5, 1.0): 0.7 and 0.6
    assert good["anchors"] == {"none": NONE, "joint": JOINT}
    assert good["spread_strong_gap"] == pytest.approx(statistics.stdev([0.7, 0.6]))
    text = (tmp_path / "panel.md").read_text()
    assert "| `good` |" in text and "1.000" in text and "-1.000" in text
    assert (
        "Cheapest proxy that passes (all 4 designs, rho >= 0.8, the best full design in its top 3): `good`"
        in text
    )
    assert "| `a` | 0.960 | 0.940 |" in text  # the full runs' per-context accuracies
    assert res["per_context"]["d"] == pytest.approx([0.81, 0.79])


def test_a_combined_proxy_ranks_by_the_mean_gap_share_of_its_parts(tmp_path: Path) -> None:
    panel = _panel(tmp_path)
    (tmp_path / "panel.toml").write_text(
        PANEL
        + '[[proxy]]\nname = "bump"\nexperiment = "permMNIST"\niters = 30\n'
        + '[[proxy]]\nname = "good+bump"\nexperiment = "permMNIST"\nparts = ["good", "bump"]\n'
    )
    panel = pnl.load_panel(tmp_path / "panel.toml")
    base = _fake_run([])

    # "bump": 0.7 for every design but d's 0.9
    def run(path: str, cfg: Any, progress: bool = False, **kw: object) -> dict:
        label = Path(path).name.split("-")[0]
        if cfg.iters == 30 and label != "none":
            return {"average_accuracy": 0.9 if label == "d" else 0.7, "hooks_sha256": None}
        return base(path, cfg)

    calls: list = []
    pnl.run_panel(
        panel, benchmarks=["permMNIST"], run_fn=run, joint_fn=_fake_joint(calls), log=lambda _: None
    )
    assert {c[1] for c in calls} == {10, 20, 30}  # the anchors of the three run proxies, none of its own
    res = pnl.write_summary(panel, ["permMNIST"])["benchmarks"]["permMNIST"]
    combined = res["proxies"][-1]
    # gap shares (anchors 0.5 / 1.0): good a 0.7, b 0.6, c 0.5, d 0.4; bump 0.4, 0.4, 0.4, 0.8
    assert combined["scores"] == pytest.approx({"a": 0.55, "b": 0.5, "c": 0.45, "d": 0.6})
    assert combined["spearman_rho"] == pytest.approx(-0.2) and combined["best_in_top3"] is True
    assert combined["steps"] == 10 * 10 + 30 * 10 and not combined["passes"]
    assert combined["settings"] == {"parts": ["good", "bump"]}
    assert "A combined proxy (settings `parts`)" in (tmp_path / "panel.md").read_text()


def _replicate(runs: Path, method: str, seed: int, acc: float) -> None:
    """One final-evaluation record, as the run cache writes it (only the fields the ceiling reads)."""
    folder = runs / "permMNIST"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"method": method, "key": f"{method}key", "seed": seed, "result": {"average_accuracy": acc}}
    (folder / f"{method}__{method}key__seed{seed}.json").write_text(json.dumps(record))


def test_noise_ceiling_from_the_replicate_runs_spread(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # three methods on two seeds each: SDs 0.001, 0.002 and 0.1 (one unstable method); the median is 0.002
    for method, accs in {"x": (0.90, 0.90 + 0.001 * 2**0.5), "y": (0.8, 0.8 + 0.002 * 2**0.5)}.items():
        for seed, acc in zip((42, 43), accs, strict=True):
            _replicate(runs, method, seed, acc)
    _replicate(runs, "z", 42, 0.5)
    _replicate(runs, "z", 43, 0.5 + 0.1 * 2**0.5)
    _replicate(runs, "lone", 42, 0.7)  # one seed: no spread to measure
    sd, methods = pnl.stream_sd(runs, "permMNIST")  # type: ignore[misc]
    assert sd == pytest.approx(0.002) and methods == 3
    assert pnl.stream_sd(runs, "splitMNIST") is None

    # designs far apart against the noise: a second run ranks them as this one, the best stays on top
    apart = pnl.noise_ceiling({"a": 0.95, "b": 0.90, "c": 0.85, "d": 0.80}, 0.002)
    assert apart == {"rho_median": 1.0, "rho_p10": 1.0, "best_in_top3": 1.0}
    # designs within the noise of each other: the order is a coin toss, the best is in the top 3 of 4 by chance
    tied = pnl.noise_ceiling({"a": 0.9503, "b": 0.9502, "c": 0.9501, "d": 0.95}, 0.01)
    assert abs(tied["rho_median"]) < 0.3 and tied["best_in_top3"] == pytest.approx(0.75, abs=0.03)
    # in the report, beside the proxies it bounds
    panel_file = tmp_path / "panel.toml"
    (tmp_path / "mods").mkdir()
    panel_file.write_text(PANEL.replace("val_fraction = 0.1\n", 'val_fraction = 0.1\nreplicates = "runs"\n'))
    panel = pnl.load_panel(panel_file)
    assert panel.replicates == runs
    text = pnl.render(
        {"panel": "p", "benchmarks": {"permMNIST": {"full": {}, "best": None, "proxies": [], "ceiling": {
            **apart, "sd": 0.002, "methods": 3}}}}
    )  # fmt: skip
    assert "rho 1.00 (median; 10th percentile 1.00) and keep the best in its top 3 in 100% of draws" in text
    assert "SD of 0.0020 (the median over 3 methods" in text


def test_bad_panel_files_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text('colour = "red"\n[full_seeds]\npermMNIST = 1001\n')
    with pytest.raises(UserError, match="colour"):
        pnl.load_panel(tmp_path / "p.toml")
    with pytest.raises(UserError, match="does not exist"):
        pnl.load_panel(tmp_path / "missing.toml")
    (tmp_path / "p.toml").write_text(
        '[full_seeds]\npermMNIST = 1001\n[[proxy]]\nname = "x"\nexperiment = "permMNIST"\nlr = "fast"\n'
    )
    with pytest.raises(UserError, match=r"proxy\[0\].lr must be a number"):
        pnl.load_panel(tmp_path / "p.toml")
    (tmp_path / "p.toml").write_text(
        '[full_seeds]\npermMNIST = 1001\n[[proxy]]\nname = "x"\nexperiment = "permMNIST"\n'
        '[[proxy]]\nname = "xy"\nexperiment = "permMNIST"\nparts = ["x", "y"]\n'
    )
    with pytest.raises(UserError, match=r"proxy\[1\].parts must name two or more proxies of permMNIST"):
        pnl.load_panel(tmp_path / "p.toml")


def test_add_from_study_stores_the_best_distinct_designs(tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState, create_trial

    from cli.panel import _add_from_study

    panel = _panel(tmp_path)
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="camp", storage=url, direction="maximize")
    sources = []
    for number, (value, design) in enumerate([(0.5, "mas"), (0.9, "si"), (0.8, "si"), (0.7, "l2")]):
        source = space.generate_source(space.PRESETS[design], {"study": "camp", "trial": number})
        attrs = {
            "design": space.PRESETS[design].to_dict(),
            "module_source": source,
        }  # "si" twice: counted once
        sources.append(source)
        study.add_trial(create_trial(value=value, user_attrs=attrs, state=TrialState.COMPLETE))
    assert _add_from_study(panel, "camp", 2, url) == ["camp_trial_1", "camp_trial_3"]
    assert {"camp_trial_1", "camp_trial_3"} <= set(pnl.panel_modules(panel))
    assert pnl.panel_modules(panel)["camp_trial_1"].read_text() == sources[1]
