"""Pre-train the CIFAR-10 conv trunk once and cache it, with the CIFAR-100 features it produces.

    python continual-learning/pretrain_trunk.py [--data-dir DIR] [--cache-dir DIR] [--device auto|cpu|cuda]
                                                [--epochs N] [--seed N]

Later Split-CIFAR100 runs (`--cifar-trunk pretrained`) load both from the cache. Errors a user can cause
(missing data, corrupt cache, no CUDA) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from clharness.cifar import cifar100_features, get_pretrained_trunk, trunk_cache_path
from clharness.devices import resolve_device
from clharness.errors import HarnessError
from clharness.paths import cache_dir as resolve_cache_dir
from clharness.paths import data_dir as resolve_data_dir


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        description="Pre-train and cache the CIFAR-10 trunk and the CIFAR-100 features."
    )
    p.add_argument("--data-dir", default=None, help="dataset root (default: $CL_DATA_DIR, else <repo>/data)")
    p.add_argument(
        "--cache-dir", default=None, help="cache folder (default: $CL_CACHE_DIR, else <repo>/.cache)"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=100, help="CIFAR-10 epochs (published protocol: 100)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.epochs < 1:
            raise HarnessError(f"--epochs must be >= 1 (got {args.epochs})")
        data_dir = resolve_data_dir(args.data_dir)
        cache_dir = resolve_cache_dir(args.cache_dir)
        device = resolve_device(args.device)
        trunk_file = trunk_cache_path(cache_dir, args.epochs, args.seed)
        cached = trunk_file.is_file()
        t0 = time.perf_counter()
        feats = cifar100_features(
            data_dir,
            cache_dir,
            device,
            trunk_mode_epochs=args.epochs,
            seed=args.seed,
            progress=not args.no_progress,
        )
        total_s = time.perf_counter() - t0
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"device:    {device}")
    print(f"trunk:     {trunk_file} ({'loaded from cache' if cached else 'trained now'})")
    print(f"  sha256:  {feats.trunk_sha256}")
    # Cheap now that the trunk is cached: only to print how it was made.
    trunk, _ = get_pretrained_trunk(data_dir, cache_dir, "cpu", epochs=args.epochs, seed=args.seed)
    info = trunk.info
    if info:
        print(
            f"  trained: {info.get('epochs')} epochs, seed {info.get('seed')}, on {info.get('device')} in "
            f"{info.get('train_s', float('nan')):.1f} s; CIFAR-10 test accuracy of the temporary head "
            f"{info.get('cifar10_test_acc', float('nan')):.4f}"
        )
    print(f"features:  {feats.cache_file}")
    print(f"  train {tuple(feats.train_x.shape)}, test {tuple(feats.test_x.shape)}")
    print(f"time:      {total_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
