"""CIFAR code paths on small generated files in the real pickle layout (the real files cannot be had here)."""

from __future__ import annotations

import os
import pickle
import runpy
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from cifar_files import pixel, write_cifar10, write_cifar100
from clharness import cifar
from clharness.errors import DataError, HarnessError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "continual-learning" / "pretrain_trunk.py"


def _no_download(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, object]]]:
    """Make torchvision's download fail as it does offline; record the calls."""
    calls: list[tuple[str, dict[str, object]]] = []

    def fake(name: str):
        def _fail(**kwargs: object) -> None:
            calls.append((name, kwargs))
            raise urllib.error.URLError("Name or service not known")

        return _fail

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fake("CIFAR100"))
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake("CIFAR10"))
    return calls


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar-data")
    write_cifar100(root, train_per_class=3, test_per_class=1)
    write_cifar10(root, train_per_class=30, test_per_class=2)
    return root


# ------------------------------------------------------------------------------------------------- loading


def test_cifar100_pixels_labels_and_channel_order(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path, train_per_class=3, test_per_class=1)
    d = cifar.load_cifar100(tmp_path)
    assert d.train_x.shape == (300, 3, 32, 32) and d.test_x.shape == (100, 3, 32, 32)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert d.train_y.tolist() == written["train"] and d.test_y.tolist() == written["test"]
    assert sorted(d.train_y.tolist()) == sorted(list(range(100)) * 3)
    # Hand-checked: image 0, blue channel (2), row 1, column 0 = 85*2 + 3*1 = 173; rows, columns apart.
    assert int(d.train_x[0, 2, 1, 0]) == 173
    assert int(d.train_x[0, 0, 0, 1]) == 7 and int(d.train_x[0, 0, 1, 0]) == 3
    assert int(d.train_x[299, 1, 31, 31]) == (299 + 85 + 93 + 217) % 256
    i, c, r, col = np.meshgrid(np.arange(300), np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    expected = torch.from_numpy(((i + 85 * c + 3 * r + 7 * col) % 256).astype(np.uint8))
    assert torch.equal(d.train_x, expected)
    assert int(d.test_x[5, 1, 2, 3]) == pixel(5, 1, 2, 3)
    assert len(d.classes) == 100 and d.classes[7] == "fine7"


def test_cifar10_concatenates_the_five_batches_in_order(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path, train_per_class=30, test_per_class=2)
    d = cifar.load_cifar10(tmp_path)
    assert d.train_x.shape == (300, 3, 32, 32) and d.test_x.shape == (20, 3, 32, 32)
    assert d.train_y.tolist() == written["train"] and d.test_y.tolist() == written["test"]
    n1 = written["batch_sizes"][0]
    # The pattern restarts in every file: image n1 is the first image of data_batch_2.
    assert torch.equal(d.train_x[n1], d.train_x[0])
    assert int(d.train_x[n1 + 1, 2, 4, 5]) == pixel(1, 2, 4, 5)
    assert d.classes == tuple(f"c{k}" for k in range(10))


@pytest.mark.parametrize(
    ("loader", "folder", "name"),
    [
        (cifar.load_cifar100, "cifar-100-python", "CIFAR100"),
        (cifar.load_cifar10, "cifar-10-batches-py", "CIFAR10"),
    ],
)
def test_absent_files_try_torchvision_then_one_line_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loader, folder: str, name: str
) -> None:
    calls = _no_download(monkeypatch)
    with pytest.raises(DataError) as err:
        loader(tmp_path / "nowhere")
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{folder}/" in msg and str(tmp_path / "nowhere") in msg
    assert f"torchvision.datasets.{name}(" in msg and "download=True" in msg
    assert "URLError" in msg  # says why the download failed
    assert calls == [(name, {"root": str(tmp_path / "nowhere"), "train": True, "download": True})]


def test_a_missing_file_among_present_ones_also_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    calls = _no_download(monkeypatch)
    with pytest.raises(DataError, match="files train, test, meta"):
        cifar.load_cifar100(tmp_path)
    assert len(calls) == 1


def test_present_files_never_touch_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path)
    calls = _no_download(monkeypatch)
    cifar.load_cifar10(tmp_path)
    assert calls == []


def test_corrupt_or_wrong_files_name_the_file(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    train = tmp_path / "cifar-100-python" / "train"
    train.write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(DataError, match=f"{train}: unreadable CIFAR file"):
        cifar.load_cifar100(tmp_path)
    with open(train, "wb") as fh:
        pickle.dump({b"data": np.zeros((4, 3000), np.uint8), b"fine_labels": [0, 1, 2, 3]}, fh, protocol=2)
    with pytest.raises(DataError, match=r"'data' must be a uint8 array \(N, 3072\), found uint8 \(4, 3000\)"):
        cifar.load_cifar100(tmp_path)
    with open(train, "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}, fh, protocol=2)
    with pytest.raises(DataError, match=r"labels outside 0\.\.99"):
        cifar.load_cifar100(tmp_path)
    with open(train, "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, fh, protocol=2)
    with pytest.raises(DataError, match="no key 'fine_labels'"):
        cifar.load_cifar100(tmp_path)


def test_normalize_numerics() -> None:
    x = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    x[1] = 255
    x[0, 1, 0, 1] = 51  # 0.2
    out = cifar.normalize(x, cifar.CIFAR10_MEAN, cifar.CIFAR10_STD)
    assert out.dtype == torch.float32 and out.shape == x.shape
    for ch in range(3):
        m, s = cifar.CIFAR10_MEAN[ch], cifar.CIFAR10_STD[ch]
        assert out[0, ch, 0, 0].item() == pytest.approx(-m / s, abs=1e-6)
        assert out[1, ch, 1, 1].item() == pytest.approx((1 - m) / s, abs=1e-6)
    assert out[0, 1, 0, 1].item() == pytest.approx((0.2 - 0.4822) / 0.2435, abs=1e-6)
    default = cifar.normalize(x)  # CIFAR-100 statistics by default
    assert default[1, 2, 0, 0].item() == pytest.approx((1 - 0.4409) / 0.2761, abs=1e-6)


# --------------------------------------------------------------------------------------------------- trunk


def test_trunk_architecture_and_output_shape() -> None:
    trunk = cifar.ConvTrunk()
    convs = [m for m in trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128, 256]
    assert [c.stride for c in convs] == [(1, 1), (2, 2), (2, 2), (2, 2), (2, 2)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is not None for c in convs)
    kinds = [type(m).__name__ for m in trunk.layers]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"] * 4 + ["Conv2d"]  # layer 5 linear
    # 3*16*9+16 + 16*32*9+32 + 32*64*9+64 + 64*128*9+128 + 128*256*9+256 conv, 2*(16+32+64+128) BatchNorm
    assert sum(p.numel() for p in trunk.parameters()) == 448 + 4640 + 18496 + 73856 + 295168 + 480
    sizes: list[int] = []
    for c in convs:
        c.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1]))
    out = trunk(torch.randn(5, 3, 32, 32))
    assert sizes == [32, 16, 8, 4, 2]
    assert out.shape == (5, 1024) == (5, trunk.out_features)
    # Layer 5 is linear: negative features exist (no ReLU at the end).
    assert (out < 0).any()


def test_augment_batch_is_a_padded_crop_and_flip_per_image() -> None:
    x = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)  # no zeros: padding shows as exact zeros
    out = cifar.augment_batch(x, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the same draws, in the same order
    oy = torch.randint(0, 9, (64, 1), generator=g)
    ox = torch.randint(0, 9, (64, 1), generator=g)
    flip = torch.rand((64, 1), generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(64):
        ref = padded[i, :, oy[i, 0] : oy[i, 0] + 32, ox[i, 0] : ox[i, 0] + 32]
        if flip[i, 0]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert 10 < int(flip.sum()) < 54 and len(set((oy * 9 + ox).flatten().tolist())) > 20


def test_pretraining_is_seeded_frozen_and_leaves_global_rng_alone(data_dir: Path) -> None:
    c10 = cifar.load_cifar10(data_dir)
    rng = torch.get_rng_state()
    a = cifar.pretrain_trunk(c10, epochs=1, batch_size=100, seed=3, device="cpu", progress=False)
    assert torch.equal(torch.get_rng_state(), rng)
    b = cifar.pretrain_trunk(c10, epochs=1, batch_size=100, seed=3, device="cpu", progress=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # other seeds differ: test_feature_cache_is_keyed_...
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    # 300 images, batch 100: 3 steps; BatchNorm saw training batches.
    assert int(sa["layers.1.num_batches_tracked"]) == 3
    assert a.info["epochs"] == 1 and a.info["n_train"] == 300 and 0.0 <= a.info["cifar10_test_acc"] <= 1.0


# -------------------------------------------------------------------------------------------------- caches


def test_trunk_and_feature_caches_are_written_once_and_reused(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    trained: list[int] = []
    real_pretrain = cifar._pretrain

    def counting(*args, **kwargs):
        trained.append(1)
        return real_pretrain(*args, **kwargs)

    monkeypatch.setattr(cifar, "_pretrain", counting)
    f1 = cifar.cifar100_features(data_dir, cache, "cpu", trunk_mode_epochs=1, seed=5, progress=False)
    trunk_file = cache / "cifar10-trunk-e1-s5.pt"
    assert trained == [1] and trunk_file.is_file()
    assert f1.trunk_sha256 == cifar.file_sha256(trunk_file)
    assert f1.cache_file is not None and f1.cache_file.parent == cache
    assert f1.cache_file.name.startswith(f"cifar100-features-t{f1.trunk_sha256[:16]}-d")
    assert sorted(p.name for p in cache.iterdir()) == sorted([trunk_file.name, f1.cache_file.name])  # no temp
    assert f1.train_x.shape == (300, 1024) and f1.test_x.shape == (100, 1024)
    assert f1.train_x.dtype == torch.float32
    c100 = cifar.load_cifar100(data_dir)
    assert torch.equal(f1.train_y, c100.train_y) and torch.equal(f1.test_y, c100.test_y)
    # The features are the frozen trunk's output on CIFAR-100-normalized images, in eval mode.
    trunk, sha = cifar.get_pretrained_trunk(data_dir, cache, "cpu", epochs=1, seed=5)
    assert sha == f1.trunk_sha256 and not trunk.training
    with torch.no_grad():
        direct = trunk(cifar.normalize(c100.test_x[:7], cifar.CIFAR100_MEAN, cifar.CIFAR100_STD))
    assert torch.allclose(f1.test_x[:7], direct, atol=1e-5)

    mtimes = (trunk_file.stat().st_mtime_ns, f1.cache_file.stat().st_mtime_ns)
    monkeypatch.setattr(cifar, "extract_features", lambda *a, **k: pytest.fail("features recomputed"))
    f2 = cifar.cifar100_features(data_dir, cache, "cpu", trunk_mode_epochs=1, seed=5, progress=False)
    assert trained == [1]  # not trained again
    assert (trunk_file.stat().st_mtime_ns, f1.cache_file.stat().st_mtime_ns) == mtimes
    assert torch.equal(f1.train_x, f2.train_x) and torch.equal(f1.test_x, f2.test_x)
    assert f2.trunk_sha256 == f1.trunk_sha256


def test_feature_cache_is_keyed_by_trunk_and_data(data_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a = cifar.cifar100_features(data_dir, cache, "cpu", trunk_mode_epochs=1, seed=1, progress=False)
    b = cifar.cifar100_features(data_dir, cache, "cpu", trunk_mode_epochs=1, seed=2, progress=False)
    assert a.trunk_sha256 != b.trunk_sha256 and a.cache_file != b.cache_file  # the seed changes the trunk
    assert not torch.equal(a.train_x, b.train_x)
    # Other CIFAR-100 files, same trunk: new features, trunk reused.
    other = tmp_path / "other"
    write_cifar100(other, train_per_class=2, test_per_class=1)
    (other / "cifar-10-batches-py").symlink_to(data_dir / "cifar-10-batches-py")
    c = cifar.cifar100_features(other, cache, "cpu", trunk_mode_epochs=1, seed=1, progress=False)
    assert c.trunk_sha256 == a.trunk_sha256 and c.cache_file != a.cache_file
    assert c.train_x.shape == (200, 1024)
    assert len(list(cache.glob("cifar100-features-*.pt"))) == 3


def test_corrupt_caches_are_errors_naming_the_file(data_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    bad = cifar.trunk_cache_path(cache, 1, 9)
    bad.write_bytes(b"truncated")
    with pytest.raises(DataError, match=f"{bad}: corrupt trunk cache .*delete it"):
        cifar.get_pretrained_trunk(data_dir, cache, "cpu", epochs=1, seed=9)
    torch.save({"state_dict": {"nope": torch.zeros(1)}}, bad)
    with pytest.raises(DataError, match=f"{bad}: corrupt trunk cache"):
        cifar.get_pretrained_trunk(data_dir, cache, "cpu", epochs=1, seed=9)
    bad.unlink()
    feats = cifar.cifar100_features(data_dir, cache, "cpu", trunk_mode_epochs=1, seed=9, progress=False)
    assert feats.cache_file is not None
    feats.cache_file.write_bytes(b"")
    with pytest.raises(DataError, match="corrupt CIFAR-100 feature cache"):
        cifar.cifar100_features(data_dir, cache, "cpu", trunk_mode_epochs=1, seed=9, progress=False)


def test_missing_cifar100_is_reported_before_any_pretraining(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cifar10(tmp_path)
    _no_download(monkeypatch)
    monkeypatch.setattr(
        cifar, "_pretrain", lambda *a, **k: pytest.fail("trained although CIFAR-100 is absent")
    )
    with pytest.raises(DataError, match="cifar-100-python/"):
        cifar.cifar100_features(tmp_path, tmp_path / "cache", "cpu", trunk_mode_epochs=1, progress=False)


def test_device_resolution() -> None:
    from clharness.devices import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for name in ("mps", "gpu"):  # the harness runs on CPUs and CUDA only
        with pytest.raises(HarnessError, match=f"unknown device '{name}'"):
            resolve_device(name)
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):
            with pytest.raises(HarnessError, match="CUDA is not available"):
                resolve_device(name)


# ----------------------------------------------------------------------------------------------------- CLI

_OFFLINE_RUN = """
import runpy, sys, urllib.error, torchvision.datasets as d
def fail(**kw):
    raise urllib.error.URLError("Name or service not known")
d.CIFAR10 = d.CIFAR100 = fail
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run_cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-c", _OFFLINE_RUN, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_missing_data_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = _run_cli(
        "--epochs", "1", env_extra={"CL_DATA_DIR": str(tmp_path / "d"), "CL_CACHE_DIR": str(tmp_path)}
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: CIFAR100 not found")
    assert f"{tmp_path / 'd'}" in lines[0] and "cifar-100-python/" in lines[0]
    assert list(tmp_path.glob("*.pt")) == []


def test_cli_pretrains_and_caches_then_reuses(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = runpy.run_path(str(SCRIPT))["main"]  # in-process: the exit code path is covered above
    cache = tmp_path / "c"
    args = [
        "--data-dir",
        str(data_dir),
        "--cache-dir",
        str(cache),
        "--epochs",
        "1",
        "--seed",
        "7",
        "--device",
        "cpu",
    ]
    assert main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    trunk_file = cache / "cifar10-trunk-e1-s7.pt"
    assert f"trunk:     {trunk_file} (trained now)" in out
    assert "features:  " + str(next(cache.glob("cifar100-features-*.pt"))) in out
    assert "train (300, 1024), test (100, 1024)" in out
    assert main([*args, "--no-progress"]) == 0
    assert f"{trunk_file} (loaded from cache)" in capsys.readouterr().out
    assert main([*args[:-2], "--epochs", "0"]) == 2
    assert capsys.readouterr().err == "error: --epochs must be >= 1 (got 0)\n"
