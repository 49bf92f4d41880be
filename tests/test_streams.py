"""Full-protocol runs on several validation streams (evaluation/streams.py, `python -m search validate`)."""

from __future__ import annotations

from pathlib import Path

import pytest

import space
from cli.main import main as search_main
from evaluation import streams


def _modules(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("ewc", "mas"):
        path = tmp_path / f"{name}.py"
        space.write_module(path, space.generate_source(space.PRESETS[name], {"preset": name}))
        out[name] = path
    return out


def test_runs_each_module_once_per_stream_reuses_the_cache_and_tabulates_the_mean(tmp_path: Path) -> None:
    calls: list[tuple[str, int]] = []

    def fake(module: str, cfg: object, progress: bool = False, **kw: object) -> dict:
        name = Path(module).stem
        seed = cfg.seed  # type: ignore[attr-defined]
        calls.append((name, seed))
        acc = {"ewc": 0.90, "mas": 0.95}[name] + (0.01 if seed == 1002 else 0.0)
        return {"average_accuracy": acc, "per_context_accuracy": [acc, acc], "data_source": "torchvision"}

    runs = streams.plan(_modules(tmp_path), "permMNIST", [1001, 1002], device="cpu")
    assert [(r.label, r.cfg.seed, r.cfg.eval_split) for r in runs] == [
        ("ewc", 1001, "val"), ("ewc", 1002, "val"), ("mas", 1001, "val"), ("mas", 1002, "val"),
    ]  # fmt: skip
    streams.run(runs, tmp_path / "runs", run_fn=fake, log=lambda line: None)
    streams.run(runs, tmp_path / "runs", run_fn=fake, log=lambda line: None)  # all cached: nothing runs
    assert sorted(calls) == [("ewc", 1001), ("ewc", 1002), ("mas", 1001), ("mas", 1002)]
    text = streams.table(runs, tmp_path / "runs")
    assert "| `mas` | 1002 | 0.9600 | 0.9600 | 0.9600 |" in text
    # the means over the two streams, best first
    assert text.rstrip().endswith("| `mas` | 0.9550 |\n| `ewc` | 0.9050 |".rstrip())


def test_validate_refuses_a_bad_module_spec_and_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert search_main(["validate", "--module", "no-equals-sign", "--report-only"]) == 2
    assert search_main(["validate", "--module", f"x={tmp_path / 'absent.py'}", "--report-only"]) == 2
    assert search_main(["validate", "--module", "mas", "--contexts", "0", "--report-only"]) == 2
    err = capsys.readouterr().err
    assert (
        "expected LABEL=PATH" in err
        and "does not exist" in err
        and "--contexts 0: expected at least 1" in err
    )


def test_a_preset_at_a_multiple_of_its_strength_is_a_sweep_point(tmp_path: Path) -> None:
    from cli.validate import _modules

    modules = _modules(["mas@4", "ewc@0.5", "kfac_ewc"], tmp_path)
    assert list(modules) == ["mas_x4", "ewc_x0p5", "kfac_ewc"]
    text = modules["mas_x4"].read_text()
    assert (
        f'CONFIG_OVERRIDES = {{"reg_strength_scale": {4 * space.PRESETS["mas"].reg_strength_scale!r}}}'
        in text
    )
    assert search_main(["validate", "--module", "mas@-1", "--report-only"]) == 2


def test_a_rung_of_the_first_contexts_is_ranked_against_the_full_runs_stream_by_stream(
    tmp_path: Path,
) -> None:
    """`validate --contexts N` runs the first N contexts (the ladder's middle rung) and ranks the modules against
    their full runs: on stream 1001 the rung keeps the full order, on 1002 it swaps the best two."""
    full = {"mas": 0.95, "ewc": 0.94, "online_ewc": 0.93, "si": 0.92, "l2": 0.90, "none": 0.80}
    swapped = {**full, "mas": full["ewc"], "ewc": full["mas"]}

    def fake(module: str, cfg: object, progress: bool = False, **kw: object) -> dict:
        name, seed, contexts = Path(module).stem, cfg.seed, cfg.contexts  # type: ignore[attr-defined]
        acc = full[name] if contexts is None else (swapped if seed == 1002 else full)[name] + 0.02
        return {"average_accuracy": acc, "per_context_accuracy": [acc] * (contexts or 10), "data_source": "x"}

    modules = {}
    for name in full:
        modules[name] = tmp_path / f"{name}.py"
        space.write_module(modules[name], space.generate_source(space.PRESETS[name], {"preset": name}))
    rung = streams.plan(modules, "permMNIST", [1001, 1002], device="cpu", contexts=4)
    whole = streams.plan(modules, "permMNIST", [1001, 1002], device="cpu")
    assert {r.cfg.contexts for r in rung} == {4} and {r.cfg.contexts for r in whole} == {None}
    for runs in (rung, whole):
        streams.run(runs, tmp_path / "runs", run_fn=fake, log=lambda line: None)
    text = streams.rung_table(rung, whole, tmp_path / "runs")
    # 1002: two of six designs swapped (rho 1 - 6*2/(6*35)); among the strong three the best two (1 - 6*2/24)
    assert "| the first 4 contexts | 1001 | 6 | 1.00 | 1.00 | yes |" in text
    assert "| the first 4 contexts | 1002 | 6 | 0.94 | 0.50 | yes |" in text
    assert "| the first 4 contexts | 1001 and 1002 (mean) | 6 |" in text
    assert "Cost per design and stream, over the 12 runs with both (median wall time" in text
    assert "| `mas` | 0.9700 | 0.9500 | 0.9600 | 0.9500 |" in text
    # A proxy for five of the six designs, with its best two swapped, ranked against the same full runs (rho
    # 1 - 6*2/(5*24), the strong three 1 - 6*2/(3*8)), beside the rung over the same five (swapped on 1002 too).
    proxy = {"mas": 0.60, "ewc": 0.61, "online_ewc": 0.55, "si": 0.50, "l2": 0.40}
    text = streams.rung_table(rung, whole, tmp_path / "runs", proxy)
    assert "| the proxy | 1001 | 5 | 0.90 | 0.50 | yes |" in text
    assert "| the first 4 contexts, the proxy's designs | 1001 | 5 | 1.00 | 1.00 | yes |" in text
    assert "| the first 4 contexts, the proxy's designs | 1002 | 5 | 0.90 | 0.50 | yes |" in text
    assert "| `mas` | 0.6000 | 0.9700 | 0.9500 | 0.9600 | 0.9500 |" in text
    assert "| `none` | — | 0.8200 | 0.8000 | 0.8200 | 0.8000 |" in text


def test_finalists_are_the_modules_a_study_promoted_at_its_highest_fidelity(tmp_path: Path) -> None:
    """`validate --finalists mas` takes the committed MAS study's two-stream finalists as the modules they scored
    (the sha256 their promotion recorded), so their full runs are found again, not rerun."""
    from cli.validate import _finalists
    from evaluation.cache import sha256_text
    from search.records import promoted
    from search.storage import open_study, read_storage_url

    entries = [
        e for e in promoted(open_study("mas", read_storage_url("mas"))) if e["fidelity"] == "full-2streams"
    ]
    modules, proxy = _finalists(["mas"], tmp_path)
    study = open_study("mas", read_storage_url("mas"))
    assert proxy == {f"mas_{e['trial']}": study.trials[e["trial"]].value for e in entries}
    assert list(modules) == [f"mas_{e['trial']}" for e in sorted(entries, key=lambda e: -e["value"])]
    assert list(modules)[:2] == ["mas_31", "mas_32"]
    for e in entries:
        assert sha256_text(modules[f"mas_{e['trial']}"].read_text()) == e["module_sha256"]
    assert search_main(["validate", "--report-only"]) == 2


def test_a_module_is_valued_on_a_studys_promoted_scale_from_its_cached_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`validate --value mas`: the committed cache gives MAS trial 31 exactly the value its two-stream promotion
    stored (its Split-MNIST runs are filed under the promotion's `trial_31`), and `kfac_ewc`, which no study
    tuned, its value on the same scale; a module without runs is named with what it lacks."""
    from cli.validate import _finalists
    from search.objective import objective_value
    from search.records import best_promoted
    from search.storage import open_study, read_storage_url
    from search.studies import load_study_def, repo_root

    entry = best_promoted(open_study("mas", read_storage_url("mas")))
    assert entry is not None and entry["trial"] == 31
    modules, _ = _finalists(["mas"], tmp_path)
    modules = {"mas_31": modules["mas_31"]}
    for label, design, provenance in [
        ("kfac_ewc", space.PRESETS["kfac_ewc"], {"preset": "kfac_ewc"}),  # as `validate --module kfac_ewc`
        ("unrun", space.PRESETS["ewc"].replace(reg_strength_scale=0.123), {}),
    ]:
        modules[label] = tmp_path / f"{label}.py"
        space.write_module(modules[label], space.generate_source(design, provenance))
    study_def = load_study_def("mas")
    assert [b.weight for b in study_def.benchmarks] == [1.0, 1.0, 0.4]
    runs = repo_root() / "results" / "fidelity" / "runs"
    text, values = streams.value_table(
        modules,
        {b.label: b.experiment for b in study_def.benchmarks},
        entry["streams"],
        lambda scores: objective_value(scores, study_def, entry["anchors"]),
        runs,
        device="cpu",
    )
    assert values["mas_31"] == pytest.approx(entry["value"], abs=1e-12)
    assert (
        round(values["kfac_ewc"], 4) == 0.9367
    )  # docs/fidelity-log.md, "`kfac_ewc` through the go/no-go's rule"
    assert "unrun" not in values
    assert "| `unrun` | not run: 1001, 1002 | not run: 1001, 1002 | not run: 1000, 1003 | — |" in text
    assert search_main(["validate", "--report-only", "--module", "mas", "--value", "kfac"]) == 2
    assert "--value kfac: the study has no promoted trial" in capsys.readouterr().err
