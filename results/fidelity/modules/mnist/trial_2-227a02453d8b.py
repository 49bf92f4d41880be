"""Continual-learning regularizer generated from study mnist, trial 2 by space/generator.py.

importance = SI; across contexts summed; penalty 1.0 x quadratic, reg_strength_scale 1.0.

Edit the design rather than this file. Regenerate it with:

    python -m search export --study mnist --trial 2 --out custom_regularization.py

Hook contract: HARNESS.md sections 1-2. Imports only torch and the standard library.

Provenance: study=mnist, trial=2
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

# The design this file was generated from (space.Design; `python -m search export --design` takes it as
# JSON). The constants below are what the code uses.
DESIGN = {
    "fisher_weight": 0.0,
    "fisher_labels": "exact",
    "mas_weight": 0.0,
    "si_weight": 1.0,
    "si_clamp": False,
    "uniform_weight": 0.0,
    "data_examples": 200,
    "data_subset": "first",
    "data_seed": 0,
    "norm": "none",
    "rescale": "none",
    "power": 1.0,
    "clip_quantile": 1.0,
    "floor": 0.0,
    "accumulate": "sum",
    "decay_gamma": 1.0,
    "penalty": "quadratic",
    "penalty_coef": 1.0,
    "reg_strength_scale": 1.0,
}

# Multiplies the benchmark's reg_strength (HARNESS.md section 1).
CONFIG_OVERRIDES = {"reg_strength_scale": 1.0}


# Clamp SI's Omega at 0 (W < 0 where steps went uphill); published SI does not.
CLAMP_SI = False

# Constant factor of the penalty (as SI and MAS publish).
PENALTY_COEF = 1.0


def _regularized(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """The regularized parameters (requires_grad, from `model.param_list`) with their '__' keys."""
    for named in model.param_list:
        for name, param in named():
            if param.requires_grad:
                yield name.replace(".", "__"), param


def _si(
    model: torch.nn.Module,
    params: dict[str, torch.nn.Parameter],
    prev_params: dict[str, torch.Tensor],
    clamp: bool,
) -> dict[str, torch.Tensor]:
    """SI (Zenke et al. 2017): Omega = W / (Delta^2 + epsilon), W the harness's path integral `_custom_W`."""
    omega = {}
    for k, p in params.items():
        delta = p.detach() - prev_params[k]
        omega[k] = model._custom_W[k] / (delta.square() + model.epsilon)
        if clamp:
            omega[k] = omega[k].clamp_min(0.0)  # W can be negative when steps went uphill
    return omega


def _penalty_buffers(
    model: torch.nn.Module,
    importance: dict[str, torch.Tensor],
    anchor: dict[str, torch.Tensor],
    coef: float,
) -> tuple[
    list[torch.nn.Parameter], tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]
]:
    """The penalized parameters and the flat buffers of the penalty, rebuilt only when their inputs change.

    Buffers: coef * importance and a scratch buffer for theta - anchor (flat), with per-parameter views of the
    scratch and of the flat anchor. The cache lives on the model; it is stale when any importance or anchor
    tensor was replaced (identity; the cache holds a reference, so an id cannot be reused) or modified in
    place (its `_version` counter moved).
    """
    params = [(k, p) for k, p in _regularized(model) if k in importance]
    stamp = [(t, t._version) for k, _ in params for t in (importance[k], anchor[k])]
    cache = getattr(model, "_custom_penalty_cache", None)
    if (
        cache is None
        or len(cache[0]) != len(stamp)
        or any(t is not u or v != u._version for (t, v), (u, _) in zip(cache[0], stamp, strict=True))
    ):
        sizes = [p.numel() for _, p in params]
        weight = torch.cat([(coef * importance[k]).flatten() for k, _ in params]).detach()
        center = torch.cat([anchor[k].flatten() for k, _ in params]).detach()
        scratch = torch.empty_like(center)
        cache = (stamp, (weight, scratch, list(scratch.split(sizes)), list(center.split(sizes))))
        model._custom_penalty_cache = cache
    return [p for _, p in params], cache[1]


class _QuadraticPenalty(torch.autograd.Function):
    """sum w (theta - theta*)^2 over flat buffers; the gradient 2 w (theta - theta*) comes from the forward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        buffers: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]],
        *params: torch.Tensor,
    ) -> torch.Tensor:
        weight, diff, diff_views, center_views = buffers
        for p, d, c in zip(params, diff_views, center_views, strict=True):
            torch.sub(
                p.detach().reshape(-1), c, out=d
            )  # theta - theta*, written into the flat scratch buffer
        weighted = weight * diff
        ctx.save_for_backward(weighted)
        ctx.shapes = [p.shape for p in params]
        return torch.dot(weighted, diff)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        (weighted,) = ctx.saved_tensors
        # In place: nothing else reads this buffer (a second backward through it raises torch's version error).
        grad = weighted.mul_(2.0 * grad_out)
        sizes = [s.numel() for s in ctx.shapes]
        return (None, *(g.view(s) for g, s in zip(grad.split(sizes), ctx.shapes, strict=True)))


def _quadratic_penalty(
    model: torch.nn.Module, importance: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], coef: float
) -> torch.Tensor:
    """coef * sum importance (theta - anchor)^2, one fused pass; exactly 0 while nothing is carried."""
    if not importance:
        return torch.zeros((), device=next(model.parameters()).device)
    params, buffers = _penalty_buffers(model, importance, anchor, coef)
    return _QuadraticPenalty.apply(buffers, *params)


def estimate_importance(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    prev_params: dict[str, torch.Tensor],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """importance = SI; across contexts summed; penalty 1.0 x quadratic, reg_strength_scale 1.0."""
    params = dict(_regularized(model))
    si = _si(model, params, prev_params, clamp=CLAMP_SI)
    return si  # the loop adds it to the carried importance: a plain sum


def compute_regularization_loss(
    model: torch.nn.Module,
    importance_dict: dict[str, torch.Tensor],
    prev_params_dict: dict[str, torch.Tensor],
) -> torch.Tensor:
    """R = PENALTY_COEF * sum importance (theta - anchor)^2; 0 while nothing is carried."""
    return _quadratic_penalty(model, importance_dict, prev_params_dict, PENALTY_COEF)
