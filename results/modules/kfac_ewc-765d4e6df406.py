"""Continual-learning regularizer generated from the preset kfac_ewc by space/generator.py.

importance = Kronecker-factored exact Fisher (K-FAC) per nn.Linear layer, diagonal elsewhere, raw, over 200
examples (first); across contexts one merged pair; penalty exact; reg_strength_scale 1.0.

Edit the design rather than this file. Regenerate it with:

    python -m search export --preset kfac_ewc --out custom_regularization.py

Hook contract: HARNESS.md sections 1-2. Imports only torch and the standard library.

Provenance: preset=kfac_ewc
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

# The design (the code reads the constants below; `python -m search export --design` takes it as JSON).
DESIGN = {
    "estimators": "kfac",
    "fisher_labels": "exact",
    "data_examples": 200,
    "data_subset": "first",
    "reference": "none",
    "kfac_accumulate": "merged",
    "kfac_rank": 0,
    "kfac_damping": 0.0,
    "reg_strength_scale": 1.0,
}

# Multiplies the benchmark's reg_strength (HARNESS.md section 1).
CONFIG_OVERRIDES = {"reg_strength_scale": 1.0}


# Examples of the finished context the factors are averaged over (the first ones, in order).
N_EXAMPLES = 200

# One Kronecker pair per layer for every context (the online approximation), not one per context.
MERGE = True

# Keeps the normalization of an all-zero tensor at zero instead of 0/0.
_TINY = 1e-30

# Examples per batched pass of the estimators: memory stays bounded however many are used.
_EXAMPLE_CHUNK = 256


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


def _softmax_units(out: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-log p_j of every returned unit j, weighted by p_j (held constant): the exact expectation over labels."""
    log_p = torch.log_softmax(out, dim=1)
    return -log_p, log_p.exp()


def _kronecker_factors(
    model: torch.nn.Module,
    params: dict[str, torch.nn.Parameter],
    xs: torch.Tensor,
    losses_of: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    targets: torch.Tensor,
) -> tuple[dict[str, dict[str, torch.Tensor]], set[str]]:
    """Per nn.Linear layer whose weight is regularized: A = mean_n a a^T and G = mean_n sum_k w[n, k] g g^T.

    a is the layer's input with a 1 appended when it has a bias; g the gradient of loss k of example n with
    respect to the layer's output; `losses_of(outputs, targets)` gives the losses and their weights, both
    [N, K]. Keyed by the weight's key; also returns the keys of the parameters covered (weights and biases).
    A layer called more than once per forward, or on inputs that are not [N, features], is left out (its
    parameters keep a diagonal importance).
    """
    key_of = {id(p): k for k, p in params.items()}
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and id(m.weight) in key_of]
    factors: dict[str, dict[str, torch.Tensor]] = {}
    covered: set[str] = set()
    seen: dict[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in linears}

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen[module].append((inputs[0].detach(), output))

    for start in range(0, xs.shape[0], _EXAMPLE_CHUNK):  # chunk by chunk, so that memory stays bounded
        x, t = xs[start : start + _EXAMPLE_CHUNK], targets[start : start + _EXAMPLE_CHUNK]
        for calls in seen.values():
            calls.clear()
        handles = [m.register_forward_hook(record) for m in linears]
        try:
            outputs = model(x)
        finally:
            for handle in handles:
                handle.remove()
        losses, weights = losses_of(outputs, t)
        once = {m: calls[0] for m, calls in seen.items() if len(calls) == 1 and calls[0][0].dim() == 2}
        if not once:
            break
        # All K loss directions in one batched backward pass: direction k seeds d losses[:, k].
        seeds = torch.eye(losses.shape[1], dtype=losses.dtype, device=losses.device)
        seeds = seeds[:, None, :].expand(-1, losses.shape[0], -1)
        grads = torch.autograd.grad(
            losses, [out for _, out in once.values()], grad_outputs=seeds, is_grads_batched=True,
            allow_unused=True,
        )  # fmt: skip
        for (module, (a, _)), g in zip(once.items(), grads, strict=True):
            if g is None:  # the layer does not reach the returned units
                continue
            if module.bias is not None and id(module.bias) in key_of:  # [W b]: the bias is a weight on a 1
                a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
            wg = g * weights.detach().T[:, :, None].sqrt()  # [K, N, out]: sum_k w g g^T = (sqrt(w) g)(...)^T
            part = {"A": a.T @ a, "G": torch.einsum("kno,knp->op", wg, wg)}
            covered |= {
                key_of[id(p)] for p in (module.weight, module.bias) if p is not None and id(p) in key_of
            }
            entry = factors.setdefault(key_of[id(module.weight)], {"A": 0.0, "G": 0.0})
            entry["A"] = entry["A"] + part["A"]
            entry["G"] = entry["G"] + part["G"]
    means = {k: {"A": f["A"] / xs.shape[0], "G": f["G"] / xs.shape[0]} for k, f in factors.items()}
    return means, covered


def _merge_pair(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One Kronecker pair close to A_o (x) G_o + A_n (x) G_n: (A_o + A_n / pi) (x) (G_o + pi G_n), with
    pi = sqrt(tr G_o tr A_n / (tr G_n tr A_o)) (the reference code's `additive_nearest_kf`)."""
    pi = (old["G"].trace() * new["A"].trace() / (new["G"].trace() * old["A"].trace()).clamp_min(_TINY)).sqrt()
    return {"A": old["A"] + new["A"] / pi, "G": old["G"] + new["G"] * pi}


def _kfac_carry(
    model: torch.nn.Module, factors: dict[str, dict[str, torch.Tensor]], merge: bool, keep_trace: bool
) -> None:
    """Add this context's factors to those kept on the model (`model._custom_kfac`).

    Per context (merge False) every context keeps its own pair, stacked: the penalty sums the Kronecker products
    exactly. Merged, one pair per layer holds every context (`_merge_pair`), whose trace grows faster than the
    sum of the contexts' traces; with `keep_trace` (calibrated designs) the merged pairs are rescaled to that sum.
    """
    kept = getattr(model, "_custom_kfac", None) or {}
    out = {}
    for key, f in factors.items():
        if key not in kept:
            out[key] = {"A": f["A"][None], "G": f["G"][None]}
        elif merge:
            pair = _merge_pair({"A": kept[key]["A"][0], "G": kept[key]["G"][0]}, f)
            out[key] = {"A": pair["A"][None], "G": pair["G"][None]}
        else:
            out[key] = {
                "A": torch.cat([kept[key]["A"], f["A"][None]]),
                "G": torch.cat([kept[key]["G"], f["G"][None]]),
            }
    if merge and keep_trace:
        added = torch.stack([f["A"].trace() * f["G"].trace() for f in factors.values()]).sum()
        model._custom_kfac_trace = getattr(model, "_custom_kfac_trace", 0.0) + added
        traces = torch.stack([f["A"][0].trace() * f["G"][0].trace() for f in out.values()]).sum()
        ratio = model._custom_kfac_trace / traces.clamp_min(_TINY)
        out = {k: {"A": f["A"], "G": f["G"] * ratio} for k, f in out.items()}
    model._custom_kfac = out


def _kfac_layers(
    model: torch.nn.Module, kept: dict[str, dict[str, torch.Tensor]]
) -> list[tuple[str, torch.Tensor, torch.Tensor | None, str | None]]:
    """(weight key, weight, bias or None, bias key or None) of every nn.Linear layer whose weight's key is kept."""
    key_of = {id(p): k for k, p in _regularized(model)}
    out = []
    for m in model.modules():
        key = key_of.get(id(m.weight)) if isinstance(m, torch.nn.Linear) else None
        if key is not None and key in kept:
            bias_key = key_of.get(id(m.bias)) if m.bias is not None else None
            out.append((key, m.weight, m.bias if bias_key is not None else None, bias_key))
    return out


def _delta(
    weight: torch.Tensor, bias: torch.Tensor | None, w0: torch.Tensor, b0: torch.Tensor | None
) -> torch.Tensor:
    """[W b] - anchor (the bias is a weight on an input fixed at 1)."""
    d = weight - w0
    return d if bias is None else torch.cat([d, (bias - b0)[:, None]], dim=1)


class _KroneckerExact(torch.autograd.Function):
    """sum_k tr(dW^T G_k dW A_k) and, from the same product, its gradient 2 sum_k G_k dW A_k."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, d: torch.Tensor, A: torch.Tensor, G: torch.Tensor
    ) -> torch.Tensor:
        m = (G @ d @ A).sum(0)  # [K, out, out] @ [out, in] @ [K, in, in], summed over contexts
        ctx.save_for_backward(m)
        return (d * m).sum()

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        (m,) = ctx.saved_tensors
        return 2.0 * grad_out * m, None, None


def _kfac_exact_penalty(model: torch.nn.Module, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum over layers of tr(dW^T G dW A), summed over the kept pairs; 0 while none is kept."""
    kept = getattr(model, "_custom_kfac", None) or {}
    terms = [
        _KroneckerExact.apply(_delta(w, b, anchor[k], anchor.get(bk)), kept[k]["A"], kept[k]["G"])
        for k, w, b, bk in _kfac_layers(model, kept)
    ]
    return torch.stack(terms).sum() if terms else torch.zeros((), device=next(model.parameters()).device)


def _diagonal_penalty(
    model: torch.nn.Module, importance: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]
) -> torch.Tensor:
    """sum importance (theta - anchor)^2 over the parameters that have a diagonal importance (outside nn.Linear)."""
    terms = [
        (importance[k] * (p - anchor[k]).square()).sum() for k, p in _regularized(model) if k in importance
    ]
    return torch.stack(terms).sum() if terms else torch.zeros((), device=next(model.parameters()).device)


def estimate_importance(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    prev_params: dict[str, torch.Tensor],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """importance = Kronecker-factored exact Fisher (K-FAC) per nn.Linear layer, diagonal elsewhere, raw..."""
    params = dict(_regularized(model))
    was_training = model.training
    model.eval()  # per-example gradients: examples independent (no dropout, BatchNorm statistics)
    try:
        xs, ys = _examples(dataset, range(min(N_EXAMPLES, len(dataset))), device)
        factors, covered = _kronecker_factors(model, params, xs, _softmax_units, ys)
        rest = {k: p for k, p in params.items() if k not in covered}  # outside nn.Linear: diagonal
        diagonal = _fisher_exact(model, rest, xs, ys) if rest else {}
    finally:
        model.train(was_training)
    _kfac_carry(model, factors, merge=MERGE, keep_trace=False)
    return diagonal  # the loop adds it to the carried importance: a plain sum


def compute_regularization_loss(
    model: torch.nn.Module,
    importance_dict: dict[str, torch.Tensor],
    prev_params_dict: dict[str, torch.Tensor],
) -> torch.Tensor:
    """R = 0.5 * (sum over layers tr(dW^T G dW A) (exact) + sum F (theta - anchor)^2)."""
    structured = _kfac_exact_penalty(model, prev_params_dict)
    return 0.5 * (structured + _diagonal_penalty(model, importance_dict, prev_params_dict))
