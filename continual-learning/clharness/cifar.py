"""CIFAR-10 / CIFAR-100 for the Split-CIFAR100 benchmark (docs/contract.md section 4).

- Loading: the standard pickle layout (`cifar-100-python/`, `cifar-10-batches-py/`) is read directly with
  `pickle`, so everything after torchvision's MD5 check runs on small files the tests generate. Only when the
  files are absent is torchvision asked to download them (which checks the real files' MD5).
- `ConvTrunk`: the published 5-layer conv trunk (32x32x3 -> 1,024 features), used frozen (`pretrained` mode)
  and trained end to end (`scratch` mode).
- Pre-training the trunk on CIFAR-10 once, caching it on disk, and caching the CIFAR-100 features it produces
  (keyed by the sha256 of the trunk file and of the CIFAR-100 files).

Caches are written atomically (`clharness.atomic`), so an interrupted run never leaves a half-written cache
that a later run would trust.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clharness.atomic import atomic_file
from clharness.devices import resolve_device
from clharness.errors import DataError, HarnessError

CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2761)
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

CIFAR100_FOLDER = "cifar-100-python"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_TRAIN_FILES: tuple[str, ...] = ("train",)
CIFAR100_TEST_FILES: tuple[str, ...] = ("test",)
CIFAR100_META = "meta"
CIFAR10_TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES: tuple[str, ...] = ("test_batch",)
CIFAR10_META = "batches.meta"

FEATURE_BATCH = 1000  # images per forward pass when extracting features (memory-bounded, speed-neutral)


@dataclass(frozen=True)
class CifarArrays:
    """A CIFAR dataset in memory: uint8 images (N, 3, 32, 32) and int64 labels (N,), train and test."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CifarFeatures:
    """CIFAR-100 pushed through a frozen trunk: float32 features (N, 1024) and int64 labels, on the CPU."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    trunk_sha256: str
    cache_file: Path | None = None


# ------------------------------------------------------------------------------------------------- loading


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _get(entry: dict[Any, Any], key: str) -> Any:
    # encoding='bytes' gives bytes keys for the real (Python 2) files; accept str keys from re-pickled copies.
    if key.encode() in entry:
        return entry[key.encode()]
    return entry[key]


def _unpickle(path: Path) -> dict[Any, Any]:
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="bytes")
    except Exception as exc:  # pickle raises many kinds (EOFError, UnpicklingError, ValueError, ...)
        raise DataError(
            f"{path}: unreadable CIFAR file ({_one_line(exc)}); delete it and download again"
        ) from None
    if not isinstance(entry, dict):
        raise DataError(f"{path}: not a CIFAR file (holds a {type(entry).__name__}, expected a dict)")
    return entry


def _read_batch(path: Path, label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    entry = _unpickle(path)
    try:
        data = _get(entry, "data")
        labels = _get(entry, label_key)
    except KeyError as exc:
        raise DataError(f"{path}: not a CIFAR file (no key {exc.args[0]!r})") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array (N, 3072), found {what}")
    labels_arr = np.asarray(labels)
    if labels_arr.shape != (data.shape[0],) or not np.issubdtype(labels_arr.dtype, np.integer):
        raise DataError(f"{path}: '{label_key}' must hold {data.shape[0]} integer labels")
    if labels_arr.size and (labels_arr.min() < 0 or labels_arr.max() >= n_classes):
        raise DataError(f"{path}: '{label_key}' has labels outside 0..{n_classes - 1}")
    return data, labels_arr.astype(np.int64)


def _read_split(
    folder: Path, files: Sequence[str], label_key: str, n_classes: int
) -> tuple[torch.Tensor, ...]:
    parts = [_read_batch(folder / name, label_key, n_classes) for name in files]
    data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    # Each row is channel-major (1,024 red, 1,024 green, 1,024 blue values, each row-major 32x32).
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32))
    return x, torch.from_numpy(labels)


def _read_classes(path: Path, key: str, n_classes: int) -> tuple[str, ...]:
    entry = _unpickle(path)
    try:
        names = _get(entry, key)
    except KeyError:
        raise DataError(f"{path}: not a CIFAR meta file (no key {key!r})") from None
    if len(names) != n_classes:
        raise DataError(f"{path}: '{key}' lists {len(names)} classes, expected {n_classes}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _ensure_files(root: Path, folder: str, files: Sequence[str], dataset_name: str) -> None:
    """When a file is absent: download through torchvision (it checks the MD5s), else a one-line DataError."""
    if all((root / folder / f).is_file() for f in files):
        return
    import torchvision.datasets  # deferred: only needed for the download

    try:
        getattr(torchvision.datasets, dataset_name)(root=str(root), train=True, download=True)
    except Exception as exc:  # no network, bad MD5, disk full: all end in the same instruction
        reason = _one_line(exc)
    else:
        if all((root / folder / f).is_file() for f in files):
            return
        reason = "the download did not produce the files"
    raise DataError(
        f"{dataset_name} not found: put the folder {folder}/ (files {', '.join(files)}) into {root} "
        f'(download failed: {reason}); on a machine with network run: python -c "import torchvision; '
        f"torchvision.datasets.{dataset_name}('{root}', download=True)\" and copy {root / folder} here"
    )


def load_cifar100(data_dir: Path) -> CifarArrays:
    """CIFAR-100 (fine labels) from `<data_dir>/cifar-100-python/{train,test,meta}` (50,000 / 10,000)."""
    root = Path(data_dir)
    files = (*CIFAR100_TRAIN_FILES, *CIFAR100_TEST_FILES, CIFAR100_META)
    _ensure_files(root, CIFAR100_FOLDER, files, "CIFAR100")
    folder = root / CIFAR100_FOLDER
    train_x, train_y = _read_split(folder, CIFAR100_TRAIN_FILES, "fine_labels", 100)
    test_x, test_y = _read_split(folder, CIFAR100_TEST_FILES, "fine_labels", 100)
    classes = _read_classes(folder / CIFAR100_META, "fine_label_names", 100)
    return CifarArrays(train_x, train_y, test_x, test_y, classes)


def load_cifar10(data_dir: Path) -> CifarArrays:
    """CIFAR-10 from `<data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`."""
    root = Path(data_dir)
    files = (*CIFAR10_TRAIN_FILES, *CIFAR10_TEST_FILES, CIFAR10_META)
    _ensure_files(root, CIFAR10_FOLDER, files, "CIFAR10")
    folder = root / CIFAR10_FOLDER
    train_x, train_y = _read_split(folder, CIFAR10_TRAIN_FILES, "labels", 10)
    test_x, test_y = _read_split(folder, CIFAR10_TEST_FILES, "labels", 10)
    classes = _read_classes(folder / CIFAR10_META, "label_names", 10)
    return CifarArrays(train_x, train_y, test_x, test_y, classes)


def normalize(
    x_uint8: torch.Tensor, mean: Sequence[float] = CIFAR100_MEAN, std: Sequence[float] = CIFAR100_STD
) -> torch.Tensor:
    """uint8 images (..., 3, H, W) -> float32 in [0, 1], then per channel (x - mean) / std, on x's device."""
    m = torch.tensor(mean, dtype=torch.float32, device=x_uint8.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x_uint8.device).view(3, 1, 1)
    return (x_uint8.to(torch.float32) / 255.0 - m) / s


# -------------------------------------------------------------------------------------------------- trunk


class ConvTrunk(nn.Module):
    """The published CIFAR conv trunk: 5 conv layers 3x3 (padding 1, bias), 16-32-64-128-256 channels,
    strides 1-2-2-2-2 (32 -> 2 px), BatchNorm+ReLU after layers 1-4, layer 5 linear; output (N, 1024)."""

    CHANNELS: tuple[int, ...] = (16, 32, 64, 128, 256)
    STRIDES: tuple[int, ...] = (1, 2, 2, 2, 2)
    out_features: int = 256 * 2 * 2

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for i, (ch, stride) in enumerate(zip(self.CHANNELS, self.STRIDES, strict=True)):
            layers.append(nn.Conv2d(in_ch, ch, kernel_size=3, stride=stride, padding=1, bias=True))
            if i < len(self.CHANNELS) - 1:
                layers += [nn.BatchNorm2d(ch), nn.ReLU()]
            in_ch = ch
        self.layers = nn.Sequential(*layers)
        # Provenance of a pre-trained trunk (epochs, seed, accuracies, times); empty for a fresh one.
        self.info: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1)


def _pretrain_head() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(1024, 2000), nn.ReLU(), nn.Linear(2000, 2000), nn.ReLU(), nn.Linear(2000, 10)
    )


def augment_batch(x_uint8: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random 32x32 crops of the zero-padded images and random horizontal flips, one draw per image.

    Vectorized: one gather whose row/column indices carry each image's crop offset and flip. Padding is black
    in pixel space (as torchvision's RandomCrop(32, padding=4) before ToTensor/Normalize). Works on uint8 or
    float, on the generator's device; returns the input's dtype.
    """
    n, _, h, w = x_uint8.shape
    dev = x_uint8.device
    padded = F.pad(x_uint8, (pad, pad, pad, pad))  # zeros
    oy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=dev)
    ox = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=dev)
    flip = torch.rand((n, 1), generator=generator, device=dev) < 0.5
    ar_h = torch.arange(h, device=dev).unsqueeze(0)
    ar_w = torch.arange(w, device=dev).unsqueeze(0)
    rows = oy + ar_h  # (n, h)
    cols = torch.where(flip, ox + (w - 1) - ar_w, ox + ar_w)  # (n, w)
    b = torch.arange(n, device=dev).view(n, 1, 1)
    # Advanced indices separated by the channel slice put their dims first: (n, h, w, c).
    out = padded[b, :, rows.unsqueeze(2), cols.unsqueeze(1)]
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def _accuracy(
    trunk: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> float:
    trunk.eval()
    head.eval()
    correct = 0
    for i in range(0, len(x), FEATURE_BATCH):
        xb = normalize(x[i : i + FEATURE_BATCH].to(device), CIFAR10_MEAN, CIFAR10_STD)
        pred = head(trunk(xb)).argmax(1).cpu()
        correct += int((pred == y[i : i + FEATURE_BATCH]).sum())
    return correct / max(1, len(x))


def _pretrain(
    cifar10: CifarArrays,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    progress: bool,
) -> ConvTrunk:
    if epochs < 1 or batch_size < 1:
        raise HarnessError(f"pretraining needs epochs >= 1 and batch_size >= 1 (got {epochs}, {batch_size})")
    # Seeded init without touching the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk, head = ConvTrunk(), _pretrain_head()
    trunk.to(device)
    head.to(device)
    params = [*trunk.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    shuffle_gen = torch.Generator().manual_seed(seed + 1)  # CPU: same order on every device
    aug_gen = torch.Generator(device=device).manual_seed(seed + 2)
    x_all = cifar10.train_x.to(device)
    y_all = cifar10.train_y.to(device)
    n = len(x_all)
    # Incomplete last batch dropped (as the harness loop), except when there is less than one batch at all.
    bs = min(batch_size, n)
    n_batches = n // bs
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs, desc="pretrain CIFAR-10 trunk", unit="epoch")
    loss_sum = correct = seen = 0.0
    for _epoch in range(epochs):
        trunk.train()
        head.train()
        perm = torch.randperm(n, generator=shuffle_gen).to(device)
        loss_sum = correct = seen = 0.0
        for b in range(n_batches):
            idx = perm[b * bs : (b + 1) * bs]
            xb = normalize(augment_batch(x_all[idx], aug_gen), CIFAR10_MEAN, CIFAR10_STD)
            yb = y_all[idx]
            logits = head(trunk(xb))
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(yb)
            correct += float((logits.detach().argmax(1) == yb).sum())
            seen += len(yb)
        if bar is not None:
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    train_s = time.perf_counter() - t0
    test_acc = _accuracy(trunk, head, cifar10.test_x, cifar10.test_y, device)
    trunk.info = {
        "epochs": epochs,
        "seed": seed,
        "batch_size": bs,
        "lr": lr,
        "n_train": n,
        "last_epoch_loss": loss_sum / max(1.0, seen),
        "last_epoch_train_acc": correct / max(1.0, seen),
        "cifar10_test_acc": test_acc,
        "train_s": train_s,
        "device": str(device),
        "torch": str(torch.__version__),
    }
    return _freeze(trunk)


def _freeze(trunk: ConvTrunk) -> ConvTrunk:
    trunk.eval()  # BatchNorm uses its running statistics from now on
    trunk.requires_grad_(False)
    return trunk


def pretrain_trunk(
    cifar10: CifarArrays,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-4,
    seed: int = 42,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> ConvTrunk:
    """Train the trunk with a temporary 1024-2000-2000-10 head on CIFAR-10 (Adam, crops+flips, CIFAR-10
    normalization) and return it frozen (eval mode, no grad). `trunk.info` records how it was made."""
    return _pretrain(
        cifar10,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=resolve_device(device),
        progress=progress,
    )


# -------------------------------------------------------------------------------------------------- caches


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_file(path) as handle:
        torch.save(obj, handle)


def _load_cache(path: Path, what: str) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: corrupt {what} cache ({_one_line(exc)}); delete it to recompute") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: corrupt {what} cache (not a dict); delete it to recompute")
    return obj


def trunk_cache_path(cache_dir: Path, epochs: int, seed: int) -> Path:
    """Where the pre-trained trunk of (epochs, seed) lives."""
    return Path(cache_dir) / f"cifar10-trunk-e{epochs}-s{seed}.pt"


def features_cache_path(cache_dir: Path, trunk_sha256: str, data_sha256: str) -> Path:
    """Where the CIFAR-100 features of a trunk file and a set of CIFAR-100 files live."""
    return Path(cache_dir) / f"cifar100-features-t{trunk_sha256[:16]}-d{data_sha256[:16]}.pt"


def get_pretrained_trunk(
    data_dir: Path,
    cache_dir: Path,
    device: str | torch.device,
    *,
    epochs: int = 100,
    seed: int = 42,
    progress: bool = True,
) -> tuple[ConvTrunk, str]:
    """The frozen pre-trained trunk and the sha256 of its cache file: loaded when cached (CIFAR-10 is then not
    needed), else trained on CIFAR-10 and saved. A corrupt cache file is a DataError naming it (not silently
    retrained: retraining takes hours on a CPU)."""
    dev = resolve_device(device)
    path = trunk_cache_path(Path(cache_dir), epochs, seed)
    if not path.is_file():
        trunk = _pretrain(
            load_cifar10(Path(data_dir)),
            epochs=epochs,
            batch_size=256,
            lr=1e-4,
            seed=seed,
            device=dev,
            progress=progress,
        )
        state = {k: v.detach().cpu() for k, v in trunk.state_dict().items()}
        _atomic_save({"state_dict": state, "info": trunk.info}, path)
    obj = _load_cache(path, "trunk")
    trunk = ConvTrunk()
    try:
        trunk.load_state_dict(obj["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise DataError(f"{path}: corrupt trunk cache ({_one_line(exc)}); delete it to retrain") from None
    trunk.info = dict(obj.get("info", {}))
    return _freeze(trunk.to(dev)), file_sha256(path)


@torch.no_grad()
def extract_features(
    trunk: nn.Module, x_uint8: torch.Tensor, device: torch.device, batch: int = FEATURE_BATCH
) -> torch.Tensor:
    """Push uint8 CIFAR-100 images through the trunk in eval mode (CIFAR-100 normalization, no augmentation);
    float32 (N, 1024) on the CPU."""
    was_training = trunk.training
    trunk.eval()
    out = [
        trunk(normalize(x_uint8[i : i + batch].to(device), CIFAR100_MEAN, CIFAR100_STD)).float().cpu()
        for i in range(0, len(x_uint8), batch)
    ]
    trunk.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 1024)


def cifar100_data_sha256(data_dir: Path) -> str:
    """Fingerprint of the CIFAR-100 files (train, test), part of the feature cache key."""
    folder = Path(data_dir) / CIFAR100_FOLDER
    h = hashlib.sha256()
    for name in (*CIFAR100_TRAIN_FILES, *CIFAR100_TEST_FILES):
        h.update(f"{name}:{file_sha256(folder / name)}\n".encode())
    return h.hexdigest()


def cifar100_features(
    data_dir: Path,
    cache_dir: Path,
    device: str | torch.device,
    *,
    trunk_mode_epochs: int = 100,
    seed: int = 42,
    progress: bool = True,
) -> CifarFeatures:
    """CIFAR-100 features of the pre-trained trunk (`trunk_mode_epochs`, `seed`), computed once and cached
    under a name holding the trunk file's sha256 and the CIFAR-100 files' sha256."""
    dev = resolve_device(device)
    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    # Make sure the files exist (or are downloaded) before fingerprinting them.
    _ensure_files(data_dir, CIFAR100_FOLDER, (*CIFAR100_TRAIN_FILES, *CIFAR100_TEST_FILES), "CIFAR100")
    trunk, trunk_sha = get_pretrained_trunk(
        data_dir, cache_dir, dev, epochs=trunk_mode_epochs, seed=seed, progress=progress
    )
    path = features_cache_path(cache_dir, trunk_sha, cifar100_data_sha256(data_dir))
    if not path.is_file():
        data = load_cifar100(data_dir)
        fresh: dict[str, Any] = {
            "train_x": extract_features(trunk, data.train_x, dev),
            "train_y": data.train_y.clone(),
            "test_x": extract_features(trunk, data.test_x, dev),
            "test_y": data.test_y.clone(),
            "trunk_sha256": trunk_sha,
        }
        _atomic_save(fresh, path)
    obj = _load_cache(path, "CIFAR-100 feature")
    try:
        feats = CifarFeatures(
            obj["train_x"], obj["train_y"], obj["test_x"], obj["test_y"], str(obj["trunk_sha256"]), path
        )
    except KeyError as exc:
        raise DataError(f"{path}: corrupt CIFAR-100 feature cache (no {exc.args[0]!r}); delete it") from None
    tensors = (feats.train_x, feats.train_y, feats.test_x, feats.test_y)
    if (
        not all(isinstance(t, torch.Tensor) for t in tensors)
        or feats.trunk_sha256 != trunk_sha
        or feats.train_x.shape[1:] != (1024,)
        or len(feats.train_x) != len(feats.train_y)
    ):
        raise DataError(f"{path}: CIFAR-100 feature cache does not match its trunk or shapes; delete it")
    return feats
