# mypy: disable-error-code="union-attr, index, operator, assignment, arg-type, attr-defined, dict-item, return-value"
"""Kronecker-factored curvature (K-FAC), the structured family of the space: its building blocks.

For an nn.Linear layer with input a (a 1 appended for the bias) and output gradient g, the Fisher block of its
weights [W b] is approximated by A (x) G, A = E[a a^T], G = E[g g^T] (Martens & Grosse 2015; as a continual
learning penalty: Ritter, Botev & Barber 2018, and `--kfac-ewc` of GMvandeVen/continual-learning). The penalty
of a layer is 0.5 tr(dW^T G dW A) = 0.5 vec(dW)^T (A (x) G) vec(dW), dW = [W b] - anchor (vec stacks columns).

Like `space.components`, these functions are copied verbatim into generated modules, so each uses only torch,
the standard library and the functions the registry lists as its requirements. The factors live on the model
(`model._custom_kfac`, one entry per layer, keyed by its weight's key): tensors only, so that a checkpoint
holds them and a resumed run continues bit for bit. Parameters outside nn.Linear layers keep a diagonal
Fisher, returned to the loop as importance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from space.components import _EXAMPLE_CHUNK, _TINY, _regularized


def _softmax_units(out: torch.Tensor, _: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-log p_j of every returned unit j, weighted by p_j (held constant): the exact expectation over labels."""
    log_p = torch.log_softmax(out, dim=1)
    return -log_p, log_p.exp()


def _sampled_labels(model: torch.nn.Module, xs: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """One label per example drawn from the model's softmax (a Monte Carlo estimate of the expectation)."""
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(x), dim=1).cpu() for x in xs.split(_EXAMPLE_CHUNK)])
    return torch.multinomial(probs, 1, generator=rng)[:, 0].to(xs.device)


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


def _damp(f: torch.Tensor, damping: float) -> torch.Tensor:
    """f + damping * mean(diag f) * I: damping relative to the factor's own scale."""
    return f + damping * f.diagonal().mean() * torch.eye(f.shape[0], dtype=f.dtype, device=f.device)


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


def _kfac_exact_penalty(model: torch.nn.Module, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum over layers of tr(dW^T G dW A), summed over the kept pairs; 0 while none is kept."""
    kept = getattr(model, "_custom_kfac", None) or {}
    terms = [
        _KroneckerExact.apply(_delta(w, b, anchor[k], anchor.get(bk)), kept[k]["A"], kept[k]["G"])
        for k, w, b, bk in _kfac_layers(model, kept)
    ]
    return torch.stack(terms).sum() if terms else torch.zeros((), device=next(model.parameters()).device)


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
