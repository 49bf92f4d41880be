"""The structured family (space/kfac.py): Kronecker factors, penalties and the generated presets, against formulas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_generator import TinyNet, data, generated, load

import space
from space import kfac
from space.components import _fisher_exact, _total

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _one_layer(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    layer = torch.nn.Linear(3, 4).double()
    layer.param_list = [layer.named_parameters]
    return layer


def _vec(d: torch.Tensor) -> torch.Tensor:
    """vec(dW), columns stacked (the convention under which tr(dW^T G dW A) = vec^T (A kron G) vec)."""
    return d.T.reshape(-1)


def test_factors_of_one_example_are_the_exact_fisher_of_a_linear_layer() -> None:
    layer = _one_layer()
    params = dict(kfac._regularized(layer))
    x = torch.rand(1, 3, dtype=torch.double)
    factors, covered = kfac._kronecker_factors(layer, params, x, kfac._softmax_units, torch.zeros(1).long())
    assert covered == {"weight", "bias"}
    kron = torch.kron(factors["weight"]["A"], factors["weight"]["G"])
    # The exact Fisher over [W b]: sum_j p_j vec(grad_j) vec(grad_j)^T, from autograd one label at a time.
    out = layer(x)
    probs = torch.softmax(out, 1)[0].detach()
    fisher = torch.zeros(16, 16, dtype=torch.double)
    for j in range(4):
        gw, gb = torch.autograd.grad(-torch.log_softmax(layer(x), 1)[0, j], [layer.weight, layer.bias])
        v = _vec(torch.cat([gw, gb[:, None]], 1))
        fisher += probs[j] * torch.outer(v, v)
    torch.testing.assert_close(kron, fisher)


def test_the_exact_penalty_is_the_kronecker_quadratic_form() -> None:
    g = torch.Generator().manual_seed(3)
    a_half, g_half = torch.randn(5, 5, generator=g), torch.randn(4, 4, generator=g)
    A, G = a_half @ a_half.T, g_half @ g_half.T
    d = torch.randn(4, 5, generator=g, requires_grad=True)
    value = kfac._KroneckerExact.apply(d, A[None], G[None])
    expected = _vec(d) @ torch.kron(A, G) @ _vec(d)
    torch.testing.assert_close(value, expected)
    (grad,) = torch.autograd.grad(value, d)
    (expected_grad,) = torch.autograd.grad(_vec(d) @ torch.kron(A, G) @ _vec(d), d)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("contexts", [1, 3])
def test_the_low_rank_penalty_at_full_rank_is_the_exact_one(contexts: int) -> None:
    g = torch.Generator().manual_seed(contexts)
    As = torch.stack([(m := torch.randn(5, 5, generator=g)) @ m.T for _ in range(contexts)]).double()
    Gs = torch.stack([(m := torch.randn(4, 4, generator=g)) @ m.T for _ in range(contexts)]).double()
    model = torch.nn.Module()
    model._custom_kfac = {"w": {"A": As, "G": Gs}}
    kfac._lowrank_carry(model, rank=5)
    e = model._custom_kfac_eig["w"]
    assert e["resid"].abs().max() < 1e-10  # nothing outside the eigenbasis at full rank
    d = torch.randn(4, 5, generator=g, dtype=torch.double, requires_grad=True)
    exact = kfac._KroneckerExact.apply(d, As, Gs)
    low = kfac._KroneckerLowRank.apply(
        d, None, torch.zeros_like(d), None, e["UG"], e["UA"], e["lam"], e["resid"]
    )
    # To 1e-6 relative: the sum of eigenbasis products rounds at about 1.5e-7 relative in float64 on some CPUs
    # (the LAPACK path decides), which the default 1e-7 for float64 does not allow.
    torch.testing.assert_close(low, exact, rtol=1e-6, atol=1e-9)
    grad_low, grad_exact = torch.autograd.grad(low, d)[0], torch.autograd.grad(exact, d)[0]
    torch.testing.assert_close(grad_low, grad_exact, rtol=1e-6, atol=1e-9)


def test_a_truncated_eigenbasis_keeps_the_diagonal_and_bounds_the_penalty() -> None:
    g = torch.Generator().manual_seed(5)
    A = (m := torch.randn(6, 6, generator=g, dtype=torch.double)) @ m.T
    G = (m := torch.randn(5, 5, generator=g, dtype=torch.double)) @ m.T
    e = kfac._eigenbasis(A, G, rank=2)
    # The kept part's diagonal plus the remainder is the diagonal of A kron G, entry for entry.
    kept = e["UG"].square() @ e["lam"] @ e["UA"].square().T
    torch.testing.assert_close(kept + e["resid"], G.diagonal()[:, None] * A.diagonal()[None, :])
    assert (e["resid"] >= 0).all()


def test_generated_kfac_ewc_equals_the_hand_written_reference(tmp_path: Path) -> None:
    """Values and gradients of the preset and of tests/hooks/kfac_ewc_reference.py, over three merged contexts."""
    hooks = generated(tmp_path, space.PRESETS["kfac_ewc"], "kfac_ewc")
    ref = load(ROOT / "tests" / "hooks" / "kfac_ewc_reference.py", "kfac_ewc_reference")
    ours, theirs = TinyNet(seed=1), TinyNet(seed=1)
    for k in range(3):
        ds = data(n=30, seed=10 + k)
        assert hooks.estimate_importance(ours, ds, ours._custom_prev_params, CPU) == {}
        ref.estimate_importance(theirs, ds, theirs._custom_prev_params, CPU)
        with torch.no_grad():  # move the weights between contexts, as training would
            for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
                p.add_(0.1 * torch.sin(torch.arange(p.numel(), dtype=p.dtype).view_as(p) + k))
                q.copy_(p)
        got = hooks.compute_regularization_loss(ours, {}, ours._custom_prev_params)
        want = ref.compute_regularization_loss(theirs, {}, theirs._custom_prev_params)
        assert got.item() > 0
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-12)
        for p, q in zip(
            torch.autograd.grad(got, list(ours.parameters())),
            torch.autograd.grad(want, list(theirs.parameters())),
            strict=True,
        ):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("accumulate", ["per_context", "merged"])
def test_a_calibrated_design_carries_the_exact_fishers_total(tmp_path: Path, accumulate: str) -> None:
    """reference 'fisher': the trace of the carried quadratic form is the sum of the contexts' exact-Fisher totals,
    as summed diagonal EWC carries, so that scale 1 is as strong as published EWC on the same examples."""
    design = space.Design(estimators="kfac", kfac_accumulate=accumulate, kfac_damping=0.01)
    hooks = generated(tmp_path, design, f"cal_{accumulate}")
    model = TinyNet(seed=2)
    totals = []
    for k in range(3):
        ds = data(n=30, seed=20 + k)
        hooks.estimate_importance(model, ds, model._custom_prev_params, CPU)
        xs = torch.stack([x for x, _ in ds[:200]])
        totals.append(
            _total(_fisher_exact(model, dict(model.named_parameters()), xs, torch.zeros(30).long()))
        )
        kept = model._custom_kfac
        trace = sum(
            (f["A"][i].trace() * f["G"][i].trace()) for f in kept.values() for i in range(len(f["A"]))
        )
        torch.testing.assert_close(trace, sum(totals))
        assert all(len(f["A"]) == (k + 1 if accumulate == "per_context" else 1) for f in kept.values())


def test_every_label_variant_and_rank_generates_a_working_module(tmp_path: Path) -> None:
    model = TinyNet(seed=3)
    for i, (labels, rank) in enumerate([("exact", 4), ("sampled", 8), ("empirical", 0)]):
        design = space.Design(
            estimators="kfac", fisher_labels=labels, kfac_rank=rank, kfac_accumulate="per_context"
        )
        hooks = generated(tmp_path, design, f"variant_{i}")
        m = TinyNet(seed=3)
        m.load_state_dict(model.state_dict())
        assert (
            hooks.compute_regularization_loss(m, {}, m._custom_prev_params).item() == 0.0
        )  # nothing kept yet
        hooks.estimate_importance(m, data(), m._custom_prev_params, CPU)
        value = hooks.compute_regularization_loss(m, {}, m._custom_prev_params)
        assert value.item() > 0 and torch.isfinite(value)
        assert ("_kfac_lowrank_penalty" in space.generate_source(design)) == bool(rank)


def test_the_generated_low_rank_module_at_full_rank_equals_the_exact_one(tmp_path: Path) -> None:
    """Through the generated modules, with biases (the weight and the bias are taken apart in the low-rank form)."""
    exact = space.Design(estimators="kfac", kfac_accumulate="per_context")
    low = exact.replace(kfac_rank=8)  # at least every factor's size in TinyNet (A: 6, 8; G: 7, 4)
    values, grads = [], []
    for i, design in enumerate([exact, low]):
        hooks = generated(tmp_path, design, f"full_rank_{i}")
        model = TinyNet(seed=4)
        for k in range(2):
            hooks.estimate_importance(model, data(seed=30 + k), model._custom_prev_params, CPU)
        value = hooks.compute_regularization_loss(model, {}, model._custom_prev_params)
        values.append(value)
        grads.append(torch.autograd.grad(value, list(model.parameters())))
    assert values[0].item() > 0
    torch.testing.assert_close(values[1], values[0])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
