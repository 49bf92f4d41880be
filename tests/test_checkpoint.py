"""Resumable runs: a run killed after a context resumes from its checkpoint and ends bit for bit where the run
without the interruption ends; a checkpoint of another run, or a broken one, is never resumed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from clharness.checkpoint import Checkpoint
from clharness.hooks import load_hooks
from clharness.loop import train_sequence
from clharness.models import ContinualNet
from clharness.runner import RunConfig, run
from harness_utils import load, settings, tiny_model, tiny_stream

import space
from evaluation import cache
from space.presets import PRESETS, VARIANTS

REPO = Path(__file__).resolve().parents[1]


class Killed(Exception):
    """Stands for the process being killed after a context."""


def _kill_after(context: int) -> Callable[[int, list[float]], None]:
    def on_context_end(k: int, row: list[float]) -> None:
        if k == context:
            raise Killed

    return on_context_end


def _state(model: ContinualNet) -> dict[str, torch.Tensor]:
    return {
        **{f"param:{n}": p.detach() for n, p in model.named_parameters()},
        **{f"importance:{n}": t for n, t in model._custom_importance.items()},
        **{f"anchor:{n}": t for n, t in model._custom_prev_params.items()},
    }


def _straight_and_resumed(hooks_path: Path, ckpt: Path, kill_after: int = 2, iters: int = 7) -> tuple:
    """(matrix, state) of a run without interruption, and of one killed after `kill_after` then resumed."""
    stream = tiny_stream(contexts=4)
    straight = tiny_model(contexts=4)
    plain = settings(iters=iters, evaluate_each_context=True)
    matrix = train_sequence(straight, stream, stream, load_hooks(hooks_path), plain)

    checkpoint = Checkpoint(ckpt, {"run": "tiny"})
    first = tiny_model(contexts=4)
    killed = settings(
        iters=iters, evaluate_each_context=True, checkpoint=checkpoint, on_context_end=_kill_after(kill_after)
    )
    with pytest.raises(Killed):
        train_sequence(first, stream, stream, load_hooks(hooks_path), killed)
    assert ckpt.is_file()
    second = tiny_model(contexts=4)
    again = settings(iters=iters, evaluate_each_context=True, checkpoint=checkpoint)
    matrix2 = train_sequence(second, stream, stream, load_hooks(hooks_path), again)
    assert again.resumed is not None and again.resumed["after_context"] == kill_after
    return (matrix, _state(straight)), (matrix2, _state(second))


def _assert_same(a: tuple, b: tuple) -> None:
    assert a[0] == b[0]  # every accuracy row, those before the interruption from the checkpoint
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        assert torch.equal(a[1][name], b[1][name]), name


DESIGNS = {**PRESETS, **{k: VARIANTS[k] for k in ("mas_calibrated", "ewc_equalized")}}


@pytest.mark.parametrize("name", [*DESIGNS, "shipped"])
def test_a_resumed_run_ends_bit_for_bit_where_the_uninterrupted_run_ends(tmp_path: Path, name: str) -> None:
    """Every preset, two calibrated variants and the shipped module: their state lives on the model, so the
    checkpoint holds all of it (the importance and anchors, the equalized designs' reference)."""
    if name == "shipped":
        path = REPO / "custom_regularization.py"
    else:
        path = tmp_path / f"{name}.py"
        space.write_module(path, space.generate_source(DESIGNS[name]))
    straight, resumed = _straight_and_resumed(path, tmp_path / "run.ckpt")
    _assert_same(straight, resumed)


def test_the_hooks_own_attributes_on_the_model_are_restored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A module whose importance depends on state it keeps on the model (a count of the contexts it saw)."""
    body = """
    def _reg(model):
        return {n.replace('.', '__'): p for n, p in model.named_parameters() if p.requires_grad}

    def estimate_importance(model, dataset, prev_params, device):
        model._seen = getattr(model, "_seen", 0) + 1
        return {n: torch.full_like(p, float(model._seen) ** 2) for n, p in _reg(model).items()}

    def compute_regularization_loss(model, importance_dict, prev_params_dict):
        params = _reg(model)
        terms = [(importance_dict[n] * (params[n] - prev_params_dict[n]) ** 2).sum() for n in importance_dict]
        return sum(terms, torch.zeros(()))
    """
    load(tmp_path, body)  # writes tmp_path/hooks.py
    straight, resumed = _straight_and_resumed(tmp_path / "hooks.py", tmp_path / "run.ckpt", kill_after=2)
    _assert_same(straight, resumed)
    assert f"checkpoint {tmp_path / 'run.ckpt'}: resuming after context 2" in capsys.readouterr().err
    first = next(v for k, v in straight[1].items() if k.startswith("importance:"))
    assert bool((first == 1 + 4 + 9).all())  # contexts 1-3's importance, each the square of its count


def test_a_checkpoint_of_another_run_or_a_broken_one_is_not_resumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hooks.py"
    space.write_module(path, space.generate_source(PRESETS["ewc"]))
    stream = tiny_stream()
    ckpt = tmp_path / "run.ckpt"
    killed = settings(checkpoint=Checkpoint(ckpt, {"run": "a"}), on_context_end=_kill_after(1))
    with pytest.raises(Killed):
        train_sequence(tiny_model(), stream, stream, load_hooks(path), killed)
    straight = settings(evaluate_each_context=True)
    expected = train_sequence(tiny_model(), stream, stream, load_hooks(path), straight)

    other = settings(evaluate_each_context=True, checkpoint=Checkpoint(ckpt, {"run": "b"}))
    assert train_sequence(tiny_model(), stream, stream, load_hooks(path), other) == expected
    assert other.resumed is None
    assert "is of another run; starting from context 1" in capsys.readouterr().err

    ckpt.write_bytes(b"half a file")
    broken = settings(evaluate_each_context=True, checkpoint=Checkpoint(ckpt, {"run": "b"}))
    assert train_sequence(tiny_model(), stream, stream, load_hooks(path), broken) == expected
    assert broken.resumed is None
    assert "is unreadable" in capsys.readouterr().err


def test_no_checkpoint_after_the_last_context(tmp_path: Path) -> None:
    path = tmp_path / "hooks.py"
    space.write_module(path, space.generate_source(PRESETS["ewc"]))
    stream = tiny_stream(contexts=2)
    ckpt = Checkpoint(tmp_path / "run.ckpt", {"run": "a"})
    saved: list[int] = []

    def look(k: int, row: list[float]) -> None:
        saved.append(torch.load(ckpt.path, weights_only=True)["context"])

    with_check = settings(checkpoint=ckpt, on_context_end=look)
    train_sequence(tiny_model(contexts=2), stream, stream, load_hooks(path), with_check)
    assert saved == [1, 1]  # context 2 is the last: its state is the result, not a checkpoint


def test_the_cache_resumes_a_killed_run_and_removes_its_checkpoint(tmp_path: Path, mnist_root: Path) -> None:
    """Real MNIST through `run_cached`: the run killed after context 2 of 3 resumes, its record equals the
    uninterrupted run's, says where it resumed, counts the earlier time, and the checkpoint is gone."""
    module = REPO / "custom_regularization.py"
    sha = cache.sha256_text(module.read_text())
    cfg = RunConfig(
        "splitMNIST",
        iters=30,
        contexts=3,
        train_subset=300,
        device="cpu",
        data_dir=str(mnist_root),
        acc_matrix=True,
    )
    runs = tmp_path / "runs"
    record_path = cache.cached_path("candidate", sha, cfg, runs)

    def killed_run(hooks: str, cfg: RunConfig, **kw: object) -> dict:
        return run(hooks, cfg, on_context_end=_kill_after(2), **kw)  # type: ignore[arg-type]

    with pytest.raises(Killed):
        cache.run_cached("candidate", module, sha, cfg, cache_dir=runs, run_fn=killed_run)
    assert cache.checkpoint_path(record_path).is_file() and not record_path.exists()

    record, was_cached = cache.run_cached("candidate", module, sha, cfg, cache_dir=runs, run_fn=run)
    assert not was_cached and record_path.is_file()
    assert not cache.checkpoint_path(record_path).exists()
    result = record["result"]
    assert result["resumed"]["after_context"] == 2 and result["resumed"]["earlier_s"] > 0
    assert record["wall_s"] > result["resumed"]["earlier_s"]
    straight = run(module, cfg, progress=False)
    assert result["acc_matrix"] == straight["acc_matrix"]
    assert result["per_context_accuracy"] == straight["per_context_accuracy"]
    assert "resumed" not in straight


def test_a_checkpoint_from_another_configuration_is_not_resumed(tmp_path: Path, mnist_root: Path) -> None:
    """The identity holds the configuration: the same file under another seed starts from context 1."""
    module = REPO / "custom_regularization.py"
    cfg = RunConfig(
        "splitMNIST", iters=20, contexts=2, train_subset=300, device="cpu", data_dir=str(mnist_root)
    )
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Killed):
        run(module, cfg, progress=False, on_context_end=_kill_after(1), checkpoint=ckpt)
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(ckpt.read_bytes())
    other = run(module, dataclasses.replace(cfg, seed=7), progress=False, checkpoint=copy)
    assert "resumed" not in other
    same = run(module, cfg, progress=False, checkpoint=ckpt)
    assert same["resumed"]["after_context"] == 1


class _Plant:
    """Pickles as a call of `open(path, "w")`: unpickling it (weights_only=False) would create the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def test_a_crafted_checkpoint_is_refused_and_never_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint of the right run whose pickle would call `open(..., "w")` when loaded: nothing of it runs
    (the file is not created), the run says so in one line and starts from context 1."""
    path = tmp_path / "hooks.py"
    space.write_module(path, space.generate_source(PRESETS["ewc"]))
    stream = tiny_stream()
    expected = train_sequence(
        tiny_model(), stream, stream, load_hooks(path), settings(evaluate_each_context=True)
    )
    planted = tmp_path / "planted"
    ckpt = tmp_path / "run.ckpt"
    identity = {"run": "a"}
    torch.save({"format": 1, "identity": identity, "context": 1, "hook_attrs": {"_x": _Plant(planted)}}, ckpt)
    crafted = settings(evaluate_each_context=True, checkpoint=Checkpoint(ckpt, identity))
    assert train_sequence(tiny_model(), stream, stream, load_hooks(path), crafted) == expected
    assert not planted.exists()
    assert crafted.resumed is None
    err = [line for line in capsys.readouterr().err.splitlines() if str(ckpt) in line]
    assert len(err) == 1 and "starting from context 1" in err[0], err


def test_a_hook_attribute_a_checkpoint_cannot_hold_is_said_once_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A module keeping an object of its own class on the model: no checkpoint is written (its load would
    refuse it), one line says why, and the run ends as it does without a checkpoint."""
    body = """
    class Counter:
        n = 0

    def _reg(model):
        return {n.replace('.', '__'): p for n, p in model.named_parameters() if p.requires_grad}

    def estimate_importance(model, dataset, prev_params, device):
        model._counter = getattr(model, "_counter", None) or Counter()
        model._counter.n += 1
        return {n: torch.full_like(p, float(model._counter.n)) for n, p in _reg(model).items()}

    def compute_regularization_loss(model, importance_dict, prev_params_dict):
        params = _reg(model)
        terms = [(importance_dict[n] * (params[n] - prev_params_dict[n]) ** 2).sum() for n in importance_dict]
        return sum(terms, torch.zeros(()))
    """
    load(tmp_path, body)
    stream = tiny_stream(contexts=4)
    hooks = tmp_path / "hooks.py"
    expected = train_sequence(
        tiny_model(contexts=4), stream, stream, load_hooks(hooks), settings(evaluate_each_context=True)
    )
    ckpt = tmp_path / "run.ckpt"
    with_ckpt = settings(evaluate_each_context=True, checkpoint=Checkpoint(ckpt, {"run": "counter"}))
    assert train_sequence(tiny_model(contexts=4), stream, stream, load_hooks(hooks), with_ckpt) == expected
    assert not ckpt.exists()
    err = [line for line in capsys.readouterr().err.splitlines() if str(ckpt) in line]
    assert len(err) == 1 and "hook_attrs['_counter']" in err[0] and "Counter" in err[0], err
