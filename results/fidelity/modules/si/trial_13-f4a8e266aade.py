"""Continual-learning regularizer generated from study si, trial 13 by space/generator.py.

importance = SI; across contexts summed; reg_strength_scale 0.1478576214529128.

Edit the design rather than this file. Regenerate it with:

    python -m search export --study si --trial 13 --out custom_regularization.py

Hook contract: HARNESS.md sections 1-2. Imports only torch and the standard library.

Provenance: study=si, trial=13
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

# The design this file was generated from (space.Design; `python -m search export --design` takes it as
# JSON). The constants below are what the code uses.
DESIGN = {
    "estimators": "si",
    "si_clamp": False,
    "norm": "none",
    "power": 1.0,
    "clip_quantile": 1.0,
    "reference": "none",
    "accumulate": "sum",
    "reg_strength_scale": 0.1478576214529128,
}

# Multiplies the benchmark's reg_strength (HARNESS.md section 1).
CONFIG_OVERRIDES = {"reg_strength_scale": 0.1478576214529128}


# Clamp SI's Omega at 0 (W < 0 where steps went uphill); published SI does not.
CLAMP_SI = False

# Constant factor of the penalty (EWC's quadratic approximation).
PENALTY_COEF = 0.5

# On a CPU the penalty runs over blocks of at most this many floats (512 KiB in float32), so that
# theta - theta* of a block stays in the L2 cache between its write and its two reads.
_PENALTY_BLOCK_FLOATS = 131072


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


def _penalty_pass(
    params: list[torch.Tensor],
    weights: list[torch.Tensor],
    centers: list[torch.Tensor],
    grad_scale: float | None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """sum w (theta - c)^2, and (unless grad_scale is None) its gradient times grad_scale / 2, block by block.

    On a CPU each parameter is walked in blocks small enough that theta - c stays in the L2 cache between
    its write and its reads; elsewhere one block per parameter, as every operation costs a kernel launch.
    Every gradient tensor is new, so a penalty evaluated twice before one backward pass keeps both.
    """
    sums, grads = [], []
    for p, w, c in zip(params, weights, centers, strict=True):
        theta, weight, center = p.detach().reshape(-1), w.detach().reshape(-1), c.detach().reshape(-1)
        n = theta.numel()
        size = min(n, _PENALTY_BLOCK_FLOATS) if theta.device.type == "cpu" else n
        scratch = torch.empty(size, dtype=theta.dtype, device=theta.device)
        grad = torch.empty_like(theta) if grad_scale is not None else scratch
        for lo in range(0, n, size):
            hi = min(lo + size, n)
            diff = scratch[: hi - lo]
            torch.sub(theta[lo:hi], center[lo:hi], out=diff)  # theta - theta*
            part = grad[lo:hi] if grad_scale is not None else torch.empty_like(diff)
            torch.mul(diff, weight[lo:hi], out=part)  # F (theta - theta*)
            sums.append(torch.dot(part, diff))
            if grad_scale is not None:
                part.mul_(grad_scale)  # still in the cache
        if grad_scale is not None:
            grads.append(grad.view_as(p))
    return torch.stack(sums).sum(), grads


class _QuadraticPenalty(torch.autograd.Function):
    """coef * sum F (theta - theta*)^2; the forward also makes the gradient, scaled by the expected factor.

    The loop multiplies the penalty by its reg_strength. The factor the last two backward passes agreed on is
    kept on the model (`state`) and folded into the gradient while it is made, so that the backward pass
    usually does no work; a different factor costs one multiplication.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, state: dict, coef: float, n: int, *tensors: torch.Tensor
    ) -> torch.Tensor:
        params, weights, centers = tensors[:n], tensors[n : 2 * n], tensors[2 * n :]
        factor = state["factor"]
        value, grads = _penalty_pass(list(params), list(weights), list(centers), 2.0 * coef * factor)
        # The gradients stay referenced here, so that autograd copies rather than adopts them as .grad.
        ctx.grads, ctx.applied, ctx.state, ctx.n = grads, factor, state, n
        return coef * value

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        grads, applied = ctx.grads, ctx.applied
        if grad_out.device.type != "cpu":
            ratio = grad_out / applied  # reading grad_out on the host would wait for the device
            grads = [g * ratio for g in grads]
        else:
            factor = float(grad_out)
            state = ctx.state
            if factor == state["last"] and 0.0 < abs(factor) < float("inf"):
                state["factor"] = factor  # the same factor twice in a row: the next forward folds it in
            state["last"] = factor
            if factor != applied:
                # New tensors, so that a second backward pass (retain_graph) scales the original ones.
                grads = [g * (factor / applied) for g in grads]
        return (None, None, None, *grads, *([None] * (2 * ctx.n)))


def _quadratic_penalty(
    model: torch.nn.Module, importance: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], coef: float
) -> torch.Tensor:
    """coef * sum importance (theta - anchor)^2 over the parameters that have importance; 0 while none has."""
    pairs = [(k, p) for k, p in _regularized(model) if k in importance]
    if not pairs:
        return torch.zeros((), device=next(model.parameters()).device)
    params = [p for _, p in pairs]
    weights = [importance[k] for k, _ in pairs]
    centers = [anchor[k] for k, _ in pairs]
    if not torch.is_grad_enabled():  # evaluated for its value only (logging): no gradient to make
        return coef * _penalty_pass(params, weights, centers, None)[0]
    state = getattr(model, "_custom_penalty_factor", None)
    if state is None:  # the factor the loop multiplies the penalty by, learnt from the backward passes
        state = model._custom_penalty_factor = {"factor": 1.0, "last": None}
    return _QuadraticPenalty.apply(state, coef, len(params), *params, *weights, *centers)


def estimate_importance(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    prev_params: dict[str, torch.Tensor],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """importance = SI; across contexts summed; reg_strength_scale 0.1478576214529128."""
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
