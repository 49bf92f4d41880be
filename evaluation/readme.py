"""The project README's results block (`make results-table`): the verdict on the fresh Permuted-MNIST streams,
every method's mean ± SE, the candidate's paired difference against each baseline, and the held-out streams,
written between the README's markers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import fmean, stdev

from clharness.atomic import write_atomic

from evaluation.cache import SEARCHED
from evaluation.published import BENCHMARK_TITLES, REFERENCES
from evaluation.stats import ALPHA, CANDIDATE, Comparison, compare, paired_differences, side, summarize
from evaluation.stats_text import comparison_numbers, p_text, paired_tests, stats_note, table_tests

README_START = "<!-- results: start, written by `make results-table` from the cached runs -->"
README_END = "<!-- results: end -->"


def _cell(values: Sequence[float]) -> str:
    s = summarize(values)
    return f"{s.mean:.4f} ± {s.se:.4f} ({s.n})" if s.se is not None else f"{s.mean:.4f} (1)"


def _paired_cell(c: Comparison) -> str:
    p = c.paired
    cell = f"{p.mean:+.4f} ± {p.se:.4f} ({p.n})" if p.se is not None else f"{p.mean:+.4f} (1)"
    word = side(c)
    cell = f"{cell} **{word}**" if word in ("higher", "lower") else f"{cell} {word}"
    numbers = comparison_numbers(c)
    return f"{cell}, {numbers}" if numbers else cell


def verdict_line(title: str, tests: Mapping[str, Comparison]) -> str:
    """One sentence per benchmark from its comparisons: the baselines the candidate lies above or below (Holm p
    < ALPHA), those it is not separated from, identical to, or has one paired seed against (no test)."""
    groups: dict[str, list[str]] = {}
    for method, c in tests.items():
        key = side(c)
        label = f"`{method}`"
        if key in ("higher", "lower") and c.p_holm is not None:
            label += f" (Holm p {p_text(c.p_holm)})"
        groups.setdefault(key, []).append(label)
    counts = sorted({c.paired.n for c in tests.values() if c.paired.n > 1})
    span = "" if not counts else str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
    seeds = f" ({span} paired seeds)" if span else ""
    parts = [
        f"{label} {', '.join(groups[key])}"
        for key, label in (
            ("higher", "**higher** than"),
            ("lower", "**lower** than"),
            ("not separated", "not separated from"),
            ("identical", "identical to"),
            ("one seed", "one paired seed so far, no test, against"),
        )
        if groups.get(key)
    ]
    return f"{title}{seeds}: the candidate is " + "; ".join(parts) + "."


# Test streams that are not clean, and why: the README says so wherever they appear.
STREAM_MARKS: dict[int, str] = {
    42: "test-split runs read to design the space",
    43: "test-split runs read to design the space",
    100: "also run on the validation split, by the split check",
}


def _accs(recs: Mapping[int, dict]) -> list[float]:
    return [float(r["result"]["average_accuracy"]) for r in recs.values()]


def _code(record: dict) -> str:
    """What a run's module computes (`module.code_sha256`; records without it: the module's sha256)."""
    return str((record.get("module") or {}).get("code_sha256") or record.get("key_fields", {}).get("module"))


def _codes(records: Mapping[int, dict]) -> str | None:
    """The one module code of a method's runs, or None when they ran several."""
    codes = {_code(r) for r in records.values()}
    return codes.pop() if len(codes) == 1 else None


def _marks(seeds: Sequence[int], what: str) -> str:
    """' WHAT not clean: 42 and 43 (why); 100 (why).' for the marked seeds among `seeds`, grouped by reason."""
    by_reason: dict[str, list[int]] = {}
    for seed in sorted(seeds):
        if seed in STREAM_MARKS:
            by_reason.setdefault(STREAM_MARKS[seed], []).append(seed)
    if not by_reason:
        return ""
    parts = [" and ".join(map(str, group)) + f" ({reason})" for reason, group in by_reason.items()]
    return f" {what} not clean: " + "; ".join(parts) + "."


def other_module(
    method: str, records: Mapping[int, dict], table: Mapping[str, Mapping[int, dict]] | None
) -> str:
    """' (module SHA; not the table's `method`)' where `method` ran another module code in `records` than in
    `table` (the table's Permuted-MNIST runs: a baseline retuned, or another module shipped, since); else ''."""
    if table is None or not table.get(method) or _codes(table[method]) == _codes(records):
        return ""
    shas = sorted({str(r.get("key_fields", {}).get("module"))[:12] for r in records.values()})
    return f" (module {', '.join(shas)}; not the table's `{method}`)"


def fresh_lines(
    fresh: Mapping[str, Mapping[int, dict]],
    out: str = "results",
    table: Mapping[str, Mapping[int, dict]] | None = None,
) -> list[str]:
    """The verdict the README leads with: the fresh Permuted-MNIST test streams (`fresh`: method -> seed ->
    record), each method's mean, the candidate's paired difference against every baseline with Holm p over
    this list, and the sentence those numbers allow (`verdict_line`); a method that ran another module than in
    `table` names its module (`other_module`)."""

    seeds = sorted({s for recs in fresh.values() for s in recs})
    tests = compare(paired_differences(fresh)) if CANDIDATE in fresh else {}
    family = max((c.family for c in tests.values()), default=0)
    lines = [
        f"**Fresh Permuted-MNIST test streams** (permutation seeds {', '.join(map(str, seeds))}, test split, full "
        "protocol; nothing in the project ran them before): the verdict rests on these."
        + (f" Holm p over this list's {paired_tests(family)}." if family else ""),
        "",
        *(
            f"- `{m}`{other_module(m, recs, table)}: {_cell(_accs(recs))}"
            for m, recs in fresh.items()
            if recs
        ),
        *(f"- candidate − `{m}`: {_paired_cell(c)}" for m, c in tests.items()),
        "",
    ]
    if tests:
        lines += [f"**Verdict.** {verdict_line('On the fresh streams', tests)}"]
        lines += ["", f"![Fresh streams, paired]({out}/fresh/plots/permMNIST_paired.png)"]
    else:
        lines += [
            "**Verdict**: none yet; the candidate has no run on the fresh streams (`make fresh-streams`)."
        ]
    return [*lines, ""]


# Issue 30's aims for the shipped module, reported wherever it lands. Not baselines: the candidate itself, the
# search's own design, and joint training (the upper bound).
AIM_PERMUTED = 0.968
NOT_BASELINES = (CANDIDATE, SEARCHED, "joint")


def aims_lines(
    results: Mapping[str, Mapping[str, Mapping[int, dict]]], fresh: Mapping[str, Mapping[int, dict]] | None
) -> list[str]:
    """Where the candidate lands on the campaign's three aims, computed from the runs: above every baseline on
    the fresh streams with Holm p < ALPHA (the verdict's own tests); a Permuted-MNIST mean of at least
    AIM_PERMUTED; on Split-MNIST, on no seed below a baseline by more than one stream SD (the candidate's own
    standard deviation over its seeds)."""
    lines = []
    if fresh and fresh.get(CANDIDATE):
        sides = {m: side(c) for m, c in compare(paired_differences(fresh)).items() if m not in NOT_BASELINES}
        short = [f"`{m}` ({word})" for m, word in sides.items() if word not in ("higher", "identical")]
        same = [f"`{m}`" for m, word in sides.items() if word == "identical"]
        above = [f"`{m}`" for m, word in sides.items() if word == "higher"]
        lines.append(
            f"- Above every baseline that ran the fresh streams, with Holm p < {ALPHA:g}: "
            + ("**met**" if not short else "**not met**, against " + ", ".join(short))
            + (f"; above {', '.join(above)}" if above else "")
            + (f"; {', '.join(same)} ran the same code" if same else "")
            + "."
        )
    perm = results.get("permMNIST", {})
    means = {
        where: fmean(_accs(recs[CANDIDATE]))
        for where, recs in (("the fresh streams", fresh or {}), ("the test split", perm))
        if recs.get(CANDIDATE)
    }
    if means:
        joint = f" (joint training {fmean(_accs(perm['joint'])):.4f})" if perm.get("joint") else ""
        met = all(m >= AIM_PERMUTED for m in means.values())
        lines.append(
            f"- Permuted-MNIST at least {AIM_PERMUTED}{joint}: "
            + ("**met**" if met else "**not met**")
            + ": "
            + ", ".join(f"{m:.4f} on {where}" for where, m in means.items())
            + "."
        )
    split = results.get("splitMNIST", {})
    if len(split.get(CANDIDATE, {})) > 1:
        sd = stdev(_accs(split[CANDIDATE]))
        below = [
            (d, m, s)
            for m, p in paired_differences(split).items()
            if m not in NOT_BASELINES
            for s, d in zip(p.seeds, p.diffs, strict=True)
            if d < -sd
        ]
        lines.append(
            f"- Split-MNIST on no seed below a baseline by more than one stream SD ({sd:.4f}, the candidate's over "
            f"its {len(split[CANDIDATE])} seeds): "
            + (
                "**met**"
                if not below
                else "**not met**: " + ", ".join(f"`{m}` on seed {s} ({d:+.4f})" for d, m, s in sorted(below))
            )
            + "."
        )
    return ["**Aims** (issue 30), computed from the runs of this block:", "", *lines] if lines else []


def readme_block(
    results: Mapping[str, Mapping[str, Mapping[int, dict]]],
    methods: Sequence[str],
    heldout: Mapping[str, Mapping[int, dict]] | None = None,
    out: str = "results",
    fresh: Mapping[str, Mapping[int, dict]] | None = None,
) -> str:
    """The README's results: first the verdict on the fresh Permuted-MNIST streams (`fresh`, `fresh_lines`),
    then every method's mean ± SE (seeds), the candidate's paired difference against each baseline with p, Holm
    p (one family: the table's tests), 95% CI, verdict and a link to its figure, where it lands on the campaign's
    aims (`aims_lines`), and the held-out Permuted-MNIST streams (`heldout`: method -> seed -> record) with
    their figure and, pooled with the table's and the fresh Permuted-MNIST seeds, the candidate's paired
    difference over every test stream (each list its own Holm family); streams that are not clean are marked
    (`STREAM_MARKS`). `out` is the results folder relative to the README, whose report
    (`evaluation.report.write_report`, the held-out and fresh ones under `out/heldout`, `out/fresh`) holds the
    figures."""
    accs = _accs
    benches = [b for b in results if any(results[b].values())]
    titles = [BENCHMARK_TITLES.get(b, b) for b in benches]
    perm_seeds = sorted({s for recs in results.get("permMNIST", {}).values() for s in recs})
    lines = [
        *(fresh_lines(fresh, out, results.get("permMNIST")) if fresh else []),
        "Average test accuracy over contexts after the last one, mean ± standard error (seeds); full published "
        "protocol, test split." + _marks(perm_seeds, "Permuted-MNIST seeds"),
        "",
        "| method | " + " | ".join(titles) + " | published (original harness) |",
        "|---|" + "---|" * len(benches) + "---|",
    ]
    for m in methods:
        cells = [_cell(accs(recs)) if (recs := results[b].get(m)) else "not run" for b in benches]
        refs = [
            ", ".join(f"{v:.3g}" for tag, v in REFERENCES.get(b, {}).get(m, []) if tag == "harness") or "—"
            for b in benches
        ]
        published = " / ".join(refs) if any(r != "—" for r in refs) else "—"
        lines.append(f"| `{m}` | " + " | ".join(cells) + f" | {published} |")
    paired = table_tests({b: results[b] for b in benches})
    baselines = [m for m in methods if any(m in paired[b] for b in benches)]
    if baselines:
        family = max(c.family for b in benches for c in paired[b].values())
        lines += [
            "",
            "Candidate minus each baseline, paired by seed: mean ± standard error of the difference (seeds). "
            + stats_note(family, "of the table"),
            "",
            "| baseline | " + " | ".join(titles) + " |",
            "|---|" + "---|" * len(benches),
        ]
        for m in baselines:
            cells = [_paired_cell(p) if (p := paired[b].get(m)) else "—" for b in benches]
            lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
        lines += [""]
        lines += [
            f"- {verdict_line(t, paired[b])}" for b, t in zip(benches, titles, strict=True) if paired[b]
        ]
        links = [f"[{BENCHMARK_TITLES.get(b, b)}]({out}/plots/{b}_paired.png)" for b in benches if paired[b]]
        lines += ["", "The paired differences per seed, as figures: " + ", ".join(links) + "."]
    if aims := aims_lines(results, fresh):
        lines += ["", *aims]
    if heldout:
        held_seeds = sorted({s for recs in heldout.values() for s in recs})
        held_paired = compare(paired_differences(heldout))
        family = max((c.family for c in held_paired.values()), default=0)
        lines += [
            "",
            f"Held-out Permuted-MNIST streams (permutation seeds {', '.join(map(str, held_seeds))}, chose "
            f"nothing), full protocol, test split.{_marks(held_seeds, 'Streams')}"
            + (f" Holm p over this list's {paired_tests(family)}:" if family else ""),
        ]
        perm = results.get("permMNIST", {})
        lines += [
            "",
            *(
                f"- `{m}`{other_module(m, recs, perm)}: {_cell(accs(recs))}"
                for m, recs in heldout.items()
                if recs
            ),
        ]
        lines += [f"- candidate − `{m}`: {_paired_cell(c)}" for m, c in held_paired.items()]
        # The table's test streams and the held-out ones together: the most streams each comparison has.
        # A method's runs are pooled only where they ran its held-out streams' module (a tuned baseline retuned
        # since, or a rewritten candidate, is another module on the fresh streams, left out here).
        every = {
            m: {
                **{s: r for s, r in perm.get(m, {}).items() if _code(r) == _codes(recs)},
                **recs,
                **{s: r for s, r in (fresh or {}).get(m, {}).items() if _code(r) == _codes(recs)},
            }
            for m, recs in heldout.items()
        }
        pooled = compare(paired_differences(every))
        if any(c.paired.n > held_paired[m].paired.n for m, c in pooled.items() if m in held_paired):
            seeds_pooled = sorted({s for c in pooled.values() for s in c.paired.seeds})
            streams = ", ".join(map(str, seeds_pooled))
            family = max((c.family for c in pooled.values()), default=0)
            which = (
                "the table's, the held-out and the fresh ones"
                if fresh and any(s in seeds_pooled for recs in fresh.values() for s in recs)
                else "the table's and the held-out ones"
            )
            lines += [
                "",
                f"Every Permuted-MNIST test stream, {which} (seeds {streams}), paired"
                + (f"; Holm p over this list's {paired_tests(family)}:" if family else ":"),
            ]
            lines += ["", *(f"- candidate − `{m}`: {_paired_cell(c)}" for m, c in pooled.items())]
        if held_paired:
            lines += ["", f"![Held-out streams, paired]({out}/heldout/plots/permMNIST_paired.png)"]
    return "\n".join([README_START, "", *lines, "", README_END])


def write_readme_block(readme: Path, block: str) -> None:
    """Replace the results block of `readme` (between its markers) with `block`; a ValueError without markers."""
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no results markers ({README_START!r} ... {README_END!r})")
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    write_atomic(readme, head + block + tail)
