"""Continual-learning regularizer generated from study golden, trial 3 by space/generator.py.

importance = 0.6 x sampled-label Fisher + 0.4 x SI (each mean-normalized per tensor), raised to 0.5, capped at
quantile 0.99 per tensor, rescaled to the first context's exact-Fisher total (every context alike), over 1000
examples (random); across contexts max; reg_strength_scale 0.3.

Edit the design rather than this file. Regenerate it with:

    python -m search export --study golden --trial 3 --out custom_regularization.py

Hook contract: HARNESS.md sections 1-2. Imports only torch and the standard library.

Provenance: study=golden, trial=3
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

# The design (the code reads the constants below; `python -m search export --design` takes it as JSON).
DESIGN = {
    "estimators": "fisher+si",
    "fisher_labels": "sampled",
    "si_clamp": True,
    "mix": 0.6,
    "data_examples": 1000,
    "data_subset": "random",
    "norm": "mean",
    "power": 0.5,
    "clip_quantile": 0.99,
    "reference": "fisher_first",
    "accumulate": "max",
    "reg_strength_scale": 0.3,
}

# Multiplies the benchmark's reg_strength (HARNESS.md section 1).
CONFIG_OVERRIDES = {"reg_strength_scale": 0.3}


# Examples of the finished context the importance is averaged over (a seeded random subset).
N_EXAMPLES = 1000

# Seed of the random subset of examples.
SUBSET_SEED = 0

# Seed of the labels drawn from the model's softmax.
LABEL_SEED = 0

# Clamp SI's Omega at 0 (W < 0 where steps went uphill); published SI does not.
CLAMP_SI = True

# Share of fisher in the mixture; si has the rest.
MIX = 0.6

# Exponent of the importance (SI and MAS scale like the Fisher's root).
POWER = 0.5

# Per-tensor quantile every importance is capped at: a few huge entries cannot freeze weights.
CLIP_QUANTILE = 0.99

# Keeps the normalization of an all-zero tensor at zero instead of 0/0.
_TINY = 1e-30

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


def _fisher_exact(
    model: torch.nn.Module, params: dict[str, torch.nn.Parameter], xs: torch.Tensor, ys: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher, exact expectation over the returned units: mean_n sum_j p_j (d(-log p_j)/dtheta)^2."""

    def every_unit(out: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_p = torch.log_softmax(out, dim=1)
        return -log_p, log_p.exp()  # the probabilities weigh each unit and are held constant

    sums = _per_example_sums(model, params, xs, every_unit, ys, torch.square)
    return {k: s / xs.shape[0] for k, s in sums.items()}


def _label_nll(out: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-log p of one given label per example, weight 1."""
    nll = -torch.log_softmax(out, dim=1).gather(1, labels[:, None])
    return nll, torch.ones_like(nll)


def _fisher_sampled(
    model: torch.nn.Module,
    params: dict[str, torch.nn.Parameter],
    xs: torch.Tensor,
    ys: torch.Tensor,
    rng: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher with one label per example drawn from the model's softmax (a Monte Carlo estimate)."""
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(x), dim=1).cpu() for x in xs.split(_EXAMPLE_CHUNK)])
    labels = torch.multinomial(probs, 1, generator=rng)[:, 0].to(xs.device)
    sums = _per_example_sums(model, params, xs, _label_nll, labels, torch.square)
    return {k: s / xs.shape[0] for k, s in sums.items()}


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


def _norm_mean(t: torch.Tensor) -> torch.Tensor:
    """Divide by the mean magnitude: the tensor then averages 1."""
    return t / t.abs().mean().clamp_min(_TINY)


def _clip_quantile(t: torch.Tensor, q: float) -> torch.Tensor:
    """Cap every value at the tensor's q-quantile, so that a few huge entries cannot freeze their weights."""
    flat = t.flatten()
    k = max(1, min(flat.numel(), int(q * flat.numel() + 0.5)))
    return t.clamp_max(flat.kthvalue(k).values)


def _total(t: dict[str, torch.Tensor]) -> torch.Tensor:
    """Total magnitude of an importance dict: sum of |value| over every tensor."""
    return torch.stack([v.abs().sum() for v in t.values()]).sum()


def _to_first_reference(
    model: torch.nn.Module, t: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rescale t to the first context's exact-Fisher total, kept on the model: every context gets the same total,
    so a context the network learnt well (small Fisher) is not protected less."""
    if getattr(model, "_custom_reference_total", None) is None:
        model._custom_reference_total = _total(fisher)
    ratio = model._custom_reference_total / _total(t).clamp_min(_TINY)
    return {k: v * ratio for k, v in t.items()}


def _accumulate_max(
    carried: dict[str, torch.Tensor], new: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Element-wise maximum: return max(carried, new) - carried; the loop's addition then gives the max."""
    return {k: torch.maximum(carried[k], v) - carried[k] if k in carried else v for k, v in new.items()}


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
    """importance = 0.6 x sampled-label Fisher + 0.4 x SI (each mean-normalized per tensor), raised to 0..."""
    params = dict(_regularized(model))
    was_training = model.training
    model.eval()  # per-example gradients: examples independent (no dropout, BatchNorm statistics)
    try:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(SUBSET_SEED))
        xs, ys = _examples(dataset, order[:N_EXAMPLES].tolist(), device)
        fisher = _fisher_sampled(model, params, xs, ys, torch.Generator().manual_seed(LABEL_SEED))
        exact_fisher = _fisher_exact(model, params, xs, ys)
    finally:
        model.train(was_training)
    si = _si(model, params, prev_params, clamp=CLAMP_SI)
    new = {}
    for k in params:
        mixed = MIX * _norm_mean(fisher[k]) + (1.0 - MIX) * _norm_mean(si[k])
        mixed = mixed.pow(POWER)
        mixed = _clip_quantile(mixed, CLIP_QUANTILE)
        new[k] = mixed
    new = _to_first_reference(model, new, exact_fisher)
    return _accumulate_max(model._custom_importance, new)


def compute_regularization_loss(
    model: torch.nn.Module,
    importance_dict: dict[str, torch.Tensor],
    prev_params_dict: dict[str, torch.Tensor],
) -> torch.Tensor:
    """R = 0.5 * sum importance (theta - anchor)^2; 0 while nothing is carried."""
    return 0.5 * _quadratic_penalty(model, importance_dict, prev_params_dict)
