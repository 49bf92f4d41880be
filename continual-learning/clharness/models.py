"""The benchmarks' networks, with the harness's output-unit masking and hook attributes."""

from __future__ import annotations

import torch
from torch import nn


def mlp(in_dim: int, hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
    """Fully connected ReLU network with a linear output layer (the loss applies the softmax)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, n_out))
    return nn.Sequential(*layers)


class ContinualNet(nn.Module):
    """A classifier whose forward returns only the active output units (all of them when none are set).

    Carries the attributes of docs/contract.md section 2 that hook modules read: `param_list`, `_custom_W`,
    `_custom_p_old`, `_custom_importance`, `_custom_prev_params`, `gamma`, `epsilon`.
    """

    def __init__(self, head: nn.Sequential, trunk: nn.Module | None = None) -> None:
        super().__init__()
        if trunk is not None:
            self.trunk = trunk
        self.fcs = head
        self.active_units: tuple[int, int] | None = None
        self.param_list = [self.named_parameters]
        self._custom_W: dict[str, torch.Tensor] = {}
        self._custom_p_old: dict[str, torch.Tensor] = {}
        self._custom_importance: dict[str, torch.Tensor] = {}
        self._custom_prev_params: dict[str, torch.Tensor] = {}
        self.gamma = 1.0
        self.epsilon = 0.1

    def all_units(self, x: torch.Tensor) -> torch.Tensor:
        """Every output unit, whatever is active (joint training selects per example)."""
        if hasattr(self, "trunk"):
            x = self.trunk(x)
        return self.fcs(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.all_units(x)
        if self.active_units is None:
            return out
        lo, hi = self.active_units
        return out[:, lo:hi]


def regularized_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters hook code regularizes, keyed by their name with '.' replaced by '__'."""
    out: dict[str, nn.Parameter] = {}
    for named in model.param_list:  # type: ignore[attr-defined,union-attr]
        for name, param in named():
            if param.requires_grad:
                out[name.replace(".", "__")] = param
    return out
