"""Benchmark harness entry point: `python continual-learning/main.py --experiment splitMNIST --hooks FILE`."""

import sys

from clharness.cli import main

if __name__ == "__main__":
    sys.exit(main())
