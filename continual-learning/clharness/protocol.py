"""The published protocol (van de Ven, Tuytelaars & Tolias 2022): one frozen record per benchmark."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    """Settings of one benchmark, as docs/contract.md section 4 fixes them."""

    experiment: str
    scenario: str  # "task": each context has its own output units; "domain": all units always active
    contexts: int
    iters: int  # training iterations per context
    batch_size: int
    lr: float  # Adam learning rate
    reg_strength: float  # the published tuned EWC strength; hook modules scale it
    classes_per_context: int | None  # None in the domain-incremental benchmark (every context has 10 classes)
    hidden: tuple[int, ...]  # hidden widths of the MLP (after the trunk for CIFAR)
    n_classes: int  # output units of the network


PROTOCOLS: dict[str, Protocol] = {
    "splitMNIST": Protocol("splitMNIST", "task", 5, 2000, 128, 1e-3, 1e5, 2, (400, 400), 10),
    "permMNIST": Protocol("permMNIST", "domain", 10, 5000, 128, 1e-4, 100.0, None, (1000, 1000), 10),
    "CIFAR100": Protocol("CIFAR100", "task", 10, 5000, 256, 1e-4, 1000.0, 10, (2000, 2000), 100),
}

# Bumped whenever a change to the harness could change a result, so cached results keyed on it go stale.
HARNESS_VERSION = "1"
