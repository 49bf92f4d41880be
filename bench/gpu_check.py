"""GPU check: a few hundred training steps of every benchmark on CUDA, with steps per second.

For each benchmark it runs the harness itself (two contexts of `--steps` iterations each, so the second context
pays for the penalty, with the importance estimation in between) and prints training steps per second, the
seconds of the importance estimation and where the data came from. Data lives on the device (the harness puts
every context's tensors there). Where a dataset is absent (CIFAR-100 on most machines) the same loop runs on
synthetic tensors of the benchmark's shapes instead, and the line says so. Split-CIFAR100 is checked in both of
its trunk modes: `pretrained` (the MLP on 1,024 stored trunk features; synthetic features stand in unless the
trunk is already cached) and `scratch` (conv trunk and MLP on images).

Needs only torch, torchvision and the project installed (`evaluation.gpu_check` holds the check); runs on PyTorch
2.11+ and Python 3.11/3.12.
Usage: .venv/bin/python bench/gpu_check.py [--device cuda] [--steps 300] [--hooks FILE]
Without CUDA it prints why and exits with code 0 (nothing to check); `--device cpu --steps 20` exercises it.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from evaluation.errors import UserError
from evaluation.gpu_check import gpu_check


def main(argv: list[str] | None = None) -> int:
    """Run every check and print a table; exit 0 with a message when the device is absent."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--steps", type=int, default=300, help="training steps per context (2 contexts)")
    parser.add_argument("--hooks", type=Path, default=None, help="hook module (default: the shipped one)")
    parser.add_argument("--only", nargs="+", help="labels to run (prefix match), e.g. splitMNIST CIFAR100")
    args = parser.parse_args(argv)
    try:
        gpu_check(args.device, args.steps, args.hooks, args.only, log=functools.partial(print, flush=True))
    except UserError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
