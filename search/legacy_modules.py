"""The modules of the committed studies' trials written by earlier versions of the generator: their sha256.

A trial's module is never taken from the study's storage as it is (`search.export.trial_module`): it is generated
again from the trial's design and must be, byte for byte, the module the trial stored. The committed studies were
scored by earlier generators (the first ones, `studies/mnist.db` and `studies/ewc.db`, even by earlier versions of
the space; the campaign's by the generator before issue 31 rewrote its modules as method files), so their
modules cannot be generated again; a trial's stored module is accepted when its sha256 is one the repository
records for that study and trial in `legacy_modules.json`, which the repository holds, not the storage. That file
was written once, by `python -m search.legacy_modules` at commit 8527ab4 (the rewrite) from the studies committed
then; the first studies' entries were read from the committed files at commit acd1c2a (ewc) and ca4e45c (mnist).
Running the module again keeps every cached run of those trials valid: the run cache is keyed by the module's
sha256.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

RECORD = Path(__file__).with_name("legacy_modules.json")


@cache
def legacy_modules() -> dict[str, dict[int, frozenset[str]]]:
    """study -> trial number -> the sha256s of the modules the repository accepts for it."""
    raw = json.loads(RECORD.read_text(encoding="utf-8"))
    return {study: {int(n): frozenset(shas) for n, shas in trials.items()} for study, trials in raw.items()}


def accepted(study: str, trial: int, sha: str) -> bool:
    """Whether the repository records `sha` as a module that trial `trial` of study `study` stored."""
    return sha in legacy_modules().get(study, {}).get(trial, frozenset())


def _record(roots: list[Path]) -> dict[str, dict[str, list[str]]]:
    """Every stored module sha256 of the studies in `roots`' .db files, by study and trial (sorted)."""
    import optuna

    from evaluation.cache import sha256_text

    found: dict[str, dict[str, set[str]]] = {}
    for db in roots:
        url = f"sqlite:///{db}"
        for summary in optuna.get_all_study_summaries(url):
            if summary.study_name.endswith(":promoted") or summary.study_name.startswith("_"):
                continue
            study = optuna.load_study(study_name=summary.study_name, storage=url)
            for t in study.get_trials(deepcopy=False):
                source = t.user_attrs.get("module_source")
                if isinstance(source, str):
                    found.setdefault(summary.study_name, {}).setdefault(str(t.number), set()).add(
                        sha256_text(source)
                    )
    return {
        s: {n: sorted(v) for n, v in sorted(ts.items(), key=lambda kv: int(kv[0]))}
        for s, ts in sorted(found.items())
    }


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1] / "studies"
    dbs = sorted(root.glob("*.db")) + sorted((root / "campaign").glob("*.db"))
    record = _record(dbs)
    lines = [
        f"{json.dumps(study)}: {{\n"
        + ",\n".join(f"  {json.dumps(n)}: {json.dumps(shas)}" for n, shas in trials.items())
        + "\n}"
        for study, trials in record.items()
    ]
    RECORD.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")  # a trial a line: reviewable
    print(f"wrote {RECORD}")
