"""How well a study's proxy ranks designs as full runs do: its top designs and random ones of its space, measured
by `evaluation.fidelity` (`python -m search fidelity`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evaluation import fidelity as fid
from evaluation.cache import RunFn
from evaluation.errors import UserError
from evaluation.final_eval import LogFn
from search.export import top_designs
from search.storage import open_study
from search.studies import load_study_def


def measure(
    study: str,
    *,
    top: int = 8,
    random: int = 4,
    benchmarks: Sequence[str] | None = None,
    seed: int = 0,
    device: str = "auto",
    out_dir: Path = fid.DEFAULT_OUT,
    proxy_overrides: Mapping[str, Any] | None = None,
    storage: str | None = None,
    run_fn: RunFn | None = None,
    log: LogFn = print,
    command: str = "",
) -> dict:
    """The study's `top` best designs (from its storage) and `random` designs of its space (drawn with `seed`),
    measured by `evaluation.fidelity.fidelity` on the study's proxies of `benchmarks` (default: all)."""
    study_def = load_study_def(study)
    benches = [b for b in study_def.benchmarks if benchmarks is None or b.experiment in benchmarks]
    if not benches:
        raise UserError(
            f"study {study_def.name!r} has no benchmark among {', '.join(benchmarks or [])} "
            f"(it has {', '.join(study_def.experiments)})"
        )
    if top < 0 or random < 0 or top + random < 3:
        raise UserError("--top and --random must be >= 0 and give at least 3 designs together")
    # random designs alone need no storage: the proxy can be measured before the study has run
    designs = top_designs(open_study(study_def.name, storage), top) if top else []
    if len(designs) < top:
        log(f"fidelity: study {study_def.name!r} has only {len(designs)} distinct complete designs")
    seen = {json.dumps(d.design, sort_keys=True) for d in designs}
    designs += fid.random_designs(random, seed=seed, fixed=study_def.fixed, exclude=seen)
    return fid.fidelity(
        study_def.name,
        benches,
        designs,
        device=device,
        out_dir=out_dir,
        proxy_overrides=proxy_overrides,
        run_fn=run_fn,
        log=log,
        command=command,
    )
