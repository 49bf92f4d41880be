"""Continual-learning regularizer generated from study mas, trial 31 (chosen at fidelity full-2streams) by space/generator.py.

importance = MAS, over 200 examples (first); across contexts summed; reg_strength_scale 8e-05.

Edit the design rather than this file. Regenerate it with:

    python -m search export --study mas --trial 31 --out custom_regularization.py

Hook contract: HARNESS.md sections 1-2. Imports only torch and the standard library.

Provenance: fidelity=full-2streams, study=mas, trial=31
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

# The design (the code reads the constants below; `python -m search export --design` takes it as JSON).
DESIGN = {
    "estimators": "mas",
    "data_examples": 200,
    "data_subset": "first",
    "reference": "none",
    "accumulate": "sum",
    "reg_strength_scale": 8e-05,
}

# Multiplies the benchmark's reg_strength (HARNESS.md section 1).
CONFIG_OVERRIDES = {"reg_strength_scale": 8e-05}


# Examples of the finished context the importance is averaged over (the first ones, in order).
N_EXAMPLES = 200

# Examples per batched pass of the estimators: memory stays bounded however many are used.
_EXAMPLE_CHUNK = 256

# Floats per block of the penalty on a CPU (512 KiB in float32): theta - c stays in the L2 cache.
_PENALTY_BLOCK_FLOATS = 131072


def _regularized(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """The regularized parameters (requires_grad, from `model.param_list`) with their '__' keys."""
    for named in model.param_list:
        for name, param in named():
            if param.requires_grad:
                yield name.replace(".", "__"), param


def _examples(
    dataset: torch.utils.data.Dataset, indices: list[int] | range, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples of `dataset` at `indices`, stacked: inputs, and labels as int64, on `device`."""
    xs, ys = zip(*(dataset[i] for i in indices), strict=True)
    return torch.stack(xs).to(device), torch.tensor([int(y) for y in ys], dtype=torch.long, device=device)


def _per_example_sums(
    model: torch.nn.Module,
    params: dict[str, torch.nn.Parameter],
    xs: torch.Tensor,
    losses_of: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    targets: torch.Tensor,
    phi: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """sum over examples n and directions k of w[n, k] phi(d losses[n, k] / d theta), phi = square or abs.

    `losses_of(outputs, targets)` gives each example's losses along K directions and their (constant) weights,
    both [N, K]; examples must be independent (eval mode). An nn.Linear weight's per-example gradient is delta a^T
    and phi(delta a^T) = phi(delta) phi(a)^T, so its sum is one matrix product; other parameters go one by one.
    """
    key_of = {id(p): k for k, p in params.items()}
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and id(m.weight) in key_of]
    sums = {k: torch.zeros_like(p) for k, p in params.items()}
    seen: dict[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # each layer's inputs, outputs
    for x, t in zip(xs.split(_EXAMPLE_CHUNK), targets.split(_EXAMPLE_CHUNK), strict=True):
        seen.clear()
        hooks = [
            m.register_forward_hook(lambda m, i, o: seen.setdefault(m, []).append((i[0].detach(), o)))
            for m in linears
        ]
        try:
            losses, weights = losses_of(model(x), t)
        finally:
            for hook in hooks:
                hook.remove()
        # The identity holds for a layer called once per forward on [N, features] inputs.
        once = {m: calls[0] for m, calls in seen.items() if len(calls) == 1 and calls[0][0].dim() == 2}
        seeds = torch.eye(losses.shape[1], dtype=losses.dtype, device=losses.device)  # direction k seeds k
        outs = [out for _, out in once.values()]
        grads = torch.autograd.grad(
            losses, outs, seeds[:, None, :].expand(-1, len(x), -1), is_grads_batched=True, allow_unused=True
        ) if outs else []  # fmt: skip
        for (m, (a, _)), g in zip(once.items(), grads, strict=True):
            if g is not None:  # None: the layer does not reach the returned units
                delta = torch.einsum("nk,kno->no", weights.detach(), phi(g))  # sum_k w[n, k] phi(delta[n, k])
                sums[key_of[id(m.weight)]] += delta.T @ phi(a)
                if id(m.bias) in key_of:
                    sums[key_of[id(m.bias)]] += delta.sum(0)
        rest = [k for k, p in params.items() if not any(p is m.weight or p is m.bias for m in once)]
        for n in range(len(x)) if rest else ():
            losses, weights = losses_of(model(x[n : n + 1]), t[n : n + 1])
            grads = torch.autograd.grad(
                losses[0], [params[k] for k in rest], seeds, is_grads_batched=True, allow_unused=True
            )
            for k, g in zip(rest, grads, strict=True):
                if g is not None:
                    sums[k] += torch.tensordot(weights[0].detach(), phi(g), dims=1)
    return sums


def _mas(
    model: torch.nn.Module, params: dict[str, torch.nn.Parameter], xs: torch.Tensor, ys: torch.Tensor
) -> dict[str, torch.Tensor]:
    """MAS (Aljundi et al. 2018): mean over examples of |d ||f(x)||^2 / d theta|."""

    def output_norm(out: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sq = out.square().sum(1, keepdim=True)
        return sq, torch.ones_like(sq)  # one direction per example, weight 1

    sums = _per_example_sums(model, params, xs, output_norm, ys, torch.abs)
    return {k: s / xs.shape[0] for k, s in sums.items()}


class _QuadraticPenalty(torch.autograd.Function):
    """sum w (theta - c)^2 over (theta, w, c) triples. The forward also makes w (theta - c), on a CPU in blocks that
    keep theta - c in the L2 cache; the backward scales it in place by 2 x the loop's factor and hands it over (for
    autograd to keep as .grad or to add into the task loss's gradient): nothing outlives the graph."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, *tensors: torch.Tensor
    ) -> torch.Tensor:
        n = len(tensors) // 3
        ctx.grads, sums = [], []
        for p, w, c in zip(tensors[:n], tensors[n : 2 * n], tensors[2 * n :], strict=True):
            theta, weight, center = p.detach().reshape(-1), w.reshape(-1), c.reshape(-1)
            grad = torch.empty(p.shape, dtype=p.dtype, device=p.device)
            size = min(theta.numel(), _PENALTY_BLOCK_FLOATS) if p.device.type == "cpu" else theta.numel()
            scratch = torch.empty(size, dtype=p.dtype, device=p.device)
            for lo in range(0, theta.numel(), size):
                hi = min(lo + size, theta.numel())
                diff = torch.sub(theta[lo:hi], center[lo:hi], out=scratch[: hi - lo])
                sums.append(torch.dot(torch.mul(diff, weight[lo:hi], out=grad.view(-1)[lo:hi]), diff))
            ctx.grads.append(grad)
        ctx.save_for_backward(*tensors)
        return torch.stack(sums).sum()

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        grads, ctx.grads = ctx.grads, None
        if grads is None:  # a second backward pass through the same graph (retain_graph): made again
            t = ctx.saved_tensors
            n = len(t) // 3
            grads = [w * (p - c) for p, w, c in zip(t[:n], t[n : 2 * n], t[2 * n :], strict=True)]
        return (*(g.mul_(2.0 * grad_out) for g in grads), *([None] * (2 * len(grads))))


def _quadratic_penalty(
    model: torch.nn.Module, importance: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]
) -> torch.Tensor:
    """sum importance (theta - anchor)^2 over the parameters that have importance; 0 while none has."""
    pairs = [(k, p) for k, p in _regularized(model) if k in importance]
    if not pairs:
        return torch.zeros((), device=next(model.parameters()).device)
    keys = [k for k, _ in pairs]
    return _QuadraticPenalty.apply(
        *(p for _, p in pairs), *(importance[k] for k in keys), *(anchor[k] for k in keys)
    )


def estimate_importance(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    prev_params: dict[str, torch.Tensor],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """importance = MAS, over 200 examples (first); across contexts summed; reg_strength_scale 8e-05."""
    params = dict(_regularized(model))
    was_training = model.training
    model.eval()  # per-example gradients: examples independent (no dropout, BatchNorm statistics)
    try:
        xs, ys = _examples(dataset, range(min(N_EXAMPLES, len(dataset))), device)
        mas = _mas(model, params, xs, ys)
    finally:
        model.train(was_training)
    return mas  # the loop adds it to the carried importance: a plain sum


def compute_regularization_loss(
    model: torch.nn.Module,
    importance_dict: dict[str, torch.Tensor],
    prev_params_dict: dict[str, torch.Tensor],
) -> torch.Tensor:
    """R = 0.5 * sum importance (theta - anchor)^2; 0 while nothing is carried."""
    return 0.5 * _quadratic_penalty(model, importance_dict, prev_params_dict)
