"""Continual-learning regularizer generated from the preset kfac_per_context_r4 by space/generator.py.

importance = Kronecker-factored exact Fisher (K-FAC) per nn.Linear layer, diagonal elsewhere, rescaled to the
exact Fisher's total, over 200 examples (first); across contexts one pair per context, summed; penalty in the
top-4 eigenbasis, diagonal outside it; reg_strength_scale 1.0.

Edit the design rather than this file. Regenerate it with:

    python -m search export --preset kfac_per_context_r4 --out custom_regularization.py

Hook contract: HARNESS.md sections 1-2. Imports only torch and the standard library.

Provenance: preset=kfac_per_context_r4
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

# The design this file was generated from (space.Design; `python -m search export --design` takes it as
# JSON). The constants below are what the code uses.
DESIGN = {
    "estimators": "kfac",
    "fisher_labels": "exact",
    "data_examples": 200,
    "data_subset": "first",
    "reference": "fisher",
    "kfac_accumulate": "per_context",
    "kfac_rank": 4,
    "kfac_damping": 0.0,
    "reg_strength_scale": 1.0,
}

# Multiplies the benchmark's reg_strength (HARNESS.md section 1).
CONFIG_OVERRIDES = {"reg_strength_scale": 1.0}


# Examples of the finished context the factors are averaged over (the first ones, in order).
N_EXAMPLES = 200

# Every context keeps its own Kronecker pair (the penalty sums them exactly), not one merged pair.
MERGE = False

# Eigenvectors of A and of G the penalty keeps per layer (its cost).
RANK = 4

# Constant factor of the penalty (the quadratic approximation's).
PENALTY_COEF = 0.5

# Keeps the normalization of an all-zero tensor at zero instead of 0/0.
_TINY = 1e-30

# Per-example gradients of parameters outside nn.Linear layers are held in chunks of at most this many
# floats (256 MiB in float32), so that memory stays bounded whatever the network.
_GENERIC_CHUNK_FLOATS = 67108864

# The data-based estimators take at most this many examples per batched pass, so that memory stays
# bounded whatever the number of examples (up to a whole context).
_EXAMPLE_CHUNK = 256


def _regularized(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """The regularized parameters (requires_grad, from `model.param_list`) with their '__' keys."""
    for named in model.param_list:
        for name, param in named():
            if param.requires_grad:
                yield name.replace(".", "__"), param


def _examples(
    dataset: torch.utils.data.Dataset, n: int, seed: int | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack `n` examples of `dataset` (0: all): the first n in order (seed None) or a seeded random subset."""
    size = len(dataset)
    n = size if n == 0 else min(n, size)  # 0: every example
    if seed is None:
        indices = list(range(n))
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
    if xs.shape[0] > _EXAMPLE_CHUNK:  # chunk by chunk; the sums add up
        chunks = zip(xs.split(_EXAMPLE_CHUNK), targets.split(_EXAMPLE_CHUNK), strict=True)
        parts = [_per_example_sums(model, params, x, losses_of, t, use_abs) for x, t in chunks]
        return {k: torch.stack([part[k] for part in parts]).sum(0) for k in params}
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


def _fisher_exact(
    model: torch.nn.Module, params: dict[str, torch.nn.Parameter], xs: torch.Tensor, ys: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher, exact expectation over the returned units: mean_n sum_j p_j (d(-log p_j)/dtheta)^2."""

    def every_unit(out: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_p = torch.log_softmax(out, dim=1)
        return -log_p, log_p.exp()  # the probabilities weigh each unit and are held constant

    sums = _per_example_sums(model, params, xs, every_unit, ys, use_abs=False)
    return {k: s / xs.shape[0] for k, s in sums.items()}


def _total(t: dict[str, torch.Tensor]) -> torch.Tensor:
    """Total magnitude of an importance dict: sum of |value| over every tensor."""
    return torch.stack([v.abs().sum() for v in t.values()]).sum()


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


def _kfac_total(
    factors: dict[str, dict[str, torch.Tensor]], diagonal: dict[str, torch.Tensor]
) -> torch.Tensor:
    """The trace of the quadratic form: sum over layers of tr(A) tr(G), plus the diagonal importance's total."""
    traces = [f["A"].trace() * f["G"].trace() for f in factors.values()]
    traces += [v.abs().sum() for v in diagonal.values()]
    return torch.stack(traces).sum()


def _merge_pair(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One Kronecker pair close to A_o (x) G_o + A_n (x) G_n: (A_o + A_n / pi) (x) (G_o + pi G_n), with
    pi = sqrt(tr G_o tr A_n / (tr G_n tr A_o)) (the reference code's `additive_nearest_kf`)."""
    pi = (old["G"].trace() * new["A"].trace() / (new["G"].trace() * old["A"].trace()).clamp_min(_TINY)).sqrt()
    return {"A": old["A"] + new["A"] / pi, "G": old["G"] + new["G"] * pi}


def _eigenbasis(A: torch.Tensor, G: torch.Tensor, rank: int) -> dict[str, torch.Tensor]:
    """The top `rank` eigenvectors of A and of G, the products of their eigenvalues, and the diagonal of
    A (x) G that they leave out (>= 0), so that the penalty is exact inside the eigenbasis and diagonal outside."""
    la, ua = torch.linalg.eigh(A.double())  # ascending; float64 for small eigenvalues
    lg, ug = torch.linalg.eigh(G.double())
    la, ua = la[-rank:].clamp_min(0.0), ua[:, -rank:]
    lg, ug = lg[-rank:].clamp_min(0.0), ug[:, -rank:]
    lam = lg[:, None] * la[None, :]
    full = G.double().diagonal()[:, None] * A.double().diagonal()[None, :]
    kept = ug.square() @ lam @ ua.square().T  # the diagonal of the part inside the eigenbasis
    dtype = A.dtype
    return {
        "UG": ug.to(dtype),
        "UA": ua.to(dtype),
        "lam": lam.to(dtype),
        "resid": (full - kept).clamp_min(0).to(dtype),
    }


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


def _lowrank_carry(model: torch.nn.Module, rank: int) -> None:
    """The eigenbasis form of the factors kept on the model (`model._custom_kfac_eig`), one per layer: every
    context's eigenvectors side by side, their eigenvalue products block-diagonal, the left-out diagonals summed."""
    eig = {}
    for key, f in model._custom_kfac.items():
        parts = [_eigenbasis(a, g, rank) for a, g in zip(f["A"], f["G"], strict=True)]
        eig[key] = {
            "UG": torch.cat([p["UG"] for p in parts], dim=1),
            "UA": torch.cat([p["UA"] for p in parts], dim=1),
            "lam": torch.block_diag(*[p["lam"] for p in parts]),
            "resid": torch.stack([p["resid"] for p in parts]).sum(0),
        }
    model._custom_kfac_eig = eig


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


class _KroneckerLowRank(torch.autograd.Function):
    """d^T M d with M = the kept eigenbasis (UG, UA, lam) plus the diagonal `resid` outside it, d = [W b] - anchor.

    The forward makes M d once: the value is <M d, d> and the gradient 2 M d. The weight and the bias are taken
    apart (no [W b] copy), and the eigenbasis costs 2 R out in multiply-adds per layer (R: the kept eigenvectors).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        w0: torch.Tensor,
        b0: torch.Tensor | None,
        ug: torch.Tensor,
        ua: torch.Tensor,
        lam: torch.Tensor,
        resid: torch.Tensor,
    ) -> torch.Tensor:
        n_in = weight.shape[1]
        dw = weight.detach() - w0
        c = (ug.T @ dw) @ ua[:n_in]  # [b] - anchor in the eigenbasis: [R_G, R_A]
        if bias is not None:
            db = bias.detach() - b0
            c += torch.outer(ug.T @ db, ua[n_in])
        back = ug @ (lam * c)  # [out, R_A]
        mw = (resid[:, :n_in] * dw).addmm_(back, ua[:n_in].T)  # M d for W: the diagonal part, then the basis
        value = torch.dot(mw.view(-1), dw.view(-1))
        mb = None
        if bias is not None:
            mb = resid[:, n_in] * db + back @ ua[n_in]
            value = value + torch.dot(mb, db)
        ctx.mw, ctx.mb = mw, mb
        return value

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        scale = 2.0 * grad_out
        gb = None if ctx.mb is None else ctx.mb * scale
        return ctx.mw * scale, gb, None, None, None, None, None, None


def _kfac_lowrank_penalty(model: torch.nn.Module, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """The same penalty in each layer's kept eigenbasis, diagonal outside it; 0 while none is kept."""
    eig = getattr(model, "_custom_kfac_eig", None) or {}
    terms = [
        _KroneckerLowRank.apply(
            w, b, anchor[k], anchor.get(bk), eig[k]["UG"], eig[k]["UA"], eig[k]["lam"], eig[k]["resid"]
        )
        for k, w, b, bk in _kfac_layers(model, eig)
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
    """importance = Kronecker-factored exact Fisher (K-FAC) per nn.Linear layer, diagonal elsewhere, res..."""
    params = dict(_regularized(model))
    was_training = model.training
    model.eval()  # per-example gradients: examples independent (no dropout, BatchNorm statistics)
    try:
        xs, ys = _examples(dataset, N_EXAMPLES, None, device)
        factors, covered = _kronecker_factors(model, params, xs, _softmax_units, ys)
        rest = {k: p for k, p in params.items() if k not in covered}  # outside nn.Linear: diagonal
        diagonal = _fisher_exact(model, rest, xs, ys) if rest else {}
        exact_fisher = _fisher_exact(model, params, xs, ys)
    finally:
        model.train(was_training)
    # The trace of the quadratic form, sum tr(A) tr(G) plus the diagonal's total, on the exact Fisher's.
    ratio = _total(exact_fisher) / _kfac_total(factors, diagonal).clamp_min(_TINY)
    factors = {k: {"A": f["A"], "G": f["G"] * ratio} for k, f in factors.items()}
    diagonal = {k: v * ratio for k, v in diagonal.items()}
    _kfac_carry(model, factors, merge=MERGE, keep_trace=False)
    _lowrank_carry(model, RANK)  # the penalty's eigenbasis, computed once per context
    return diagonal  # the loop adds it to the carried importance: a plain sum


def compute_regularization_loss(
    model: torch.nn.Module,
    importance_dict: dict[str, torch.Tensor],
    prev_params_dict: dict[str, torch.Tensor],
) -> torch.Tensor:
    """R = PENALTY_COEF * (sum over layers tr(dW^T G dW A) (in the kept eigenbasis, diagonal outside it) + sum F (theta - anchor)^2)."""
    structured = _kfac_lowrank_penalty(model, prev_params_dict)
    return PENALTY_COEF * (structured + _diagonal_penalty(model, importance_dict, prev_params_dict))
