"""The hook contract of HARNESS.md section 2, pinned on a tiny model where expected values are computed by hand."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from clharness.errors import DivergenceError, HookError
from clharness.loop import train_sequence
from clharness.streams import BatchSampler
from harness_utils import load, settings, tiny_model, tiny_stream

# Records what the loop hands to the hooks; penalty = sum(p^2) in every context so the total-loss gradient
# differs from the task gradient; importance = the constant (context index) everywhere.
PROBE = """
def _reg(model):
    return {n.replace('.', '__'): p for n, p in model.named_parameters() if p.requires_grad}

def estimate_importance(model, dataset, prev_params, device):
    x, y = dataset[0]
    model._probe.append(dict(
        event="importance", units=model(x.unsqueeze(0)).shape[1], labels=sorted({int(dataset[i][1]) for i in range(len(dataset))}),
        params={n: p.detach().clone() for n, p in _reg(model).items()}, prev=dict(prev_params),
        training=model.training,
    ))
    model.eval()  # the loop must reset the mode
    k = len([e for e in model._probe if e["event"] == "importance"])
    return {n: torch.full_like(p, float(k)) for n, p in _reg(model).items()}

def compute_regularization_loss(model, importance_dict, prev_params_dict):
    if not hasattr(model, "_probe"):
        model._probe = []
    model._probe.append(dict(event="step", imp={n: t.clone() for n, t in importance_dict.items()},
                             prev={n: t.clone() for n, t in prev_params_dict.items()}, training=model.training))
    return sum((p ** 2).sum() for p in _reg(model).values())
"""


def _run_probe(tmp_path, iters=4, reg_strength=0.5):
    hooks = load(tmp_path, PROBE)
    model = tiny_model()
    model._probe = []
    init = {n.replace(".", "__"): p.detach().clone() for n, p in model.named_parameters()}
    stream = tiny_stream()
    train_sequence(model, stream, stream, hooks, settings(iters=iters, reg_strength=reg_strength))
    return model, init, model._probe


def _expected_w(model0, ctx, hooks_penalty_strength, iters, context, lr=0.05):
    """Replay one context by hand with Adam: W = -sum_t grad_t * (p_{t+1} - p_t) of the total loss."""
    model = copy.deepcopy(model0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sampler = BatchSampler(len(ctx), 8, 0, context)
    model.active_units = ctx.units
    w = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for _ in range(iters):
        x, y = ctx.batch(sampler.next())
        loss = F.cross_entropy(model(x), y) + hooks_penalty_strength * sum(
            (p**2).sum() for p in model.parameters()
        )
        opt.zero_grad()
        loss.backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        for n, p in model.named_parameters():
            w[n] -= p.grad * (p.detach() - before[n])
    return {n.replace(".", "__"): t for n, t in w.items()}


def test_w_is_total_loss_gradient_times_step_taken(tmp_path):
    hooks = load(tmp_path, PROBE)
    model = tiny_model()
    model._probe = []
    expected = _expected_w(model, tiny_stream()[0], 0.5, 6, 1)
    stream = tiny_stream()[:1]
    train_sequence(model, stream, stream, hooks, settings(iters=6, reg_strength=0.5))
    assert set(model._custom_W) == set(expected)
    for n, w in expected.items():
        torch.testing.assert_close(model._custom_W[n], w, rtol=1e-5, atol=1e-7)
    # Without the penalty's gradient the same W would differ: W really uses the total loss.
    task_only = _expected_w(tiny_model(), tiny_stream()[0], 0.0, 6, 1)
    assert any(not torch.allclose(model._custom_W[n], task_only[n], atol=1e-6) for n in expected)


def test_p_old_is_refreshed_after_every_step(tmp_path):
    model, _, _ = _run_probe(tmp_path)
    for n, p in model.named_parameters():
        torch.testing.assert_close(model._custom_p_old[n.replace(".", "__")], p.detach(), rtol=0, atol=0)


def test_importance_is_summed_and_empty_in_first_context(tmp_path):
    _, _, probe = _run_probe(tmp_path)
    steps = [e for e in probe if e["event"] == "step"]
    assert all(e["imp"] == {} for e in steps[:4])  # context 1: nothing carried, the penalty of {} is 0
    ctx3 = steps[8]
    for t in ctx3["imp"].values():  # contexts 1 and 2 returned 1 and 2: carried 3
        assert torch.all(t == 3.0)


def test_anchor_is_initial_params_then_params_after_each_context(tmp_path):
    _model, init, probe = _run_probe(tmp_path)
    steps = [e for e in probe if e["event"] == "step"]
    importance_calls = [e for e in probe if e["event"] == "importance"]
    assert len(importance_calls) == 2  # not after the last context
    for n, t in steps[0]["prev"].items():
        torch.testing.assert_close(t, init[n], rtol=0, atol=0)
    for call, first_step_after in zip(importance_calls, (steps[4], steps[8]), strict=True):
        for n, t in first_step_after["prev"].items():
            torch.testing.assert_close(t, call["params"][n], rtol=0, atol=0)


def test_names_use_double_underscores(tmp_path):
    model, _, probe = _run_probe(tmp_path)
    expected = {"fcs__0__weight", "fcs__0__bias", "fcs__2__weight", "fcs__2__bias"}
    assert set(model._custom_importance) == expected
    assert set(probe[0]["prev"]) == expected


def test_only_active_units_and_mapped_labels_in_importance(tmp_path):
    _model, _, probe = _run_probe(tmp_path)
    for e in (e for e in probe if e["event"] == "importance"):
        assert e["units"] == 2 and e["labels"] == [0, 1]
        assert e["training"] is True  # called in train mode
    assert all(e["training"] for e in probe if e["event"] == "step")  # mode reset after the hook's eval()


def test_active_units_in_training_and_evaluation(tmp_path):
    hooks = load(tmp_path, PROBE)
    model = tiny_model()
    model._probe = []
    shapes = []
    model.register_forward_hook(lambda m, i, o: shapes.append((m.training, o.shape[1])))
    stream = tiny_stream()
    train_sequence(model, stream, stream, hooks, settings(iters=2, evaluate_each_context=True))
    assert {s for _, s in shapes} == {2}  # the full layer has 6 units; only the active 2 are ever returned
    assert any(not training for training, _ in shapes)  # evaluation happened


def test_reg_strength_enters_the_loss(tmp_path):
    # Same run with strength 0 and 10: different trajectories, so the penalty term is weighted by it.
    out = []
    for strength in (0.0, 10.0):
        model, _, _ = _run_probe(tmp_path, reg_strength=strength)
        out.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert out[1].norm() < out[0].norm()  # the sum(p^2) penalty shrinks the parameters


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("def compute_regularization_loss(m, i, p):\n    return torch.zeros(())\n", "estimate_importance"),
        ("def estimate_importance(m, d, p, dev):\n    return {}\n", "compute_regularization_loss"),
        ("def estimate_importance(m, d, p, dev:\n    pass\n", "syntax error"),
        ("raise RuntimeError('boom')\n", "importing the hook module failed: RuntimeError: boom"),
        (
            "def estimate_importance(m, d, p, dev):\n    return {}\n"
            "def compute_regularization_loss(m, i):\n    return 0\n",
            "3 positional arguments",
        ),
    ],
)
def test_bad_modules_fail_on_load_naming_the_problem(tmp_path, body, message):
    with pytest.raises(HookError, match=message):
        load(tmp_path, body)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("{'reg_strenght_scale': 2.0}", "unknown CONFIG_OVERRIDES key 'reg_strenght_scale'"),
        ("{'reg_strength_scale': -1.0}", "positive finite"),
        ("{'reg_strength_scale': float('nan')}", "positive finite"),
        ("{'reg_strength_scale': '3'}", "positive finite"),
        ("[('reg_strength_scale', 1.0)]", "must be a dict"),
    ],
)
def test_config_overrides_are_checked(tmp_path, overrides, message):
    body = (
        "def estimate_importance(m, d, p, dev):\n    return {}\n"
        "def compute_regularization_loss(m, i, p):\n    return torch.zeros(())\n"
        f"CONFIG_OVERRIDES = {overrides}\n"
    )
    with pytest.raises(HookError, match=message):
        load(tmp_path, body)


def test_scale_is_read(tmp_path):
    body = (
        "def estimate_importance(m, d, p, dev):\n    return {}\n"
        "def compute_regularization_loss(m, i, p):\n    return torch.zeros(())\n"
        "CONFIG_OVERRIDES = {'reg_strength_scale': 2.5}\n"
    )
    assert load(tmp_path, body).reg_strength_scale == 2.5


GOOD_PENALTY = "def compute_regularization_loss(m, i, p):\n    return torch.zeros(())\n"


@pytest.mark.parametrize(
    ("importance", "message"),
    [
        ("{1: ok['fcs__0__bias']}", "key 1 is not a string"),
        ("{**ok, 'fcs.0.weight': ok['fcs__0__weight']}", "'fcs.0.weight' is not a regularized parameter"),
        ("{**ok, 'fcs__0__weight': torch.zeros(2, 2)}", "'fcs__0__weight' has shape"),
        ("{**ok, 'fcs__0__bias': ok['fcs__0__bias'].double()}", "'fcs__0__bias' has dtype"),
        ("{**ok, 'fcs__2__bias': ok['fcs__2__bias'] * float('nan')}", "'fcs__2__bias' has NaN"),
        ("[1, 2]", "not a dict"),
    ],
)
def test_bad_importance_stops_the_run_naming_the_parameter(tmp_path, importance, message):
    body = (
        "def estimate_importance(m, d, p, dev):\n"
        "    ok = {n.replace('.', '__'): torch.ones_like(t) for n, t in m.named_parameters()}\n"
        f"    return {importance}\n" + GOOD_PENALTY
    )
    hooks = load(tmp_path, body)
    stream = tiny_stream(contexts=2)
    with pytest.raises(HookError, match=message):
        train_sequence(tiny_model(contexts=2), stream, stream, hooks, settings(iters=2))


def test_non_scalar_penalty_names_the_step(tmp_path):
    body = "def estimate_importance(m, d, p, dev):\n    return {}\ndef compute_regularization_loss(m, i, p):\n    return torch.zeros(3)\n"
    stream = tiny_stream(contexts=1)
    with pytest.raises(HookError, match=r"returned \(3,\) at context 1, step 1"):
        train_sequence(tiny_model(), stream, stream, load(tmp_path, body), settings(iters=2))


def test_divergence_names_context_and_step(tmp_path):
    body = (
        "def estimate_importance(m, d, p, dev):\n"
        "    return {n.replace('.', '__'): torch.ones_like(t) for n, t in m.named_parameters()}\n"
        "def compute_regularization_loss(m, i, p):\n"
        "    m._n = getattr(m, '_n', 0) + 1\n"
        "    return torch.tensor(float('nan')) if m._n == 8 + 7 else torch.zeros(())\n"
    )
    stream = tiny_stream(contexts=2)
    with pytest.raises(DivergenceError, match="non-finite penalty at context 2, step 7") as info:
        train_sequence(tiny_model(contexts=2), stream, stream, load(tmp_path, body), settings(iters=8))
    assert (info.value.context, info.value.step) == (2, 7)


# Returns importance for a subset of the parameters, chosen per call (the original harness adds whatever keys come
# back); the penalty records the carried dict it is handed and returns 0.
SUBSET = """
RETURNS = {1: {'fcs__0__weight': 1.0, 'fcs__2__bias': 1.0}, 2: {'fcs__0__weight': 2.0, 'fcs__0__bias': 5.0}, 3: {}}

def estimate_importance(model, dataset, prev_params, device):
    model._calls = getattr(model, '_calls', 0) + 1
    params = dict(model.named_parameters())
    return {n: torch.full_like(params[n.replace('__', '.')], v) for n, v in RETURNS[model._calls].items()}

def compute_regularization_loss(model, importance_dict, prev_params_dict):
    model._seen.append({n: t.clone() for n, t in importance_dict.items()})
    return torch.zeros(())
"""


def test_a_subset_of_the_parameters_is_accepted_and_accumulated(tmp_path):
    model = tiny_model(contexts=4)
    model._seen = []
    stream = tiny_stream(contexts=4)
    train_sequence(model, stream, stream, load(tmp_path, SUBSET), settings(iters=2))
    keys = [list(seen) for seen in model._seen[::2]]  # the carried dict handed to the penalty, per context
    # Only what is carried, in the order of the parameters; a parameter never returned is absent, not zero.
    assert keys == [
        [],
        ["fcs__0__weight", "fcs__2__bias"],
        ["fcs__0__weight", "fcs__0__bias", "fcs__2__bias"],
        ["fcs__0__weight", "fcs__0__bias", "fcs__2__bias"],  # {} after context 3: nothing added
    ]
    expected = {"fcs__0__weight": 3.0, "fcs__0__bias": 5.0, "fcs__2__bias": 1.0}  # 1 + 2; 5; 1 (kept)
    assert list(model._custom_importance) == list(expected)
    for name, value in expected.items():
        assert torch.equal(
            model._custom_importance[name], torch.full_like(model._custom_importance[name], value)
        )
    assert model._seen[-1].keys() == model._custom_importance.keys()
    assert "fcs__2__weight" not in model._custom_importance  # never returned: nothing carried for it


def test_empty_importance_means_no_regularization(tmp_path):
    body = "def estimate_importance(m, d, p, dev):\n    return {}\n" + (
        "def compute_regularization_loss(m, i, p):\n"
        "    m._seen.append(dict(i))\n"
        "    return sum((t.sum() for t in i.values()), torch.zeros(()))\n"
    )
    model = tiny_model()
    model._seen = []
    stream = tiny_stream()
    train_sequence(model, stream, stream, load(tmp_path, body), settings(iters=3))
    assert model._custom_importance == {} and model._seen == [{}] * 9
    assert set(model._custom_prev_params) == {
        "fcs__0__weight",
        "fcs__0__bias",
        "fcs__2__weight",
        "fcs__2__bias",
    }


def test_every_key_returned_sums_in_place_of_nothing_carried(tmp_path):
    # A module that returns every key: the carried dict is a new dict in the parameters' order holding exactly
    # carried + returned (the first context's values are copies, never the hook's own tensors).
    body = (
        "def estimate_importance(m, d, p, dev):\n"
        "    m._returned.append({n.replace('.', '__'): torch.rand_like(t) for n, t in m.named_parameters()})\n"
        "    return m._returned[-1]\n" + GOOD_PENALTY
    )
    model = tiny_model()
    model._returned = []
    stream = tiny_stream()
    train_sequence(model, stream, stream, load(tmp_path, body), settings(iters=2))
    first, second = model._returned
    assert list(model._custom_importance) == [n.replace(".", "__") for n, _ in model.named_parameters()]
    for name, value in model._custom_importance.items():
        assert torch.equal(value, first[name] + second[name])
        assert value is not first[name] and value is not second[name]
