"""The split check (bench/split_check.py): the validation and test splits of one stream side by side."""

from __future__ import annotations

from evaluation import split_check


def _runs(accs: dict[str, dict[int, float]]) -> dict[str, dict[int, dict]]:
    return {
        m: {s: {"result": {"average_accuracy": a}} for s, a in by_seed.items()} for m, by_seed in accs.items()
    }


def test_each_method_beside_itself_on_either_split_with_the_candidates_lead() -> None:
    val = _runs({"candidate": {100: 0.955}, "mas": {100: 0.945}})
    test = _runs({"candidate": {100: 0.956, 101: 0.960}, "mas": {100: 0.958, 101: 0.947}})
    rows = split_check.table(val, test, [100, 101], ["candidate", "mas"])
    assert rows[2:] == [
        "| 100 | `candidate` | 0.9550 | 0.9560 | — | — |",
        "| 100 | `mas` | 0.9450 | 0.9580 | +0.0100 | -0.0020 |",  # the splits disagree on this stream
        "| 101 | `candidate` | — | 0.9600 | — | — |",
        "| 101 | `mas` | — | 0.9470 | — | +0.0130 |",  # not run on the validation split: no lead there
    ]
