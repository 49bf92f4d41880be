"""A cached run record that is there but broken (issue 32, item 4): it does not parse, or its key is not the one
of its fields, and results-table and final-eval stop with one line naming the file and how to redo it, instead of
leaving it out (a seed fewer, other p-values) or running it again. An absent record is still a run to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main as search_main
from evaluation import cache, report
from evaluation import final_eval as fe

REPO = Path(__file__).resolve().parents[1]
HOOKS = REPO / "tests" / "hooks"


def _fake_result(experiment: str, seed: int) -> dict:
    return {
        "experiment": experiment,
        "seed": seed,
        "average_accuracy": 0.9,
        "per_context_accuracy": [0.9] * 5,
        "acc_matrix": [[0.9] * (i + 1) for i in range(5)],
        "device": "cpu",
        "data_source": "torchvision",
    }


def _records(out: Path, seeds: tuple[int, ...] = (42, 43)) -> list[cache.Job]:
    """Records of `ewc` on Split-MNIST at the published protocol (final-eval's keys), as the cache writes them."""
    methods = fe.resolve_methods(["ewc"], hooks=None, candidate=None, tuned=None, module_dir=out / "modules")
    jobs = fe.plan(methods, ["splitMNIST"], list(seeds), runs_dir=out / "runs")
    for job in jobs:
        cfg = cache.make_config(job.experiment, job.seed, device="cpu")
        cache.store(job, cfg, _fake_result(job.experiment, job.seed), 1.0)
    return jobs


def _broken(kind: str, path: Path) -> None:
    record = json.loads(path.read_text())
    if kind == "truncated":
        path.write_text(path.read_text()[:100])
    elif kind == "key":  # another configuration's fields under this key
        record["key_fields"]["config"]["iters"] += 1
        path.write_text(json.dumps(record))
    elif kind == "seed":
        record["seed"] += 1
        path.write_text(json.dumps(record))


@pytest.mark.parametrize("kind", ["truncated", "key", "seed"])
def test_a_broken_record_is_refused_naming_the_file_and_an_absent_one_is_to_do(
    tmp_path: Path, kind: str
) -> None:
    jobs = _records(tmp_path)
    path = jobs[0].path
    assert cache.load_record(path) is not None
    assert cache.load_record(path.with_name("ewc__0000000000000000__seed7.json")) is None  # absent: to do
    _broken(kind, path)
    with pytest.raises(cache.CorruptRecord) as caught:
        cache.load_record(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "delete it and rerun" in message and f"rm {path}" in message


def test_results_table_stops_on_a_broken_record(tmp_path: Path) -> None:
    """`make results-table` (`evaluation.report`): a truncated record is refused, not left out of the table."""
    jobs = _records(tmp_path)
    results, _, _ = report.results_as_cached(tmp_path, ["splitMNIST"])
    assert sorted(results["splitMNIST"]["ewc"]) == [42, 43]
    _broken("truncated", jobs[1].path)
    with pytest.raises(cache.CorruptRecord, match=f"cached run {jobs[1].path} is corrupted"):
        report.results_as_cached(tmp_path, ["splitMNIST"])


def test_final_eval_stops_on_a_broken_record_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its report (`--report-only`) and its runs: exit 2, one line naming the file; the run is not redone."""
    jobs = _records(tmp_path)
    _broken("key", jobs[0].path)
    before = jobs[0].path.read_bytes()
    argv = ["final-eval", "--report-only", "--methods", "ewc", "--benchmarks", "splitMNIST"]
    assert search_main([*argv, "--seeds", "42", "43", "--out", str(tmp_path)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: cached run {jobs[0].path} is corrupted"), line

    ran: list[object] = []

    def run(*args: object, **kw: object) -> dict:
        ran.append(args)
        raise AssertionError("a broken record is redone")

    with pytest.raises(cache.CorruptRecord):
        fe.run_jobs(jobs, run_fn=run, joint_fn=run, log=lambda line: None)
    assert ran == [] and jobs[0].path.read_bytes() == before
