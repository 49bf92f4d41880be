"""The GPU check (bench/gpu_check.py): says so without CUDA, and its synthetic fallback runs the harness loop."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from evaluation.gpu_check import gpu_check

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: the check would run for real")
def test_without_cuda_it_says_so_and_checks_nothing(capsys: pytest.CaptureFixture) -> None:
    gpu_check()
    assert "CUDA is not available" in capsys.readouterr().out


def test_cpu_mode_on_synthetic_cifar(
    capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CL_DATA_DIR", str(tmp_path))  # no CIFAR here: the synthetic fallback must run
    monkeypatch.setenv("CL_CACHE_DIR", str(tmp_path))
    hooks = REPO / "tests" / "hooks" / "no_reg.py"
    gpu_check("cpu", 1, hooks, ["CIFAR100"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("CIFAR100")]
    assert len(lines) == 2 and all("synthetic" in line for line in lines)
    assert "trunk not pre-trained" in lines[0] and "data absent" in lines[1]
    rates = [float(re.split(r"\s{2,}", line)[1]) for line in lines]
    assert all(rate > 0 for rate in rates)
