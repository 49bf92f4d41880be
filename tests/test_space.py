"""The design space: validation, JSON, sampling, presets as points, and one contract over every registry entry."""

from __future__ import annotations

import json
import re
from typing import Any

import optuna
import pytest
import torch
from torch import nn

import space
from space import components as c
from space.presets import VARIANTS
from space.registry import ACCUMULATIONS, ESTIMATORS, NORMALIZATIONS, PENALTY, SCALES, TRANSFORMS

optuna.logging.set_verbosity(optuna.logging.WARNING)


class TinyNet(nn.Module):
    """A small network carrying the harness's hook attributes; returns only the active units 1..2."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)  # a non-Linear parameter: exercises the torch.func path
        self.fc2 = nn.Linear(8, 4)
        self.double()
        self.param_list = [self.named_parameters]
        self._custom_W = {k: torch.rand_like(p) - 0.3 for k, p in c._regularized(self)}
        self._custom_p_old: dict[str, torch.Tensor] = {}
        self._custom_importance: dict[str, torch.Tensor] = {}
        self._custom_prev_params = {k: p.detach() + 0.1 for k, p in c._regularized(self)}
        self.gamma = 1.0
        self.epsilon = 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))[:, 1:3]


def dataset(n: int = 24, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(6, generator=g, dtype=torch.double), torch.tensor(i % 2)) for i in range(n)]


def generated(source: str) -> dict[str, Any]:
    """The globals of a generated hook module, run from its source."""
    namespace: dict[str, Any] = {}
    exec(compile(source, "generated_hooks.py", "exec"), namespace)
    return namespace


# ------------------------------------------------------------------------------------------------ Design


def test_default_design_is_the_ewc_preset_and_presets_round_trip_through_json() -> None:
    assert space.Design() == space.PRESETS["ewc"]
    assert set(space.PRESETS) == {"ewc", "online_ewc", "si", "mas", "l2", "none", "kfac_ewc"}
    for design in [*space.PRESETS.values(), *VARIANTS.values()]:
        assert space.Design.from_json(design.to_json()) == design
        assert space.Design.from_dict(json.loads(json.dumps(design.to_dict()))) == design


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"estimator": "fisher"}, "estimator"),
        ({"estimators": "fisher+l2"}, "estimators"),
        ({"power": float("nan")}, "power"),
        ({"norm": "l1"}, "norm"),
        ({"data_examples": 300}, "data_examples"),
        ({"estimators": "si", "si_clamp": 1}, "si_clamp"),
        ({"reg_strength_scale": 0.0}, "reg_strength_scale"),
        ({"reg_strength_scale": "1"}, "reg_strength_scale"),
        ({"reference": "mas"}, "reference"),
    ],
)
def test_validation_rejects_unknown_fields_and_bad_values_naming_them(data: dict, named: str) -> None:
    with pytest.raises(space.DesignError, match=named):
        space.Design.from_dict(data)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"mix": 0.3}, "mix"),  # one estimator: no mixture weight
        ({"estimators": "mas", "fisher_labels": "sampled"}, "fisher_labels"),
        ({"si_clamp": True}, "si_clamp"),
        ({"decay_gamma": 0.8}, "decay_gamma"),  # accumulate is "sum"
        ({"data_examples": 0, "data_subset": "random"}, "data_subset"),  # every example: no subset
        ({"estimators": "si", "reference": "none", "data_examples": 1000}, "data_examples"),  # reads no data
        ({"estimators": "none", "power": 0.5}, "power"),
    ],
)
def test_a_field_without_effect_on_the_design_is_refused(data: dict, named: str) -> None:
    with pytest.raises(space.DesignError, match=f"{named}.*no effect"):
        space.Design.from_dict(data)


def test_to_dict_holds_only_the_fields_that_apply() -> None:
    assert set(space.PRESETS["si"].to_dict()) == {
        "estimators", "si_clamp", "norm", "power", "clip_quantile", "reference", "accumulate", "reg_strength_scale",
    }  # fmt: skip
    assert space.PRESETS["none"].to_dict() == {"estimators": "none"}
    mixed = space.Design(estimators="fisher+mas", mix=0.3, accumulate="decay", decay_gamma=0.8)
    assert {"mix", "fisher_labels", "decay_gamma", "data_subset"} <= set(mixed.to_dict())
    # replace() drops fields that stop applying instead of refusing them
    assert mixed.replace(estimators="si").to_dict().get("mix") is None


def test_a_mixture_needs_a_reference_scale() -> None:
    with pytest.raises(space.DesignError, match="reference"):
        space.Design(estimators="fisher+mas", reference="none")


def test_first_version_designs_convert_when_the_regularizer_exists_and_are_refused_otherwise() -> None:
    old_si = {"fisher_weight": 0.0, "si_weight": 1.0, "penalty_coef": 1.0, "reg_strength_scale": 1.0}
    assert space.Design.from_dict(old_si) == space.PRESETS["si"]
    old_mas = {"fisher_weight": 0, "mas_weight": 1, "penalty_coef": 1, "reg_strength_scale": 1e-5}
    assert space.Design.from_json(json.dumps(old_mas)) == space.PRESETS["mas"]
    old_online = {"accumulate": "decay", "decay_gamma": 0.9, "penalty_coef": 0.5, "fisher_weight": 1.0}
    assert space.Design.from_dict(old_online) == space.PRESETS["online_ewc"]
    with pytest.raises(space.DesignError, match=r"first version.*mixes raw"):
        space.Design.from_dict({"fisher_weight": 0.6, "mas_weight": 0.3})
    with pytest.raises(space.DesignError, match="rescale"):
        space.Design.from_dict({"fisher_weight": 1.0, "rescale": "fisher"})


def test_json_ints_are_accepted_for_float_fields() -> None:
    design = space.Design.from_json('{"power": 1, "reg_strength_scale": 100}')
    assert design.power == 1.0 and design.reg_strength_scale == 100.0
    with pytest.raises(space.DesignError, match="JSON"):
        space.Design.from_json("{not json")


def test_suggest_asks_exactly_the_fields_that_apply() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    designs = []
    for _ in range(60):
        trial = study.ask()
        design = space.suggest(trial)
        assert set(trial.params) == set(design.to_dict())
        study.tell(trial, 0.0)
        designs.append(design)
    # Random points: calibrated (never the uncalibrated reference), a strength within the searched decades,
    # one estimator or a mixture of two, and every searched choice comes up; the values measured to break
    # designs (L2 alone, rank normalization) never do, and a clip is sometimes off.
    assert {d.reference for d in designs} == {"fisher", "fisher_first"}
    assert all(0.3 <= d.reg_strength_scale <= 10 for d in designs)
    assert {len(d.estimator_list) for d in designs} == {1, 2}
    assert {d.estimators for d in designs} == set(space.SPACE["estimators"].search)
    assert "uniform" not in {e for d in designs for e in d.estimator_list}
    assert {d.norm for d in designs} == {"none", "mean"}
    assert {d.clip_quantile for d in designs} == {1.0, 0.999, 0.99}
    assert all(0.5 <= d.power <= 1 for d in designs)
    with pytest.raises(space.DesignError, match="typo"):
        space.suggest(study.ask(), {"typo": 1})


def test_suggest_with_fixed_fields_and_a_moved_strength_centre() -> None:
    """An uncalibrated preset's tuned baseline searches two decades either side of its own scale."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    fixed = {k: v for k, v in space.PRESETS["mas"].to_dict().items() if k != "reg_strength_scale"}
    for _ in range(10):
        trial = study.ask()
        design = space.suggest(trial, fixed, scale_center=2e-5)
        assert set(trial.params) == {"reg_strength_scale"}
        assert 2e-7 <= design.reg_strength_scale <= 2e-3
        assert design.replace(reg_strength_scale=2e-5) == space.PRESETS["mas"]
        study.tell(trial, 0.0)


@pytest.mark.parametrize("name", sorted(set(VARIANTS) - {"l2_calibrated", "kfac_ewc_r32"}))
def test_every_variant_is_a_point_of_the_searched_distributions(name: str) -> None:
    """Enqueued with trial_params, a variant comes back unchanged from suggest (values inside the space); the
    structured ones in a study that fixes the family (it is not searched with the diagonal designs yet)."""
    variant = VARIANTS[name]
    fixed = {"estimators": "kfac"} if variant.kfac else {}
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(space.trial_params(variant, fixed))
    assert space.suggest(study.ask(), fixed) == variant
    assert "data_examples" not in space.trial_params(variant, {"data_examples": 200})


def test_l2_is_a_point_of_the_space_but_not_of_its_search() -> None:
    assert space.outside_search(VARIANTS["l2_calibrated"]) == (
        "estimators = 'uniform' is not searched (searched: "
        "['fisher', 'mas', 'si', 'fisher+mas', 'fisher+si', 'mas+si'])"
    )
    assert space.outside_search(VARIANTS["sqrt_fisher"].replace(clip_quantile=0.995)) is not None
    assert "estimators = 'kfac' is not searched" in str(space.outside_search(VARIANTS["kfac_merged_r32"]))
    # The rank ablation of kfac_ewc keeps its raw factors, which no search samples.
    assert "reference = 'none' is not searched" in str(
        space.outside_search(VARIANTS["kfac_ewc_r32"], {"estimators": "kfac"})
    )
    assert "kfac_rank = 0 is not searched" in str(
        space.outside_search(space.PRESETS["kfac_ewc"].replace(reference="fisher"), {"estimators": "kfac"})
    )


def test_sampled_designs_are_within_the_searched_decades_of_ewc_strength() -> None:
    """Drawn by `suggest` and run as generated modules, designs are as strong as published EWC times their
    drawn scale (the importance carries the exact Fisher's total), and those strengths reach below and well
    above EWC's without leaving 0.3..10."""
    cpu = torch.device("cpu")
    model = TinyNet()
    xs, ys = c._examples(dataset(), range(24), cpu)
    model.eval()
    ewc_total = c._total(ESTIMATORS["fisher_exact"].func(model, dict(c._regularized(model)), xs, ys))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=4))
    strengths = []
    for _ in range(20):
        design = space.suggest(study.ask())
        hooks = generated(space.generate_source(design))
        model = TinyNet()
        importance = hooks["estimate_importance"](model, dataset(), model._custom_prev_params, cpu)
        strength = hooks["CONFIG_OVERRIDES"]["reg_strength_scale"] * float(c._total(importance) / ewc_total)
        assert strength == pytest.approx(design.reg_strength_scale, rel=1e-6), design
        strengths.append(strength)
    assert 0.3 <= min(strengths) < 0.6 and 5 < max(strengths) <= 10


# ------------------------------------------------------------------------- contract over every registry entry


def _estimate(key: str, model: TinyNet) -> dict[str, torch.Tensor]:
    params = dict(c._regularized(model))
    xs, ys = c._examples(dataset(), range(16), torch.device("cpu"))
    model.eval()
    if key == "fisher_sampled":
        return c._fisher_sampled(model, params, xs, ys, torch.Generator().manual_seed(0))
    if key == "si":
        return c._si(model, params, model._custom_prev_params, clamp=True)
    if key == "uniform":
        return c._uniform(params)
    return ESTIMATORS[key].func(model, params, xs, ys)


@pytest.mark.parametrize("key", sorted(ESTIMATORS))
def test_estimator_contract(key: str) -> None:
    model = TinyNet()
    params = dict(c._regularized(model))
    out = _estimate(key, model)
    assert (
        list(out)
        == list(params)
        == ["fc1__weight", "fc1__bias", "bn__weight", "bn__bias", "fc2__weight", "fc2__bias"]
    )
    for k, v in out.items():
        assert v.shape == params[k].shape and v.dtype == params[k].dtype
        assert torch.isfinite(v).all() and (v >= 0).all(), k
        assert not v.requires_grad
    # Inactive output units (0 and 3) get no gradient: data-based importance is exactly 0 on their rows.
    if key != "uniform" and key != "si":
        assert out["fc2__weight"][[0, 3]].abs().max() == 0 and out["fc2__weight"][1:3].abs().max() > 0
        assert out["bn__weight"].abs().max() > 0  # the path of parameters outside nn.Linear ran


@pytest.mark.parametrize("constant", ["LABEL_SEED", "SUBSET_SEED"])
def test_a_generated_module_draws_with_its_own_seed_constants(constant: str) -> None:
    """Equal seeds give equal importance and another seed another one: a module that ignored its constant (or
    drew from torch's global generator) would fail one of the two."""
    design = space.Design(fisher_labels="sampled", data_examples=200, data_subset="random")
    source = space.generate_source(design)

    def importance(seed: int) -> list[torch.Tensor]:
        text, count = re.subn(rf"^{constant} = 0$", f"{constant} = {seed}", source, flags=re.MULTILINE)
        assert count == 1, f"{constant} is not a constant of the generated module"
        estimate = generated(text)["estimate_importance"]
        return list(estimate(TinyNet(), dataset(300), {}, torch.device("cpu")).values())

    first, again, other = importance(0), importance(0), importance(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("key", sorted(NORMALIZATIONS))
def test_normalization_contract(key: str) -> None:
    t = torch.tensor([[0.0, 1.0, 4.0], [2.0, 2.0, 8.0]], dtype=torch.double)
    out = NORMALIZATIONS[key].func(t)
    assert out.shape == t.shape and torch.isfinite(out).all() and (out >= 0).all()
    assert torch.equal(torch.argsort(out.flatten(), stable=True), torch.argsort(t.flatten(), stable=True))
    expected = {
        "mean": t / (17 / 6),
        "rank": torch.tensor([[1, 3, 9], [6, 6, 11]], dtype=torch.double) / 12,  # mid-ranks, ties shared
    }[key]
    torch.testing.assert_close(out, expected)
    assert torch.equal(NORMALIZATIONS[key].func(torch.zeros(3)), torch.zeros(3)) or key == "rank"


def test_transform_contract() -> None:
    t = torch.arange(1.0, 11.0, dtype=torch.double)
    torch.testing.assert_close(TRANSFORMS["power"].func(t, 0.5), t.sqrt())
    torch.testing.assert_close(TRANSFORMS["power"].func(-t, 2.0), -(t**2))
    assert TRANSFORMS["clip_quantile"].func(t, 0.9).max() == 9.0
    assert torch.equal(TRANSFORMS["clip_quantile"].func(t, 1.0), t)


def test_unit_total_and_reference_scale() -> None:
    a = {"w": torch.tensor([1.0, 3.0]), "b": torch.tensor([-4.0])}
    unit = SCALES["unit_total"].func(a)
    torch.testing.assert_close(unit["w"], torch.tensor([0.125, 0.375]))
    torch.testing.assert_close(unit["b"], torch.tensor([-0.5]))
    model = TinyNet()
    fisher1 = {"w": torch.tensor([2.0, 2.0]), "b": torch.tensor([6.0])}  # total 10
    fisher2 = {"w": torch.tensor([0.5, 0.5]), "b": torch.tensor([0.0])}  # total 1
    to_ref, to_first = SCALES["reference"].func, SCALES["first_reference"].func
    # This context's total ...
    torch.testing.assert_close(to_ref(a, fisher2)["w"], torch.tensor([0.125, 0.375]))
    # ... or the first context's, held on the model whatever the later contexts' Fisher is.
    first = to_first(model, a, fisher1)
    later = to_first(model, a, fisher2)
    torch.testing.assert_close(first["w"], torch.tensor([1.25, 3.75]))
    torch.testing.assert_close(later["w"], first["w"])
    assert torch.equal(to_ref({"w": torch.zeros(2)}, fisher1)["w"], torch.zeros(2))


@pytest.mark.parametrize("key", sorted(ACCUMULATIONS))
def test_accumulation_contract_after_the_loops_addition(key: str) -> None:
    new1 = {"a": torch.tensor([1.0, 4.0])}
    new2 = {"a": torch.tensor([3.0, 2.0])}
    args = (0.5,) if key == "decay" else ()
    carried: dict[str, torch.Tensor] = {}
    for new in (new1, new2):
        returned = ACCUMULATIONS[key].func(carried, new, *args)
        carried = {k: carried.get(k, 0) + v for k, v in returned.items()}  # the harness's addition
    expected = {"sum": [4.0, 6.0], "decay": [3.5, 4.0], "max": [3.0, 4.0]}[key]
    torch.testing.assert_close(carried["a"], torch.tensor(expected))


def _reference_penalty(importance: dict, anchor: dict, params: dict) -> torch.Tensor:
    return 0.5 * sum(
        (importance[k] * (p - anchor[k]) ** 2).sum() for k, p in params.items() if k in importance
    )


def test_penalty_contract() -> None:
    model = TinyNet()
    penalty = PENALTY.func
    params = dict(c._regularized(model))
    anchor = {k: p.detach().clone() for k, p in params.items()}
    importance = {k: torch.rand_like(p) for k, p in params.items()}
    empty = penalty(model, {}, anchor)
    assert empty.shape == () and empty.item() == 0.0
    assert penalty(model, importance, anchor).item() == 0.0
    moved = {k: a - 0.2 for k, a in anchor.items()}
    value = 0.5 * penalty(model, importance, moved)
    torch.testing.assert_close(value, _reference_penalty(importance, moved, params))
    value.backward()
    for k, p in params.items():
        torch.testing.assert_close(p.grad, importance[k] * (p.detach() - moved[k]))
    # Nothing is cached from the importance or the anchor: an in-place change is seen at once.
    importance["fc1__bias"].mul_(3.0)
    moved["fc2__weight"].add_(1.0)
    torch.testing.assert_close(
        0.5 * penalty(model, importance, moved), _reference_penalty(importance, moved, params)
    )
    # A subset of the parameters carries importance: the others get no gradient from the penalty.
    model.zero_grad(set_to_none=True)
    part = {"fc2__weight": importance["fc2__weight"]}
    penalty(model, part, moved).backward()
    assert params["fc1__weight"].grad is None and params["fc2__weight"].grad is not None


@pytest.mark.parametrize("block", [5, 10**9])
@pytest.mark.parametrize("pattern", ["once", "twice", "no_grad_then_once", "alone", "retain_graph"])
@pytest.mark.parametrize("zero_grad", ["before_forward", "after_forward", "set_to_zero"])
def test_quadratic_penalty_is_right_for_any_call_pattern_and_loop_factor(
    monkeypatch: pytest.MonkeyPatch, block: int, pattern: str, zero_grad: str
) -> None:
    """Gradients equal autograd's through the formula, whatever the loop does around the penalty, and nothing
    is kept on the model.

    Blocks of 5 floats split parameters; one block per parameter is what a GPU gets. The loop's factor
    changes, drops to 0 and comes back.
    """
    monkeypatch.setattr(c, "_PENALTY_BLOCK_FLOATS", block)
    model = TinyNet()
    attributes = set(vars(model))
    params = dict(c._regularized(model))
    importance = {k: torch.rand_like(p) for k, p in params.items()}
    anchor = {k: p.detach() - 0.1 * torch.rand_like(p) for k, p in params.items()}
    x = torch.rand(5, 6, dtype=torch.double)
    for step, factor in enumerate([100.0, 100.0, 100.0, 3.0, 0.0, 3.0, 3.0]):
        with torch.no_grad():  # training moves the parameters between steps
            for p in params.values():
                p.add_(0.01 * (step + 1))
        task = (lambda: 0.0) if pattern == "alone" else (lambda: model(x).square().mean())
        expected = torch.autograd.grad(
            task() + factor * _reference_penalty(importance, anchor, params), list(params.values())
        )
        model.zero_grad(set_to_none=zero_grad != "set_to_zero")
        if pattern == "no_grad_then_once":  # a logging call first
            with torch.no_grad():
                logged = 0.5 * c._quadratic_penalty(model, importance, anchor)
            torch.testing.assert_close(logged, _reference_penalty(importance, anchor, params))
        if pattern == "twice":  # two micro-batches, each with its own evaluation of the penalty
            r1 = 0.5 * c._quadratic_penalty(model, importance, anchor)
            r2 = 0.5 * c._quadratic_penalty(model, importance, anchor)
            loss = task() + factor * (0.25 * r1 + 0.75 * r2)
        else:
            loss = task() + factor * 0.5 * c._quadratic_penalty(model, importance, anchor)
        if zero_grad == "after_forward":
            model.zero_grad(set_to_none=True)
        if pattern == "retain_graph":
            loss.backward(retain_graph=True)
            first = [p.grad.clone() for p in params.values()]
            loss.backward()
            for p, f, e in zip(params.values(), first, expected, strict=True):
                torch.testing.assert_close(f, e)
                torch.testing.assert_close(p.grad, 2 * e)
        else:
            loss.backward()
            for p, e in zip(params.values(), expected, strict=True):
                torch.testing.assert_close(p.grad, e)
        with torch.no_grad():
            for p in params.values():
                p.sub_(0.05 * p.grad)
    assert set(vars(model)) == attributes
