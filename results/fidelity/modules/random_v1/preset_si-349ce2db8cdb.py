"""Continual-learning regularizer generated from the preset si by space/generator.py.

importance = SI; across contexts summed; penalty 1.0 x quadratic, reg_strength_scale 1.0.

Edit the design rather than this file. Regenerate it with:

    python -m search export --preset si --out custom_regularization.py

Hook contract: HARNESS.md sections 1-2. Imports only torch and the standard library.

Provenance: preset=si
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


def _penalty_plan(
    model: torch.nn.Module,
    importance: dict[str, torch.Tensor],
    anchor: dict[str, torch.Tensor],
    coef: float,
) -> tuple[list[torch.nn.Parameter], dict]:
    """The penalized parameters and the penalty's flat buffers and blocks, rebuilt only when their inputs change.

    The weight buffer holds 2 * coef * importance * scale, where scale is the factor the loop multiplies the
    penalty by (its reg_strength, learnt from the backward passes): the gradient then needs no pass of its own.
    The plan lives on the model; it is stale when any importance or anchor tensor was replaced (identity; the
    plan holds a reference, so an id cannot be reused) or modified in place (its `_version` counter moved).
    """
    params = [(k, p) for k, p in _regularized(model) if k in importance]
    stamp = [(t, t._version) for k, _ in params for t in (importance[k], anchor[k])]
    plan = getattr(model, "_custom_penalty_plan", None)
    if (
        plan is None
        or len(plan["stamp"]) != len(stamp)
        or any(t is not u or v != u._version for (t, v), (u, _) in zip(plan["stamp"], stamp, strict=True))
    ):
        center = torch.cat([anchor[k].flatten() for k, _ in params]).detach()
        weight = torch.empty_like(center)
        # Blocks of the flat buffers. On a CPU they are small enough that theta - theta* stays in the cache
        # between its write and its reads; elsewhere one block, as every operation costs a kernel launch.
        size = _PENALTY_BLOCK_FLOATS if center.device.type == "cpu" else center.numel()
        scratch = torch.empty(min(size, center.numel()), dtype=center.dtype, device=center.device)
        spans = []  # each parameter's span in the flat buffers
        for _, p in params:
            start = spans[-1][1] if spans else 0
            spans.append((start, start + p.numel()))
        blocks = []  # (span in the flat buffers, its weights and scratch, the parameter pieces it holds)
        for lo in range(0, center.numel(), size):
            hi = min(lo + size, center.numel())
            pieces = []  # (parameter index, span in the parameter, its scratch and anchor)
            for i, (a, b) in enumerate(spans):
                if a < hi and b > lo:
                    first, last = max(a, lo), min(b, hi)
                    pieces.append(
                        (i, slice(first - a, last - a), scratch[first - lo : last - lo], center[first:last])
                    )
            blocks.append((slice(lo, hi), weight[lo:hi], scratch[: hi - lo], pieces))
        plan = {
            "stamp": stamp,
            "blocks": blocks,
            "numel": center.numel(),
            "shapes": [p.shape for _, p in params],
            "weights": list(weight.split([p.numel() for _, p in params])),
            "scale": None,
            "next_scale": 1.0 if plan is None else plan["next_scale"],
            "last_factor": None,
        }
        model._custom_penalty_plan = plan
    if plan["scale"] != plan["next_scale"]:  # new buffers, or the loop's factor changed
        plan["scale"] = plan["next_scale"]
        for (k, _), weight in zip(params, plan["weights"], strict=True):
            torch.mul(importance[k].detach().flatten(), 2.0 * coef * plan["scale"], out=weight)
    return [p for _, p in params], plan


class _QuadraticPenalty(torch.autograd.Function):
    """coef * sum F (theta - theta*)^2 block by block over flat buffers; the forward also makes the gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, plan: dict, *params: torch.Tensor
    ) -> torch.Tensor:
        flat = [p.detach().reshape(-1) for p in params]
        # One gradient buffer from step to step (no allocation, no page faults): autograd adds it to the task
        # loss's gradient, or keeps it as .grad when the penalty is alone; a new one while any .grad holds it.
        grad = plan.get("grad")
        if grad is None or any(
            p.grad is not None and p.grad.untyped_storage().data_ptr() == grad.untyped_storage().data_ptr()
            for p in params
        ):
            grad = plan["grad"] = torch.empty(plan["numel"], dtype=flat[0].dtype, device=flat[0].device)
        sums = []
        for span, weight, diff, pieces in plan["blocks"]:
            for i, part, piece, center in pieces:
                torch.sub(flat[i][part], center, out=piece)  # theta - theta*
            torch.mul(diff, weight, out=grad[span])  # 2 coef scale F (theta - theta*)
            sums.append(torch.dot(grad[span], diff))
        ctx.save_for_backward(grad)
        ctx.plan, ctx.scale = plan, plan["scale"]
        return torch.stack(sums).sum() / (2.0 * plan["scale"])

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        plan = ctx.plan
        # In place: nothing else reads this buffer (a second backward through it raises torch's version error).
        if grad_out.device.type != "cpu":
            grad.mul_(grad_out / ctx.scale)  # reading grad_out on the host would wait for the device
        else:
            factor = float(grad_out)
            if factor != ctx.scale:
                grad.mul_(factor / ctx.scale)
                # The same factor twice in a row: the next forward folds it into the weights.
                if factor == plan["last_factor"] and factor != 0.0 and abs(factor) < float("inf"):
                    plan["next_scale"] = factor
            plan["last_factor"] = factor
        shapes = plan["shapes"]
        sizes = [s.numel() for s in shapes]
        return (None, *(g.view(s) for g, s in zip(grad.split(sizes), shapes, strict=True)))


def _quadratic_penalty(
    model: torch.nn.Module, importance: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], coef: float
) -> torch.Tensor:
    """coef * sum importance (theta - anchor)^2, one fused pass; exactly 0 while nothing is carried."""
    if not importance:
        return torch.zeros((), device=next(model.parameters()).device)
    params, plan = _penalty_plan(model, importance, anchor, coef)
    return _QuadraticPenalty.apply(plan, *params)


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
