"""Context streams drawn from the run's seed: class orders, pixel permutations, validation splits, batches.

Every random choice of a stream comes from its own generator, `numpy.random.default_rng([seed, tag])`, with a
fixed tag per purpose, so that a seed fixes the whole stream and changing one purpose (say, the validation
fraction) leaves the others (class order, permutations) unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

# One tag per purpose; never reuse or renumber them, results depend on them.
TAG_CLASS_ORDER = 1
TAG_PERMUTATION = 2
TAG_VALIDATION = 3
TAG_SUBSET = 4
TAG_BATCHES = 5


def stream_rng(seed: int, tag: int, *extra: int) -> np.random.Generator:
    """The dedicated generator for one purpose (and optionally one context) of a seed's stream."""
    return np.random.default_rng([seed, tag, *extra])


def class_order(seed: int, n_classes: int) -> list[int]:
    """The order in which classes are split into contexts: a seeded permutation of 0..n_classes-1."""
    return [int(c) for c in stream_rng(seed, TAG_CLASS_ORDER).permutation(n_classes)]


def pixel_permutations(seed: int, contexts: int, n_pixels: int) -> list[torch.Tensor]:
    """One fixed pixel permutation per context (every context is permuted, the first one too)."""
    rng = stream_rng(seed, TAG_PERMUTATION)
    return [torch.from_numpy(rng.permutation(n_pixels)) for _ in range(contexts)]


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, val), holding out round(fraction * n_c) images of every class c."""
    if fraction <= 0:
        return torch.arange(len(labels)), torch.empty(0, dtype=torch.long)
    rng = stream_rng(seed, TAG_VALIDATION)
    y = labels.numpy()
    train, val = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = round(fraction * len(idx))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.from_numpy(np.sort(np.concatenate(train))), torch.from_numpy(np.sort(np.concatenate(val)))


def stratified_subset(
    indices: torch.Tensor, labels: torch.Tensor, n: int, seed: int, context: int
) -> torch.Tensor:
    """At most `n` of `indices`, with each class kept in proportion (a proxy run's smaller training set)."""
    if n >= len(indices):
        return indices
    rng = stream_rng(seed, TAG_SUBSET, context)
    y = labels[indices].numpy()
    classes = np.unique(y)
    keep = []
    for c in classes:
        idx = indices.numpy()[y == c]
        share = max(1, round(n * len(idx) / len(indices)))
        keep.append(idx[rng.permutation(len(idx))[:share]])
    return torch.from_numpy(np.sort(np.concatenate(keep)))


class BatchSampler:
    """Mini-batch indices without replacement, reshuffled at every pass, incomplete last batch dropped.

    A context smaller than one batch is used whole as its batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, context: int) -> None:
        self.n = n
        self.batch_size = min(batch_size, n)
        self._gen = torch.Generator().manual_seed(int(stream_rng(seed, TAG_BATCHES, context).integers(2**62)))
        self._order = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def next(self) -> torch.Tensor:
        """The next batch of indices into the context's data."""
        if self._pos + self.batch_size > len(self._order):
            self._order = torch.randperm(self.n, generator=self._gen)
            self._pos = 0
        batch = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return batch
