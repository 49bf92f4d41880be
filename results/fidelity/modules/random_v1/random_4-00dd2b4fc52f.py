"""Continual-learning regularizer generated from a design file by space/generator.py.

importance = 0.7252542798196405 x sampled-label Fisher + 0.4238550485581797 x MAS + 0.6063932141279244 x SI +
0.660173537492685 x uniform (L2) (each rank-normalized per tensor), raised to 1.8189565427393601, capped at
quantile 0.9367561870047897, floored at 0.2179324626328134 x mean; across contexts summed; penalty 0.5 x
quadratic, reg_strength_scale 9686.437460083518.

Edit the design rather than this file. Regenerate it with:

    python -m search export --design design.json --out custom_regularization.py  # DESIGN below, as JSON

Hook contract: HARNESS.md sections 1-2. Imports only torch and the standard library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

# The design this file was generated from (space.Design; `python -m search export --design` takes it as
# JSON). The constants below are what the code uses.
DESIGN = {
    "fisher_weight": 0.7252542798196405,
    "fisher_labels": "sampled",
    "mas_weight": 0.4238550485581797,
    "si_weight": 0.6063932141279244,
    "si_clamp": True,
    "uniform_weight": 0.660173537492685,
    "data_examples": 52,
    "data_subset": "first",
    "data_seed": 135,
    "norm": "rank",
    "rescale": "none",
    "power": 1.8189565427393601,
    "clip_quantile": 0.9367561870047897,
    "floor": 0.2179324626328134,
    "accumulate": "sum",
    "decay_gamma": 0.5501134436561506,
    "penalty": "quadratic",
    "penalty_coef": 0.5,
    "reg_strength_scale": 9686.437460083518,
}

# Multiplies the benchmark's reg_strength (HARNESS.md section 1).
CONFIG_OVERRIDES = {"reg_strength_scale": 9686.437460083518}


# Examples of the finished context the importance is averaged over (the first ones, in order).
N_EXAMPLES = 52

# Seed of the sampled labels.
DATA_SEED = 135

# Clamp SI's Omega at 0 (W < 0 where steps went uphill); published SI does not.
CLAMP_SI = True

# Weight of the fisher estimator in the mixture.
FISHER_WEIGHT = 0.7252542798196405

# Weight of the mas estimator in the mixture.
MAS_WEIGHT = 0.4238550485581797

# Weight of the si estimator in the mixture.
SI_WEIGHT = 0.6063932141279244

# Weight of the uniform estimator in the mixture.
UNIFORM_WEIGHT = 0.660173537492685

# Exponent of the mixture (SI and MAS scale like the Fisher's root).
POWER = 1.8189565427393601

# Per-tensor quantile every importance is capped at.
CLIP_QUANTILE = 0.9367561870047897

# Lowest importance, as a fraction of the tensor's mean: no weight is left free.
FLOOR_FRACTION = 0.2179324626328134

# Constant factor of the penalty (0.5: EWC's quadratic (Laplace) approximation).
PENALTY_COEF = 0.5

# Per-example gradients of parameters outside nn.Linear layers are held in chunks of at most this many
# floats (256 MiB in float32), so that memory stays bounded whatever the network.
_GENERIC_CHUNK_FLOATS = 67108864

# On a CPU the penalty runs over blocks of at most this many floats (512 KiB in float32), so that
# theta - theta* of a block stays in the L2 cache between its write and its two reads.
_PENALTY_BLOCK_FLOATS = 131072


def _regularized(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """The regularized parameters (requires_grad, from `model.param_list`) with their '__' keys."""
    for named in model.param_list:
        for name, param in named():
            if param.requires_grad:
                yield name.replace(".", "__"), param


def _examples(
    dataset: torch.utils.data.Dataset, n: int, seed: int | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack `n` examples of `dataset`: the first n in order (seed None) or a seeded random subset."""
    size = len(dataset)
    if seed is None:
        indices = list(range(min(n, size)))
    else:
        rng = torch.Generator().manual_seed(seed)
        indices = torch.randperm(size, generator=rng)[:n].tolist()
    xs, ys = zip(*(dataset[i] for i in indices), strict=True)
    return torch.stack(xs).to(device), torch.tensor([int(y) for y in ys], dtype=torch.long, device=device)


def _per_example_sums(
    model: torch.nn.Module,
    params: dict[str, torch.nn.Parameter],
    xs: torch.Tensor,
    losses_of: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    targets: torch.Tensor,
    use_abs: bool,
) -> dict[str, torch.Tensor]:
    """sum over examples n and directions k of w[n, k] * phi(d losses[n, k] / d theta), phi = x^2 or |x|.

    `losses_of(outputs, targets)` gives each example's losses along K directions and their weights
    (constants), both [N, K]. The model must treat examples independently (eval mode). A per-example gradient
    of an nn.Linear weight is the outer product delta a^T, and phi(delta a^T) = phi(delta) phi(a)^T, so its
    weighted sum is one matrix product: exact, and no per-example gradient is ever stored. Every other
    parameter gets its per-example gradients from torch.func (vmap over examples, chunks bound memory).
    """
    phi = torch.abs if use_abs else torch.square
    key_of = {id(p): k for k, p in params.items()}
    linears: dict[torch.nn.Module, tuple[str, str | None]] = {
        m: (key_of[id(m.weight)], key_of.get(id(m.bias)) if m.bias is not None else None)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and id(m.weight) in key_of
    }
    seen: dict[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in linears}

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen[module].append((inputs[0].detach(), output))

    handles = [m.register_forward_hook(record) for m in linears]
    try:
        outputs = model(xs)
    finally:
        for handle in handles:
            handle.remove()
    losses, weights = losses_of(outputs, targets)
    weights = weights.detach()
    # The outer-product identity holds for a layer called once per forward on [N, features] inputs.
    fast = {m: calls[0] for m, calls in seen.items() if len(calls) == 1 and calls[0][0].dim() == 2}
    sums = {k: torch.zeros_like(p) for k, p in params.items()}
    if fast:
        layer_outputs = [out for _, out in fast.values()]
        # All K directions in one batched backward pass: direction k seeds d losses[:, k].
        seeds = torch.eye(losses.shape[1], dtype=losses.dtype, device=losses.device)
        seeds = seeds[:, None, :].expand(-1, losses.shape[0], -1)
        grads = torch.autograd.grad(
            losses, layer_outputs, grad_outputs=seeds, is_grads_batched=True, allow_unused=True
        )
        for (module, (inputs, _)), grad in zip(fast.items(), grads, strict=True):
            if grad is None:  # this layer does not reach the returned units
                continue
            delta = torch.einsum("nk,kno->no", weights, phi(grad))  # sum_k w[n, k] phi(delta[n, k])
            weight_key, bias_key = linears[module]
            sums[weight_key] += delta.T @ phi(inputs)
            if bias_key is not None:
                sums[bias_key] += delta.sum(0)
    covered = {key for m in fast for key in linears[m] if key is not None}
    rest = {k: p.detach() for k, p in params.items() if k not in covered}
    if rest:
        frozen = {name: p.detach() for name, p in model.named_parameters()}
        names = {key_of[id(p)]: name for name, p in model.named_parameters() if id(p) in key_of}

        def one(
            rest_params: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor
        ) -> dict[str, torch.Tensor]:
            def directions(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
                full = {**frozen, **{names[k]: v for k, v in p.items()}}
                out = torch.func.functional_call(model, full, (x.unsqueeze(0),))
                loss, w = losses_of(out, t.unsqueeze(0))
                return loss[0], w[0].detach()

            jac, w = torch.func.jacrev(directions, has_aux=True)(rest_params)
            return {k: torch.tensordot(w, phi(g), dims=1) for k, g in jac.items()}

        per_example = losses.shape[1] * sum(p.numel() for p in rest.values())
        chunk = max(1, _GENERIC_CHUNK_FLOATS // per_example)
        for start in range(0, xs.shape[0], chunk):
            part = torch.func.vmap(one, in_dims=(None, 0, 0))(
                rest, xs[start : start + chunk], targets[start : start + chunk]
            )
            for k, v in part.items():
                sums[k] += v.sum(0)
    return sums


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
        probs = torch.softmax(model(xs), dim=1).cpu()
    labels = torch.multinomial(probs, 1, generator=rng)[:, 0].to(xs.device)
    sums = _per_example_sums(model, params, xs, _label_nll, labels, use_abs=False)
    return {k: s / xs.shape[0] for k, s in sums.items()}


def _output_norm(out: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared L2 norm of the returned outputs per example, weight 1."""
    sq = out.square().sum(1, keepdim=True)
    return sq, torch.ones_like(sq)


def _mas(
    model: torch.nn.Module, params: dict[str, torch.nn.Parameter], xs: torch.Tensor, ys: torch.Tensor
) -> dict[str, torch.Tensor]:
    """MAS (Aljundi et al. 2018): mean over examples of |d ||f(x)||^2 / d theta|."""
    sums = _per_example_sums(model, params, xs, _output_norm, ys, use_abs=True)
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


def _uniform(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Importance 1 everywhere: the penalty becomes plain L2 to the anchor."""
    return {k: torch.ones_like(p, requires_grad=False) for k, p in params.items()}


def _norm_rank(t: torch.Tensor) -> torch.Tensor:
    """Replace each value by its mid-rank quantile in (0, 1]; ties share one value."""
    flat = t.flatten()
    ordered = flat.sort().values
    below = torch.searchsorted(ordered, flat, right=False)
    upto = torch.searchsorted(ordered, flat, right=True)
    return ((below + upto).to(t.dtype) / (2 * flat.numel())).view_as(t)


def _power(t: torch.Tensor, exponent: float) -> torch.Tensor:
    """|t|^exponent with t's sign (SI and MAS scale like the square root of the Fisher)."""
    return t.sign() * t.abs().pow(exponent)


def _clip_quantile(t: torch.Tensor, q: float) -> torch.Tensor:
    """Cap every value at the tensor's q-quantile, so that a few huge entries cannot freeze their weights."""
    flat = t.flatten()
    k = max(1, min(flat.numel(), int(q * flat.numel() + 0.5)))
    return t.clamp_max(flat.kthvalue(k).values)


def _floor(t: torch.Tensor, fraction: float) -> torch.Tensor:
    """Raise every value to at least `fraction` of the tensor's mean magnitude: no weight is left free."""
    return t.clamp_min(fraction * t.abs().mean())


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
    """importance = 0.7252542798196405 x sampled-label Fisher + 0.4238550485581797 x MAS + 0.60639321412..."""
    params = dict(_regularized(model))
    was_training = model.training
    model.eval()  # per-example gradients: examples independent (no dropout, BatchNorm statistics)
    try:
        xs, ys = _examples(dataset, N_EXAMPLES, None, device)
        fisher = _fisher_sampled(model, params, xs, ys, torch.Generator().manual_seed(DATA_SEED))
        mas = _mas(model, params, xs, ys)
    finally:
        model.train(was_training)
    si = _si(model, params, prev_params, clamp=CLAMP_SI)
    uniform = _uniform(params)
    new = {}
    for k in params:
        mixed = (
            FISHER_WEIGHT * _norm_rank(fisher[k])
            + MAS_WEIGHT * _norm_rank(mas[k])
            + SI_WEIGHT * _norm_rank(si[k])
            + UNIFORM_WEIGHT * _norm_rank(uniform[k])
        )
        mixed = _power(mixed, POWER)
        mixed = _clip_quantile(mixed, CLIP_QUANTILE)
        mixed = _floor(mixed, FLOOR_FRACTION)
        new[k] = mixed
    return new  # the loop adds it to the carried importance: a plain sum


def compute_regularization_loss(
    model: torch.nn.Module,
    importance_dict: dict[str, torch.Tensor],
    prev_params_dict: dict[str, torch.Tensor],
) -> torch.Tensor:
    """R = PENALTY_COEF * sum importance (theta - anchor)^2; 0 while nothing is carried."""
    return _quadratic_penalty(model, importance_dict, prev_params_dict, PENALTY_COEF)
