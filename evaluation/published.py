"""The benchmarks as the results name them, and the numbers published for them that our results are read
beside."""

from __future__ import annotations

BENCHMARK_TITLES: dict[str, str] = {
    "splitMNIST": "Split-MNIST",
    "permMNIST": "Permuted-MNIST",
    "CIFAR100": "Split-CIFAR100",
}
BENCHMARK_SETTINGS: dict[str, str] = {
    "splitMNIST": "task-incremental, 5 contexts x 2 digits",
    "permMNIST": "domain-incremental, 10 permutations",
    "CIFAR100": "task-incremental, 10 contexts x 10 classes",
}

# Published numbers, as fractions. Sources are keyed by a short tag that the report's footnotes explain.
SOURCES: dict[str, str] = {
    "harness": "the original benchmark harness's published results for its EWC, Online EWC and SI modules",
    "vdv2022": (
        "van de Ven, Tuytelaars & Tolias, *Three types of incremental learning*, Nature Machine Intelligence "
        "2022, Table 3: Split-CIFAR100 task-incremental with the pretrained trunk, 10 seeds "
        "(published in percent)"
    ),
}
REFERENCES: dict[str, dict[str, list[tuple[str, float]]]] = {
    "splitMNIST": {
        "ewc": [("harness", 0.958)],
        "online_ewc": [("harness", 0.974)],
        "si": [("harness", 0.985)],
    },
    "permMNIST": {
        "ewc": [("harness", 0.838)],
        "online_ewc": [("harness", 0.843)],
        "si": [("harness", 0.447)],
    },
    "CIFAR100": {
        "none": [("vdv2022", 0.6143)],
        "ewc": [("harness", 0.546), ("vdv2022", 0.7634)],
        "online_ewc": [("harness", 0.544)],
        "si": [("harness", 0.536), ("vdv2022", 0.7484)],
        "joint": [("vdv2022", 0.7878)],
    },
}
