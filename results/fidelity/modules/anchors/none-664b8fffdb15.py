"""Continual-learning regularizer generated from the preset none by space/generator.py.

no regularization (the penalty is 0).

Edit the design rather than this file. Regenerate it with:

    python -m search export --preset none --out custom_regularization.py

Hook contract: HARNESS.md sections 1-2. Imports only torch and the standard library.

Provenance: preset=none
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

# The design (the code reads the constants below; `python -m search export --design` takes it as JSON).
DESIGN = {
    "estimators": "none",
}

# Multiplies the benchmark's reg_strength (HARNESS.md section 1).
CONFIG_OVERRIDES = {"reg_strength_scale": 1.0}


def _regularized(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """The regularized parameters (requires_grad, from `model.param_list`) with their '__' keys."""
    for named in model.param_list:
        for name, param in named():
            if param.requires_grad:
                yield name.replace(".", "__"), param


def estimate_importance(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    prev_params: dict[str, torch.Tensor],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """No regularization: zero importance for every regularized parameter."""
    return {k: torch.zeros_like(p) for k, p in _regularized(model)}


def compute_regularization_loss(
    model: torch.nn.Module,
    importance_dict: dict[str, torch.Tensor],
    prev_params_dict: dict[str, torch.Tensor],
) -> torch.Tensor:
    """No regularization: R = 0."""
    return torch.zeros((), device=next(model.parameters()).device)
