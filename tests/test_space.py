"""The design space: validation, JSON, sampling, presets as points, and one contract over every registry entry."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from torch import nn

import space
from space import components as c
from space.registry import ACCUMULATIONS, ESTIMATORS, NORMALIZATIONS, PENALTIES, RESCALES, TRANSFORMS

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


# ------------------------------------------------------------------------------------------------ Design


def test_default_design_is_the_ewc_preset_and_presets_round_trip_through_json() -> None:
    assert space.Design() == space.PRESETS["ewc"]
    assert set(space.PRESETS) == {"ewc", "online_ewc", "si", "mas", "l2", "none"}
    for design in space.PRESETS.values():
        assert space.Design.from_json(design.to_json()) == design
        assert space.Design.from_dict(json.loads(json.dumps(design.to_dict()))) == design


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"fisher_wieght": 0.5}, "fisher_wieght"),
        ({"fisher_weight": 1.5}, "fisher_weight"),
        ({"power": float("nan")}, "power"),
        ({"norm": "l1"}, "norm"),
        ({"data_examples": 5.5}, "data_examples"),
        ({"si_clamp": 1}, "si_clamp"),
        ({"reg_strength_scale": 0.0}, "reg_strength_scale"),
        ({"reg_strength_scale": "1"}, "reg_strength_scale"),
        ({"penalty_coef": 0.7}, "penalty_coef"),
    ],
)
def test_validation_rejects_unknown_fields_and_bad_values_naming_them(data: dict, named: str) -> None:
    with pytest.raises(space.DesignError, match=named):
        space.Design.from_dict(data)


def test_json_ints_are_accepted_for_float_fields() -> None:
    design = space.Design.from_json('{"fisher_weight": 1, "penalty_coef": 1, "reg_strength_scale": 100}')
    assert design.fisher_weight == 1.0 and design.penalty_coef == 1.0 and design.reg_strength_scale == 100.0
    with pytest.raises(space.DesignError, match="JSON"):
        space.Design.from_json("{not json")


def test_suggest_samples_every_non_fixed_field_in_every_trial() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    fixed = {"penalty": "quadratic", "reg_strength_scale": 2.0}
    designs = []
    for _ in range(25):
        trial = study.ask()
        design = space.suggest(trial, fixed)
        assert set(trial.params) == set(space.SPACE) - set(fixed)
        assert design.reg_strength_scale == 2.0
        study.tell(trial, 0.0)
        designs.append(design)
    assert len({d.norm for d in designs}) > 1 and len({d.fisher_weight for d in designs}) == 25
    with pytest.raises(space.DesignError, match="typo"):
        space.suggest(study.ask(), {"typo": 1})


@pytest.mark.parametrize("name", sorted(space.PRESETS))
def test_every_preset_is_a_point_of_the_searched_distributions(name: str) -> None:
    """Enqueued with trial_params, a preset comes back unchanged from suggest (values inside the space)."""
    preset = space.PRESETS[name]
    lo, hi = space.SPACE["reg_strength_scale"].low, space.SPACE["reg_strength_scale"].high
    assert lo < preset.reg_strength_scale < hi
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(space.trial_params(preset))
    assert space.suggest(study.ask()) == preset
    fixed = {"data_examples": 200}
    assert "data_examples" not in space.trial_params(preset, fixed)


def test_scale_range_spans_many_decades_log_uniform() -> None:
    spec = space.SPACE["reg_strength_scale"]
    assert spec.log and spec.high / spec.low >= 1e10


# ------------------------------------------------------------------------- contract over every registry entry


def _estimate(key: str, model: TinyNet) -> dict[str, torch.Tensor]:
    params = dict(c._regularized(model))
    xs, ys = c._examples(dataset(), 16, None, torch.device("cpu"))
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
        assert out["bn__weight"].abs().max() > 0  # the generic (torch.func) path ran


def test_sampled_labels_are_seeded() -> None:
    model = TinyNet()
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            _estimate("fisher_sampled", model).values(),
            _estimate("fisher_sampled", model).values(),
            strict=True,
        )
    )


@pytest.mark.parametrize("key", sorted(NORMALIZATIONS))
def test_normalization_contract(key: str) -> None:
    t = torch.tensor([[0.0, 1.0, 4.0], [2.0, 2.0, 8.0]], dtype=torch.double)
    out = NORMALIZATIONS[key].func(t)
    assert out.shape == t.shape and torch.isfinite(out).all() and (out >= 0).all()
    assert torch.equal(torch.argsort(out.flatten(), stable=True), torch.argsort(t.flatten(), stable=True))
    expected = {
        "none": t,
        "mean": t / (17 / 6),
        "max": t / 8,
        "rms": t / (89 / 6) ** 0.5,
        "rank": torch.tensor([[1, 3, 9], [6, 6, 11]], dtype=torch.double) / 12,  # mid-ranks, ties shared
    }[key]
    torch.testing.assert_close(out, expected)
    assert torch.equal(NORMALIZATIONS[key].func(torch.zeros(3)), torch.zeros(3)) or key == "rank"


def test_transform_and_rescale_contract() -> None:
    t = torch.arange(1.0, 11.0, dtype=torch.double)
    torch.testing.assert_close(TRANSFORMS["power"].func(t, 0.5), t.sqrt())
    torch.testing.assert_close(TRANSFORMS["power"].func(-t, 2.0), -(t**2))
    assert TRANSFORMS["clip_quantile"].func(t, 0.9).max() == 9.0
    assert torch.equal(TRANSFORMS["clip_quantile"].func(t, 1.0), t)
    assert TRANSFORMS["floor"].func(t, 0.5).min() == 0.5 * 5.5
    ref = torch.full((10,), 3.0, dtype=torch.double)
    torch.testing.assert_close(RESCALES["fisher"].func(t, ref).sum(), ref.sum())
    assert torch.equal(RESCALES["fisher"].func(torch.zeros(3), ref[:3]), torch.zeros(3))


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


@pytest.mark.parametrize("key", sorted(PENALTIES))
def test_penalty_contract(key: str) -> None:
    model = TinyNet()
    penalty = PENALTIES[key].func
    anchor = {k: p.detach().clone() for k, p in c._regularized(model)}
    importance = {k: torch.rand_like(p) for k, p in c._regularized(model)}
    empty = penalty(model, {}, anchor, 0.5)
    assert empty.shape == () and empty.item() == 0.0
    assert penalty(model, importance, anchor, 0.5).item() == 0.0
    moved = {k: a - 0.2 for k, a in anchor.items()}
    value = penalty(model, importance, moved, 0.5)
    expected = 0.5 * sum((importance[k] * (p - moved[k]) ** 2).sum() for k, p in c._regularized(model))
    torch.testing.assert_close(value, expected)
    value.backward()
    for k, p in c._regularized(model):
        torch.testing.assert_close(p.grad, importance[k] * (p.detach() - moved[k]))
    # The flat buffers follow an in-place change of the importance (the cache checks tensor versions).
    importance["fc1__bias"].mul_(3.0)
    expected = 0.5 * sum((importance[k] * (p - moved[k]) ** 2).sum() for k, p in c._regularized(model))
    torch.testing.assert_close(penalty(model, importance, moved, 0.5), expected)


@pytest.mark.parametrize("block", [5, 10**9])
def test_quadratic_penalty_over_blocks_follows_the_loops_factor(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """Blocks of the flat buffers, and the factor folded into the weights after a backward pass.

    Blocks of 5 floats split parameters and span parameter boundaries; one block holding every parameter is
    what a GPU gets.
    """
    monkeypatch.setattr(c, "_PENALTY_BLOCK_FLOATS", block)
    model = TinyNet()
    params = dict(c._regularized(model))
    importance = {k: torch.rand_like(p) for k, p in params.items()}
    anchor = {k: p.detach() - 0.1 * torch.rand_like(p) for k, p in params.items()}
    seen_scales = []
    for step, factor in enumerate([100.0, 100.0, 100.0, 3.0, 0.0, 3.0, 3.0, 3.0]):
        with torch.no_grad():  # training moves the parameters between steps
            for p in params.values():
                p.add_(0.01 * (step + 1))
        model.zero_grad()
        value = c._quadratic_penalty(model, importance, anchor, 0.5)
        seen_scales.append(model._custom_penalty_plan["scale"])
        (factor * value).backward()
        diff = {k: p.detach() - anchor[k] for k, p in params.items()}
        torch.testing.assert_close(value, 0.5 * sum((importance[k] * d**2).sum() for k, d in diff.items()))
        for k, p in params.items():
            torch.testing.assert_close(p.grad, factor * importance[k] * diff[k])
    # Folded once the same factor came twice in a row; a changing factor only costs a pass of the gradient.
    assert seen_scales == [1.0, 1.0, 100.0, 100.0, 100.0, 100.0, 100.0, 3.0]
    assert (len(model._custom_penalty_plan["blocks"]) > len(params)) == (block == 5)


@pytest.mark.parametrize("task_loss", [True, False])
@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("zero_grad_after_forward", [False, True])
def test_quadratic_penalty_reuses_its_gradient_buffer_only_when_no_grad_holds_it(
    task_loss: bool, set_to_none: bool, zero_grad_after_forward: bool
) -> None:
    """Whatever the loop's zero_grad, the gradients are right; the buffer is reused when no .grad holds it.

    Alone in the loss, the penalty's gradient becomes .grad itself (autograd keeps the buffer); after a task
    loss's gradient it is added to that one, and the buffer stays free.
    """
    model = TinyNet()
    params = dict(c._regularized(model))
    importance = {k: torch.rand_like(p) for k, p in params.items()}
    anchor = {k: p.detach() - 0.1 * torch.rand_like(p) for k, p in params.items()}
    x = torch.rand(5, 6, dtype=torch.double)
    buffers = []
    for _ in range(4):
        penalty = 0.5 * sum((importance[k] * (p - anchor[k]) ** 2).sum() for k, p in params.items())
        task = (lambda: model(x).square().mean()) if task_loss else (lambda: 0.0)
        expected = torch.autograd.grad(task() + 10.0 * penalty, list(params.values()))
        if not zero_grad_after_forward:
            model.zero_grad(set_to_none=set_to_none)
        loss = task() + 10.0 * c._quadratic_penalty(model, importance, anchor, 0.5)
        if zero_grad_after_forward:
            model.zero_grad(set_to_none=set_to_none)
        loss.backward()
        for p, e in zip(params.values(), expected, strict=True):
            torch.testing.assert_close(p.grad, e)
        buffers.append(model._custom_penalty_plan["grad"])
        with torch.no_grad():
            for p in params.values():
                p.sub_(0.05 * p.grad)
    reused = all(b is buffers[0] for b in buffers)
    assert reused == (task_loss or (set_to_none and not zero_grad_after_forward))
