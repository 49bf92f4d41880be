"""Promotion end to end on a tiny study with real MNIST: the K best trials re-run at a higher fidelity, the scores
stored on the study and shown by optuna-dashboard as trials of the promoted study, and export / make regenerate
then pick the best at the highest fidelity, byte for byte."""

from __future__ import annotations

import hashlib
import multiprocessing
import re
import shutil
import time
from pathlib import Path

import optuna
import optuna_dashboard
import pytest
from search_fakes import generated
from test_dashboard import study_detail, wsgi_get
from test_search_e2e import tiny_study

import space
from cli.main import main as search_main
from evaluation.cache import sha256_text
from evaluation.errors import UserError
from search import annotate, storage
from search.dashboard import prepare
from search.export import trial_module, trial_source
from search.promote import record_promoted
from search.records import (
    PREFIX,
    PROMOTED_METRIC,
    best_promoted,
    promoted,
    promoted_study_name,
    rank_trials,
)
from search.storage import make_storage, open_study
from search.studies import load_study_def
from search.workers import run_study


def test_promote_the_tiny_study_and_export_the_best_at_the_higher_fidelity(
    tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("CL_DATA_DIR", str(mnist_root))
    path = tiny_study(tmp_path, "tiny_promote", 4, ["ewc", "sqrt_fisher"])
    study_def = load_study_def(path)
    url = f"sqlite:///{tmp_path / 'promote.db'}"
    assert run_study(study_def, url, data_dir=str(mnist_root), device="cpu") == 0
    study = open_study("tiny_promote", url)
    ranked = rank_trials(study.get_trials())
    assert best_promoted(study) is None
    before = trial_source("tiny_promote", url)
    # only the proxy ran: the bytes it scored
    assert sha256_text(before) == ranked[0].user_attrs["module_sha256"]

    out = tmp_path / "fidelity"
    args = [
        "promote",
        "--study",
        str(path),
        "--storage",
        url,
        "--top",
        "2",
        "--iters",
        "30",
        "--out",
        str(out),
    ]
    assert search_main(args) == 0
    # The two best, and the warm starts (ewc and sqrt_fisher, trials 0 and 1) wherever they ranked.
    chosen = sorted({t.number for t in ranked[:2]} | {0, 1})
    assert (
        f"promoted {len(chosen)} trials of study tiny_promote at fidelity iters30" in capsys.readouterr().out
    )
    study = open_study("tiny_promote", url)
    entries = promoted(study)
    assert sorted(e["trial"] for e in entries) == chosen
    for e in entries:
        assert f"{PREFIX}iters30:{e['trial']}" in study.user_attrs
        anchor = e["anchors"]["splitMNIST"]
        assert 0.5 < anchor["none"] < anchor["joint"] <= 1.0
        gap = (e["scores"]["splitMNIST"] - anchor["none"]) / (anchor["joint"] - anchor["none"])
        assert e["value"] == pytest.approx(gap) and e["iterations"] == 30 * 5  # all 5 contexts
    # Cached: none, joint and each promoted trial at 30 iterations, filed under the fidelity folder.
    assert len(list((out / "runs" / "splitMNIST").glob("*.json"))) == 2 + len(chosen)
    promoted_trials = promoted_study_trials(url, study, entries, tmp_path / "promote.artifacts")
    assert search_main(args) == 0  # again: everything comes from the cache, the results are the same
    assert promoted(open_study("tiny_promote", url)) == entries
    assert len(optuna.load_study(study_name="tiny_promote:promoted", storage=url).trials) == promoted_trials
    assert record_promoted(study, make_storage(url), artifact_folder=None) == []  # recorded once only

    best = max(entries, key=lambda e: e["value"])
    exported = tmp_path / "custom_regularization.py"
    assert search_main(["export", "--study", "tiny_promote", "--storage", url, "--out", str(exported)]) == 0
    text = exported.read_text()
    assert f"trial {best['trial']} (chosen at fidelity iters30)" in text
    design = space.Design.from_dict(study.trials[best["trial"]].user_attrs["design"])
    assert text == space.generate_source(
        design, {"study": "tiny_promote", "trial": best["trial"], "fidelity": "iters30"}
    )
    # make regenerate reproduces it byte for byte, and so does the command in its header.
    assert trial_source("tiny_promote", url) == text
    assert trial_source("tiny_promote", url, trial=best["trial"]) == text


def promoted_study_trials(url: str, study: optuna.Study, entries: list[dict], artifacts: Path) -> int:
    """Check the promoted study as optuna-dashboard serves it: a trial per promoted trial with the source trial's
    parameters, the promoted value, sortable per-benchmark scores, a note and the module; returns its size."""
    app = optuna_dashboard.wsgi(url, artifact_store=annotate.artifact_store(artifacts))
    detail = study_detail(app, promoted_study_name("tiny_promote"))
    assert detail["objective_names"] == [PROMOTED_METRIC]
    assert "promoted trials of study `tiny_promote`" in detail["note"]["body"]
    sortable = {a["key"]: a["sortable"] for a in detail["union_user_attrs"]}
    for key in ("promoted_splitMNIST", "promoted_gap_splitMNIST", "proxy_splitMNIST", "source_trial"):
        assert sortable[key], key
    assert not sortable["fidelity"]  # a string: shown, not sorted
    served = {}
    for trial in detail["trials"]:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        served[int(attrs["source_trial"])] = (trial, attrs)
    assert sorted(served) == sorted(e["trial"] for e in entries)
    by_number = {
        t.number: t for t in optuna.load_study(study_name="tiny_promote:promoted", storage=url).trials
    }
    for e in entries:
        trial, attrs = served[e["trial"]]
        source = study.trials[e["trial"]]
        assert trial["values"] == [pytest.approx(e["value"])] and attrs["fidelity"] == "iters30"
        assert float(attrs["promoted_splitMNIST"]) == pytest.approx(e["scores"]["splitMNIST"])
        assert float(attrs["promoted_gap_splitMNIST"]) == pytest.approx(e["gaps"]["splitMNIST"])
        assert float(attrs["proxy_splitMNIST"]) == pytest.approx(source.user_attrs["proxy_splitMNIST"])
        frozen = by_number[trial["number"]]
        assert frozen.params == source.params and frozen.distributions == source.distributions
        row = f"| splitMNIST | {e['scores']['splitMNIST']:.4f} | {e['gaps']['splitMNIST']:.4f} |"
        assert trial["note"]["body"].startswith("**Design:**") and row in trial["note"]["body"]
        [artifact] = trial["artifacts"]
        _, _, body = wsgi_get(
            app, f"/artifacts/{detail['study_id']}/{trial['trial_id']}/{artifact['artifact_id']}"
        )
        assert body.decode() == trial_module(source, "tiny_promote")
    return len(detail["trials"])


def test_a_reference_study_is_never_written_and_its_promoted_trials_are_served_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'local.db'}"
    study = optuna.create_study(study_name="ref", storage=url, direction="maximize")
    study.add_trial(
        optuna.create_trial(
            value=0.5,
            params={"x": 0.25},
            distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            user_attrs={"description": "x is a quarter", "module_source": "X = 0.25\n"},
        )
    )
    scores = {"trial": 0, "fidelity": "full", "iterations": 100, "value": 0.75, "proxy_value": 0.5}
    study.set_user_attr(
        f"{PREFIX}full:0",
        {**scores, "scores": {"splitMNIST": 0.9}, "gaps": {"splitMNIST": 0.75}, "module_sha256": "0" * 64},
    )
    folder = tmp_path / "studies"
    folder.mkdir()
    monkeypatch.setattr(storage, "studies_dir", lambda: folder)  # stands in for the repository's studies/
    db = folder / "ref.db"
    shutil.copy(tmp_path / "local.db", db)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    ref_url = f"sqlite:///{db}"
    with pytest.raises(UserError, match="committed reference study and read-only"):
        record_promoted(open_study("ref", ref_url), make_storage(ref_url), artifact_folder=tmp_path)
    served, what = prepare("ref", ref_url)  # what `python -m search dashboard` serves
    assert "in-memory copy" in what
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    [trial] = optuna.load_study(study_name="ref:promoted", storage=served).trials
    assert trial.params == {"x": 0.25} and trial.value == 0.75
    assert trial.user_attrs["promoted_splitMNIST"] == 0.9 and trial.user_attrs["source_trial"] == 0
    assert not list(tmp_path.glob("**/*.artifacts"))  # no module file written for a reference
    # Your own study gets the record in its file, once.
    assert record_promoted(study, make_storage(url), artifact_folder=None) == [0]
    assert record_promoted(study, make_storage(url), artifact_folder=None) == []


def test_promote_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tiny_study(tmp_path, "tiny_args", 2, [])
    assert search_main(["promote", "--study", str(path), "--top", "0"]) == 2
    assert search_main(["promote", "--study", str(path), "--iters", "0"]) == 2
    err = capsys.readouterr().err
    assert "--top must be at least 1" in err and "--iters must be at least 1" in err


def _promote_with_fake_runs(path: Path, url: str, out: Path, calls: Path, also: Path | None = None) -> None:
    """`promote` of the study at `path` (with `also`, that study's too, as one pool of runs), fake runs."""
    from evaluation import claims
    from search import promote as prm

    def run(hooks_path: str | None, cfg: object, progress: bool = False, **kw: object) -> dict:
        name = "joint" if hooks_path is None else Path(hooks_path).stem.split("-")[0]
        with calls.open("a") as f:
            f.write(f"{name}\n")
        time.sleep(0.2)
        acc = {"none": 0.5, "joint": 1.0}.get(name, 0.8)
        return {"average_accuracy": acc, "data_source": "torchvision"}

    claims.CLAIM_POLL_S = 0.05
    fakes = {"run_fn": run, "joint_fn": lambda cfg, progress=False: run(None, cfg), "log": lambda line: None}
    if also is None:
        prm.promote(
            open_study("tiny_side", url), load_study_def(path), storage=make_storage(url), top=2, out_dir=out,
            **fakes,
        )  # fmt: skip
        return
    plans = [
        prm.plan(open_study(d.name, url), d, storage=make_storage(url), top=2, out_dir=out)
        for d in (load_study_def(path), load_study_def(also))
    ]
    prm.run_plans(plans, **fakes)
    for p in plans:
        prm.score(p, **fakes)


def test_two_promote_processes_side_by_side_run_each_run_once_and_record_once(tmp_path: Path) -> None:
    path = tiny_study(tmp_path, "tiny_side", 4, [])
    url = f"sqlite:///{tmp_path / 'side.db'}"
    study = open_study("tiny_side", url, create=True)
    for i, value in enumerate((0.4, 0.9, 0.7)):  # three designs (strength scales 1, 1.5, 2)
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=generated("tiny_side", i, i / 2)))
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_promote_with_fake_runs, args=(path, url, tmp_path / "out", tmp_path / "calls"))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    # none, joint and the two best designs, once each, over both processes
    assert sorted((tmp_path / "calls").read_text().split()) == ["joint", "none", "trial_1", "trial_2"]
    study = open_study("tiny_side", url)
    assert sorted(e["trial"] for e in promoted(study)) == [1, 2]
    companion = optuna.load_study(study_name=promoted_study_name("tiny_side"), storage=url)
    assert sorted(t.user_attrs["source_trial"] for t in companion.trials) == [1, 2]  # recorded once
    assert not list((tmp_path / "out").rglob("*.claim"))


def test_several_studies_promoted_as_one_pool_share_the_anchors_and_record_each_once(tmp_path: Path) -> None:
    """`promote --study A B`: one pool of runs over both studies (the anchors once), two processes sharing it
    wait for each other only at its end; each study gets its own results."""
    url = f"sqlite:///{tmp_path / 'side.db'}"
    paths = [tiny_study(tmp_path, name, 4, []) for name in ("tiny_side", "tiny_other")]
    for name, offset in (("tiny_side", 0.0), ("tiny_other", 0.25)):  # other strengths: other experiments
        study = open_study(name, url, create=True)
        for i, value in enumerate((0.4, 0.9, 0.7)):
            study.add_trial(
                optuna.trial.create_trial(value=value, user_attrs=generated(name, i, i / 2 + offset))
            )
    ctx = multiprocessing.get_context("fork")
    args = (paths[0], url, tmp_path / "out", tmp_path / "calls", paths[1])
    procs = [ctx.Process(target=_promote_with_fake_runs, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    # the anchors once for both studies; each study's two best once
    calls = sorted((tmp_path / "calls").read_text().split())
    assert calls == ["joint", "none", "trial_1", "trial_1", "trial_2", "trial_2"]
    for name in ("tiny_side", "tiny_other"):
        assert sorted(e["trial"] for e in promoted(open_study(name, url))) == [1, 2]
    assert not list((tmp_path / "out").rglob("*.claim"))


def test_export_of_several_studies_ships_the_best_promoted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`export --study campaign mas ...` writes the best trial of the study whose best promoted score is highest,
    as `export --study <that one>` does; every study named must be promoted, all at one fidelity."""
    monkeypatch.setattr(storage, "default_storage_url", lambda name: f"sqlite:///{tmp_path / name}.db")
    designs = {"campaign": space.VARIANTS["mas_calibrated"], "mas": space.PRESETS["mas"]}
    for name, promoted_values in (("campaign", [0.80, 0.79]), ("mas", [0.70, 0.82])):
        study = open_study(name, create=True)
        for trial, value in enumerate(promoted_values):
            source = space.generate_source(designs[name], {"study": name, "trial": trial})
            study.add_trial(
                optuna.trial.create_trial(
                    value=0.5, user_attrs={"design": designs[name].to_dict(), "module_source": source}
                )
            )
            entry = {"trial": trial, "fidelity": "full", "iterations": 100, "value": value}
            study.set_user_attr(f"{PREFIX}full:{trial}", entry)
    out = tmp_path / "custom_regularization.py"
    assert search_main(["export", "--study", "campaign", "mas", "--out", str(out)]) == 0
    assert out.read_text() == space.generate_source(
        designs["mas"], {"study": "mas", "trial": 1, "fidelity": "full"}
    )
    assert out.read_text() == trial_source(
        "mas", storage.default_storage_url("mas")
    )  # regenerate from it alone
    printed = capsys.readouterr().out
    assert (
        "best promoted (full fidelity, validation split): mas trial 1 0.8200, campaign trial 0 0.8000"
        in printed
    )

    def refused(*studies: str, extra: tuple[str, ...] = ()) -> str:
        assert search_main(["export", "--study", *studies, *extra, "--out", str(out)]) == 2
        return capsys.readouterr().err

    open_study("l2", create=True)
    assert "study l2 has no promoted trial" in refused("campaign", "l2")
    assert "--trial and --storage go with one --study" in refused("campaign", "mas", extra=("--trial", "0"))
    cheap = {"trial": 0, "fidelity": "iters10", "iterations": 10, "value": 0.99}
    open_study("l2").set_user_attr(f"{PREFIX}iters10:0", cheap)
    assert "different fidelities (campaign at full, l2 at iters10)" in refused("campaign", "l2")


def test_promotion_takes_the_warm_starts_wherever_they_ranked(tmp_path: Path) -> None:
    """The `top` best distinct designs run, and so does every warm start: a proxy that misjudges a published
    setting's strength cannot keep it from the final choice. One design is promoted once however often it ran."""
    from search.promote import promote

    study_def = load_study_def(tiny_study(tmp_path, "tiny_ws", 4, ["ewc"]))
    url = f"sqlite:///{tmp_path / 'ws.db'}"
    study = open_study("tiny_ws", url, create=True)
    trials = [
        ("ewc", 0.10, "ewc"),
        ("mas", 0.50, None),
        ("si", 0.70, None),
        ("l2", 0.60, None),
        ("si", 0.65, None),
    ]
    for number, (preset, value, warm) in enumerate(trials):
        design = space.PRESETS[preset]
        attrs = {
            "design": design.to_dict(),
            "module_source": space.generate_source(design, {"study": "tiny_ws", "trial": number}),
        }
        study.add_trial(
            optuna.trial.create_trial(
                value=value, user_attrs={**attrs, **({"warm_start": warm} if warm else {})}
            )
        )
    accuracy = {"ewc": 0.9, "mas": 0.8, "si": 0.7, "l2": 0.6, "none": 0.5}

    def fake_run(module: str, cfg: object, progress: bool = False, **kw: object) -> dict:
        text = Path(module).read_text()
        if "Provenance: preset=none\n" in text:
            return {"average_accuracy": accuracy["none"]}
        number = int(re.search(r"^Provenance: study=tiny_ws, trial=(\d+)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
        return {"average_accuracy": accuracy[trials[number][0]]}

    def fake_joint(cfg: object, progress: bool = False) -> dict:
        return {"average_accuracy": 1.0}

    results = promote(
        study,
        study_def,
        storage=make_storage(url),
        top=2,
        out_dir=tmp_path / "fid",
        run_fn=fake_run,
        joint_fn=fake_joint,
        log=lambda line: None,
    )
    assert sorted(results) == [
        0,
        2,
        3,
    ]  # si (0.70) and l2 (0.60) by proxy; trial 4 is si again; ewc warm start
    assert best_promoted(open_study("tiny_ws", url)) == results[0]  # the warm start wins at full fidelity
    assert results[0]["value"] == pytest.approx((0.9 - 0.5) / (1.0 - 0.5))

    # `status` lists them best first beside their proxy values and ranks, with Spearman's rho between the two
    from search.status import format_status

    opened = open_study("tiny_ws", url)
    lines = format_status(opened, None).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("promoted to fidelity"))
    rows = [line.split()[:4] for line in lines[at + 2 : at + 5]]
    assert rows == [
        ["0", "0.8000", "0.1000", "5"],
        ["2", "0.4000", "0.7000", "1"],
        ["3", "0.2000", "0.6000", "3"],
    ]
    # proxy ranks 1, 3, 2 against full ranks 3, 2, 1: rho = 1 - 6 * (4 + 1 + 1) / (3 * (9 - 1)) = -0.5
    assert lines[at + 5].endswith("over these 3: Spearman rho -0.50")

    # Promoted again on two validation streams: each design scores the mean over them, the result is filed as
    # its own fidelity, and it ranks above the one-stream results (twice the iterations).
    seen: list[int] = []

    def two_streams(module: str, cfg: object, progress: bool = False, **kw: object) -> dict:
        seen.append(cfg.seed)  # type: ignore[attr-defined]
        shift = 0.1 if cfg.seed == 1003 and "trial=3" in Path(module).read_text() else 0.0  # type: ignore[attr-defined]
        return {"average_accuracy": fake_run(module, cfg)["average_accuracy"] + shift}

    again = promote(
        opened,
        study_def,
        storage=make_storage(url),
        top=2,
        streams={"splitMNIST": (1000, 1003)},
        out_dir=tmp_path / "fid",
        run_fn=two_streams,
        joint_fn=fake_joint,
        log=lambda line: None,
    )
    assert set(seen) == {1003}  # stream 1000 is already cached: only the second stream runs
    assert again[3]["fidelity"] == "full-2streams" and again[3]["streams"] == {"splitMNIST": [1000, 1003]}
    assert again[3]["scores"]["splitMNIST"] == pytest.approx(0.65)  # (0.6 + 0.7) / 2
    best = best_promoted(open_study("tiny_ws", url))
    assert best is not None and best["fidelity"] == "full-2streams" and best["trial"] == 0
    with pytest.raises(UserError, match="not a benchmark"):
        promote(opened, study_def, storage=make_storage(url), top=1, streams={"permMNIST": (1001, 1002)})

    # The budget rule's second stream for the best two at full fidelity (--from full): trials 0 (0.8) and 2
    # (0.4), not the proxy's best two (2 and 3), and no warm start beyond them; trial 3, third at full, stays.
    seen.clear()
    fresh_out = tmp_path / "fid2"  # a fresh cache: every run that is asked for runs
    picked = promote(
        open_study("tiny_ws", url),
        study_def,
        storage=make_storage(url),
        top=2,
        rank_from="full",
        streams={"splitMNIST": (1000, 1003)},
        out_dir=fresh_out,
        run_fn=two_streams,
        joint_fn=fake_joint,
        log=lambda line: None,
    )
    assert sorted(picked) == [0, 2]
    with pytest.raises(UserError, match=r"no results at fidelity 'contexts4' to rank by \(it has full"):
        promote(
            open_study("tiny_ws", url), study_def, storage=make_storage(url), top=2, rank_from="contexts4"
        )


def test_proxies_that_are_one_run_at_full_fidelity_share_a_status_column() -> None:
    """The campaign's two Permuted-MNIST proxies (short; learning-rate-matched) become the same full run, so
    `status` shows one column for them and says so; at a reduced fidelity they stay apart."""
    from search.promote import shared_runs
    from search.status import format_promoted

    study_def = load_study_def("campaign")
    assert shared_runs(study_def, "full") == [["permMNIST_n500", "permMNIST_lr"], ["splitMNIST"]]
    assert shared_runs(study_def, "iters80") == [["permMNIST_n500"], ["permMNIST_lr"], ["splitMNIST"]]

    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.6))
    scores = {"permMNIST_n500": 0.95, "permMNIST_lr": 0.95, "splitMNIST": 0.99}
    entry = {
        "trial": 0,
        "fidelity": "full",
        "iterations": 1,
        "value": 0.8,
        "proxy_value": 0.6,
        "scores": scores,
    }
    study.set_user_attr(f"{PREFIX}full:0", entry)
    complete = rank_trials(study.get_trials())
    lines = format_promoted(study, complete, study_def)
    assert lines[1].split() == ["trial", "value", "proxy", "rank", "permMNIST", "splitMNIST"]
    assert lines[2].split() == ["0", "0.8000", "0.6000", "1", "0.9500", "0.9900"]
    assert lines[3] == "  permMNIST: one run for permMNIST_n500 and permMNIST_lr at this fidelity"
    assert format_promoted(study, complete)[1].split()[4:] == ["permMNIST_n500", "permMNIST_lr", "splitMNIST"]


def test_status_shows_each_rung_of_the_ladder_cheapest_first_with_its_share_and_best() -> None:
    """Ten proxy trials, four promoted to contexts4, two of those to full-2streams: one line per rung, ordered by
    the iterations a rung runs, with the share of the complete trials that reached it and its best trial."""
    from search.status import format_ladder

    study = optuna.create_study(direction="maximize")
    for value in range(10):
        study.add_trial(optuna.trial.create_trial(value=value / 10))
    for trial, fidelity, iterations, value in [
        (9, "contexts4", 40, 0.91),
        (8, "contexts4", 40, 0.93),
        (7, "contexts4", 40, 0.90),
        (6, "contexts4", 40, 0.92),
        (9, "full-2streams", 200, 0.89),
        (8, "full-2streams", 200, 0.88),
    ]:
        entry = {
            "trial": trial,
            "fidelity": fidelity,
            "iterations": iterations,
            "value": value,
            "proxy_value": 0,
        }
        study.set_user_attr(f"{PREFIX}{fidelity}:{trial}", entry)
    lines = format_ladder(study, rank_trials(study.get_trials()))
    assert [line.split() for line in lines[2:]] == [
        ["proxy", "10", "100%", "trial", "9", "0.9000"],
        ["contexts4", "4", "40%", "trial", "8", "0.9300"],
        ["full-2streams", "2", "20%", "trial", "9", "0.8900"],
    ]
    assert format_ladder(optuna.create_study(), []) == []
