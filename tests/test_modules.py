"""`python -m search modules`: the module files the run records name, written back and checked (search/modules.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import space
from cli.main import main
from evaluation.errors import UserError
from evaluation.provenance import code_sha256, design_and_provenance, module_entry, sha256_text
from search import modules

REPO = Path(__file__).resolve().parents[1]


def _record(runs: Path, module: Path, entry: dict) -> Path:
    """A run record as `evaluation.cache.store` writes it, for the module file `module`."""
    path = runs / "splitMNIST" / f"x__{'0' * 16}__seed42.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format": 1,
        "method": "x",
        "key": "0" * 16,
        "key_fields": {"module": entry["sha256"]},
        "seed": 42,
        "result": {"hooks_path": str(module), "hooks_sha256": entry["sha256"], "average_accuracy": 0.5},
        "module": entry,
    }
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def test_a_generated_module_is_its_design_and_provenance() -> None:
    source = space.generate_source(space.named("mas@8"), {"study": "mas", "trial": 32})
    design, provenance = design_and_provenance(source)
    assert provenance == {"study": "mas", "trial": "32"}
    assert space.generate_source(space.Design.from_dict(design), provenance) == source
    entry = module_entry(source)
    assert entry["sha256"] == sha256_text(source) and entry["code_sha256"] == code_sha256(source)
    assert entry["regenerate"] == "python -m search modules"
    assert "design" not in module_entry("def estimate_importance(): pass\n")  # a hand-written module


def test_a_missing_module_is_written_back_from_its_record(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = space.generate_source(space.named("ewc"), {"preset": "ewc"})
    module = tmp_path / "modules" / "ewc-x.py"
    record = _record(tmp_path / "runs", module, module_entry(source))
    assert main(["modules", str(tmp_path / "runs")]) == 0
    assert module.read_text(encoding="utf-8") == source
    assert "1 module files: 1 design" in capsys.readouterr().out
    assert modules.restore([tmp_path / "runs"]) == {"present": 1}
    assert modules.restore([tmp_path / "runs"], check=True) == {"design": 1}  # regenerated, not only found

    # a record whose design was edited gives no module with the recorded sha256: refused, nothing written
    module.unlink()
    data = json.loads(record.read_text())
    data["module"]["design"]["reg_strength_scale"] = 2.0
    record.write_text(json.dumps(data))
    with pytest.raises(UserError, match="no way gives back a module with sha256"):
        modules.restore([tmp_path / "runs"])
    assert not module.exists()
    assert main(["modules", str(tmp_path / "runs")]) == 2


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)


def test_an_earlier_generators_module_comes_back_from_its_archived_commit(tmp_path: Path) -> None:
    if _git("rev-parse", "HEAD").returncode != 0:
        pytest.skip("not a git checkout")
    archived = "HEAD:custom_regularization.py"
    source = _git("show", archived).stdout
    entry = {**module_entry(source), "archived": archived, "design": {"estimators": "no such estimator"}}
    module = tmp_path / "modules" / "candidate-x.py"
    _record(tmp_path / "runs", module, entry)
    assert modules.restore([tmp_path / "runs"]) == {"archive": 1}
    assert sha256_text(module.read_text(encoding="utf-8")) == entry["sha256"]


def test_every_committed_record_gives_its_module_back_with_its_sha256() -> None:
    archived = {
        json.loads(p.read_text()).get("module", {}).get("archived", ":").split(":")[0]
        for p in (REPO / "results").rglob("*__seed*.json")
    } - {""}
    missing = [c for c in archived if _git("cat-file", "-e", f"{c}^{{commit}}").returncode != 0]
    if missing:
        pytest.skip(
            f"this clone lacks the commit that archived earlier generators' modules ({missing[0][:12]})"
        )
    counts = modules.restore([REPO / r for r in modules.DEFAULT_ROOTS], check=True)
    assert counts["design"] > 0 and counts["study"] > 0 and counts["archive"] > 0
    assert counts["present"] == 0  # check regenerates every one
