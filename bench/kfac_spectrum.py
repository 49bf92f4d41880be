"""How much of a structured run's Kronecker factors the rank-r eigenbasis keeps, read from its checkpoint.

A run of a K-FAC design (`estimators = "kfac"`, merged pairs) keeps its factors on the model, so the harness's
checkpoint (`<record>.json.ckpt`, written after every context while the run goes) holds them. For each layer and
rank r this prints the share of each factor's trace in its top r eigenvectors, and their product: the share of
the layer's Kronecker form, tr(A) tr(G), that the rank-r block keeps exactly; the rest goes to the diagonal
remainder (docs/space.md, "The eigenbasis penalty").

    OMP_NUM_THREADS=1 .venv/bin/python bench/kfac_spectrum.py results/runs/permMNIST/kfac_ewc__...__seed44.json.ckpt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def top_shares(factor: torch.Tensor, ranks: list[int]) -> list[float]:
    """The share of a symmetric PSD matrix's trace in its top r eigenvalues, for each r."""
    eig = torch.linalg.eigvalsh(factor.double()).flip(0).clamp(min=0.0)
    return [float(eig[:r].sum() / eig.sum()) for r in ranks]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="a K-FAC run's checkpoint (.json.ckpt)")
    p.add_argument("--ranks", type=int, nargs="+", default=[32, 64, 128, 256])
    args = p.parse_args()
    state = torch.load(args.checkpoint, weights_only=False, map_location="cpu")
    factors = state["hook_attrs"].get("_custom_kfac")
    if not factors:
        raise SystemExit(f"{args.checkpoint}: no Kronecker factors (not a K-FAC run)")
    print(f"after context {state['context']}; share of the trace in the top r eigenvectors, A / G / A (x) G")
    print("| layer | " + " | ".join(f"r = {r}" for r in args.ranks) + " |")
    print("|---|" + "---|" * len(args.ranks))
    for name, pair in factors.items():
        if pair["A"].shape[0] != 1:
            continue  # per-context pairs: several per layer, not this table's question
        a, g = (top_shares(pair[f][0], args.ranks) for f in ("A", "G"))
        cells = [f"{x:.2f} / {y:.2f} / {x * y:.2f}" for x, y in zip(a, g, strict=True)]
        print(f"| {name} ({pair['A'].shape[1]} x {pair['G'].shape[1]}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
