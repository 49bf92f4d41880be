"""The code generator: presets against the formulas they implement, determinism, safety, lint, golden file."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import optuna
import pytest
import torch
from torch import nn

import space
from cli.main import main as search_main
from space.presets import VARIANTS

ROOT = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).with_name("ruff")
GOLDEN = ROOT / "tests" / "golden" / "generated_mix.py"
# A design that uses most components; its generated source is pinned byte for byte in tests/golden.
GOLDEN_DESIGN = space.Design(
    estimators="fisher+si",
    fisher_labels="sampled",
    si_clamp=True,
    mix=0.6,
    data_examples=1000,
    data_subset="random",
    norm="mean",
    power=0.5,
    clip_quantile=0.99,
    reference="fisher_first",
    accumulate="max",
    reg_strength_scale=0.3,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


class TinyNet(nn.Module):
    """Harness attributes on a small MLP; `model(x)` returns only the active units 1..2 (task-incremental)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fcs = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4))
        self.double()
        self.param_list = [self.named_parameters]
        self._custom_W = {self.key(n): torch.rand_like(p) - 0.3 for n, p in self.named_parameters()}
        self._custom_p_old: dict[str, torch.Tensor] = {}
        self._custom_importance: dict[str, torch.Tensor] = {}
        self._custom_prev_params = {self.key(n): p.detach() + 0.05 for n, p in self.named_parameters()}
        self.gamma = 1.0
        self.epsilon = 0.1

    @staticmethod
    def key(name: str) -> str:
        return name.replace(".", "__")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fcs(x)[:, 1:3]


def data(n: int = 30, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(5, generator=g, dtype=torch.double), torch.tensor(i % 2)) for i in range(n)]


def load(path: Path, name: str = "generated_hooks") -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated(tmp_path: Path, design: space.Design, name: str = "hooks") -> ModuleType:
    path = tmp_path / f"{name}.py"
    space.write_module(path, space.generate_source(design))
    return load(path, name)


def random_designs(n: int, seed: int) -> list[space.Design]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.suggest(study.ask()) for _ in range(n)]


def reference(model: TinyNet, imp: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(
        (imp[model.key(n)] * (p - anchor[model.key(n)]) ** 2).sum() for n, p in model.named_parameters()
    )


# ------------------------------------------------------------------------------ presets against their formulas


def test_ewc_preset_equals_the_scaffold(tmp_path: Path) -> None:
    scaffold = load(ROOT / "tests" / "hooks" / "scaffold_ewc.py", "scaffold_ewc")
    hooks = generated(tmp_path, space.PRESETS["ewc"])
    assert hooks.CONFIG_OVERRIDES == scaffold.CONFIG_OVERRIDES == {"reg_strength_scale": 1.0}
    model = TinyNet()
    ds = data(230)  # more than 200: both use the first 200 in order
    expected = scaffold.estimate_importance(model, ds, model._custom_prev_params, torch.device("cpu"))
    for mode in (True, False):
        model.train(mode)
        got = hooks.estimate_importance(model, ds, model._custom_prev_params, torch.device("cpu"))
        assert model.training is mode  # the previous mode is restored
        assert list(got) == list(expected)
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=0.0)
    anchor = {k: v - 0.1 for k, v in model._custom_prev_params.items()}
    torch.testing.assert_close(
        hooks.compute_regularization_loss(model, expected, anchor),
        scaffold.compute_regularization_loss(model, expected, anchor),
    )


def test_si_preset_is_w_over_delta_squared_plus_epsilon(tmp_path: Path) -> None:
    hooks = generated(tmp_path, space.PRESETS["si"])
    model = TinyNet()
    model.epsilon = 0.25
    got = hooks.estimate_importance(model, data(), model._custom_prev_params, torch.device("cpu"))
    for n, p in model.named_parameters():
        k = model.key(n)
        delta = p.detach() - model._custom_prev_params[k]
        torch.testing.assert_close(got[k], model._custom_W[k] / (delta**2 + 0.25))
    assert any((v < 0).any() for v in got.values())  # published SI does not clamp
    anchor = {k: v - 0.1 for k, v in model._custom_prev_params.items()}
    # Published: scale 1 times sum Omega (theta - theta*)^2; here scale 2 times 0.5 * sum, the same loss.
    scale = hooks.CONFIG_OVERRIDES["reg_strength_scale"]
    assert scale == 2.0
    torch.testing.assert_close(
        scale * hooks.compute_regularization_loss(model, got, anchor), reference(model, got, anchor)
    )


def test_online_ewc_is_the_decayed_sum_over_three_contexts(tmp_path: Path) -> None:
    scaffold = load(ROOT / "tests" / "hooks" / "scaffold_ewc.py", "scaffold_ewc")
    hooks = generated(tmp_path, space.PRESETS["online_ewc"])
    model = TinyNet()
    fishers = []
    for context in range(3):
        ds = data(40, seed=context)
        with torch.no_grad():  # each context moves the network
            for p in model.parameters():
                p.add_(0.2 * torch.randn_like(p))
        fishers.append(scaffold.estimate_importance(model, ds, None, torch.device("cpu")))
        returned = hooks.estimate_importance(model, ds, model._custom_prev_params, torch.device("cpu"))
        carried = model._custom_importance
        model._custom_importance = {
            k: carried.get(k, 0) + v for k, v in returned.items()
        }  # the loop's addition
    f1, f2, f3 = fishers
    for k in f1:
        torch.testing.assert_close(model._custom_importance[k], 0.9 * (0.9 * f1[k] + f2[k]) + f3[k])
    anchor = {k: v - 0.1 for k, v in model._custom_prev_params.items()}
    penalty = hooks.compute_regularization_loss(model, model._custom_importance, anchor)
    torch.testing.assert_close(penalty, 0.5 * 0.9 * reference(model, model._custom_importance, anchor))


def test_mas_l2_and_none_presets(tmp_path: Path) -> None:
    model = TinyNet()
    ds = data()
    mas = generated(tmp_path, space.PRESETS["mas"], "mas").estimate_importance(
        model, ds, {}, torch.device("cpu")
    )
    expected = {model.key(n): torch.zeros_like(p) for n, p in model.named_parameters()}
    for x, _ in ds:  # mean over examples of |d ||f(x)||^2 / d theta|, one backward pass each
        model.zero_grad()
        model(x[None]).square().sum().backward()
        for n, p in model.named_parameters():
            expected[model.key(n)] += p.grad.abs() / len(ds)
    for k in expected:
        torch.testing.assert_close(mas[k], expected[k])
    l2 = generated(tmp_path, space.PRESETS["l2"], "l2")
    ones = l2.estimate_importance(model, ds, {}, torch.device("cpu"))
    assert all(torch.equal(v, torch.ones_like(v)) for v in ones.values())
    anchor = {k: v - 0.1 for k, v in model._custom_prev_params.items()}
    torch.testing.assert_close(
        l2.compute_regularization_loss(model, ones, anchor), 0.5 * reference(model, ones, anchor)
    )
    none = generated(tmp_path, space.PRESETS["none"], "none")
    zeros = none.estimate_importance(model, ds, {}, torch.device("cpu"))
    assert set(zeros) == set(expected) and all((v == 0).all() for v in zeros.values())
    assert none.compute_regularization_loss(model, ones, anchor).item() == 0.0
    assert "_per_example_sums" not in space.generate_source(space.PRESETS["none"])


def test_max_accumulation_keeps_the_elementwise_maximum(tmp_path: Path) -> None:
    hooks = generated(tmp_path, space.PRESETS["ewc"].replace(accumulate="max"))
    scaffold = load(ROOT / "tests" / "hooks" / "scaffold_ewc.py", "scaffold_ewc")
    model = TinyNet()
    fishers = []
    for context in range(2):
        ds = data(40, seed=context)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
        fishers.append(scaffold.estimate_importance(model, ds, None, torch.device("cpu")))
        returned = hooks.estimate_importance(model, ds, {}, torch.device("cpu"))
        model._custom_importance = {k: model._custom_importance.get(k, 0) + v for k, v in returned.items()}
    for k, f in fishers[0].items():
        torch.testing.assert_close(model._custom_importance[k], torch.maximum(f, fishers[1][k]))


def _total(t: dict) -> torch.Tensor:
    return sum(v.abs().sum() for v in t.values())


def test_calibrated_designs_carry_the_exact_fishers_total(tmp_path: Path) -> None:
    """reference 'fisher': each context's importance has that context's exact-Fisher total; 'fisher_first':
    every context has the first context's total (equalized), whatever the estimator and transforms."""
    scaffold = load(ROOT / "tests" / "hooks" / "scaffold_ewc.py", "scaffold_ewc")
    for i, design in enumerate(
        [VARIANTS["sqrt_fisher"], VARIANTS["mas_calibrated"], VARIANTS["si_calibrated"], GOLDEN_DESIGN]
    ):
        hooks = generated(tmp_path, design, f"calibrated_{i}")
        torch.manual_seed(i)
        model = TinyNet()
        fishers = []
        returned = []
        for context in range(3):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.3 * torch.randn_like(p))
            ds = data(40, seed=context)
            fishers.append(scaffold.estimate_importance(model, ds[:200], None, torch.device("cpu")))
            model._custom_importance = {}  # the totals of what is returned, context by context
            returned.append(
                hooks.estimate_importance(model, ds, model._custom_prev_params, torch.device("cpu"))
            )
        for context in range(3):
            target = fishers[0 if design.reference == "fisher_first" else context]
            torch.testing.assert_close(_total(returned[context]), _total(target), rtol=1e-6, atol=0.0)


def test_mixture_of_normalized_estimators_with_power(tmp_path: Path) -> None:
    """fisher+mas at mix 0.3: 0.3 * F / total(F) + 0.7 * MAS / total(MAS), then ^0.5, then to the F total."""
    scaffold = load(ROOT / "tests" / "hooks" / "scaffold_ewc.py", "scaffold_ewc")
    mas_hooks = generated(tmp_path, space.PRESETS["mas"], "mas_only")
    design = space.Design(estimators="fisher+mas", mix=0.3, power=0.5)
    hooks = generated(tmp_path, design, "mixture")
    model = TinyNet()
    ds = data()
    fisher = scaffold.estimate_importance(model, ds, None, torch.device("cpu"))
    mas = mas_hooks.estimate_importance(model, ds, {}, torch.device("cpu"))
    mixed = {k: (0.3 * fisher[k] / _total(fisher) + 0.7 * mas[k] / _total(mas)).sqrt() for k in fisher}
    expected = {k: v * _total(fisher) / _total(mixed) for k, v in mixed.items()}
    got = hooks.estimate_importance(model, ds, {}, torch.device("cpu"))
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-12)


def test_every_example_of_the_context_in_chunks(tmp_path: Path) -> None:
    """data_examples 0 averages over the whole dataset, chunk by chunk (the chunks add up to one pass)."""
    hooks = generated(tmp_path, VARIANTS["ewc_all_examples"], "all_examples")
    hooks._EXAMPLE_CHUNK = 7  # the module's own constant: 300 examples in 43 chunks
    model = TinyNet()
    ds = data(300)
    expected = {k: torch.zeros_like(p) for k, p in hooks._regularized(model)}
    for x, _ in ds:  # the exact Fisher, one example at a time
        out = model(x[None])
        probs = torch.softmax(out, 1)[0].detach()
        for j in range(out.shape[1]):
            model.zero_grad()
            (-torch.log_softmax(model(x[None]), 1)[0, j]).backward()
            for n, p in model.named_parameters():
                expected[model.key(n)] += probs[j] * p.grad**2 / len(ds)
    got = hooks.estimate_importance(model, ds, {}, torch.device("cpu"))
    for k in expected:
        torch.testing.assert_close(got[k], expected[k])


# ----------------------------------------------------------------------------------- random designs, any point


def test_random_designs_generate_modules_that_run_three_contexts_on_a_tiny_model(tmp_path: Path) -> None:
    for i, design in enumerate(random_designs(12, seed=5)):
        hooks = generated(tmp_path, design, f"random_{i}")
        model = TinyNet(seed=i)
        assert hooks.compute_regularization_loss(model, {}, model._custom_prev_params).item() == 0.0
        for context in range(3):
            returned = hooks.estimate_importance(
                model, data(50, seed=context), model._custom_prev_params, "cpu"
            )
            assert set(returned) == {model.key(n) for n, _ in model.named_parameters()}
            for k, v in returned.items():
                carried = model._custom_importance.get(k, 0) + v
                assert torch.isfinite(carried).all()
                if "si" not in design.estimator_list or design.si_clamp:
                    assert (carried >= -1e-12).all(), (design, k)
            model._custom_importance = {
                k: model._custom_importance.get(k, 0) + v for k, v in returned.items()
            }
            model._custom_prev_params = {k: p.detach().clone() for k, p in hooks._regularized(model)}
            loss = hooks.compute_regularization_loss(
                model, model._custom_importance, model._custom_prev_params
            )
            assert loss.item() == 0.0  # at the anchor
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01)
            loss = hooks.compute_regularization_loss(
                model, model._custom_importance, model._custom_prev_params
            )
            assert loss.shape == () and torch.isfinite(loss)
            loss.backward()


def _harness_streams(tmp_path: Path, designs: list[space.Design]) -> None:
    data_dir = os.environ.get("CL_DATA_DIR")
    if not data_dir or not Path(data_dir, "MNIST").exists():
        pytest.skip("CL_DATA_DIR with MNIST is not set: the harness stream needs real data")
    from clharness.runner import RunConfig, run

    cfg = RunConfig(
        "splitMNIST",
        iters=20,
        contexts=2,
        train_subset=500,
        eval_split="val",
        device="cpu",
        data_dir=data_dir,
    )
    for i, design in enumerate(designs):
        path = tmp_path / f"stream_{i}.py"
        space.write_module(path, space.generate_source(design))
        result = run(path, cfg, progress=False)
        assert len(result["per_context_accuracy"]) == 2
        assert all(0.0 <= a <= 1.0 for a in result["per_context_accuracy"])
        assert result["reg_strength_scale"] == design.reg_strength_scale


def test_a_random_design_generates_a_module_that_runs_a_short_harness_stream(tmp_path: Path) -> None:
    """Randomly sampled designs load, run a short Split-MNIST stream and give finite results (one here)."""
    _harness_streams(tmp_path, random_designs(1, seed=11))


@pytest.mark.slow
def test_random_designs_generate_modules_that_run_a_short_harness_stream(tmp_path: Path) -> None:
    """The same over more random designs and every preset (minutes on a busy CPU)."""
    _harness_streams(tmp_path, [*random_designs(6, seed=12), *space.PRESETS.values()])


# ------------------------------------------------------------------------ source: determinism, lint, safety


def test_generation_is_deterministic_and_the_design_is_in_the_file(tmp_path: Path) -> None:
    for design in [*space.PRESETS.values(), *random_designs(5, seed=2)]:
        source = space.generate_source(design, {"study": "s1", "trial": 4, "score": 0.93})
        assert source == space.generate_source(design, {"trial": 4, "score": 0.93, "study": "s1"})
        module = ast.parse(source)
        literal = next(
            node.value
            for node in module.body
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "DESIGN"
        )
        assert space.Design.from_dict(ast.literal_eval(literal)) == design
        assert "python -m search export --study s1 --trial 4 --out custom_regularization.py" in source
        imports = {
            a.name.split(".")[0] for n in ast.walk(module) if isinstance(n, ast.Import) for a in n.names
        }
        imports |= {
            n.module.split(".")[0] for n in ast.walk(module) if isinstance(n, ast.ImportFrom) and n.module
        }
        assert imports <= {"torch", "collections", "__future__"}


def test_generated_sources_pass_ruff_format_and_check(tmp_path: Path) -> None:
    designs = [*space.PRESETS.values(), GOLDEN_DESIGN, *random_designs(25, seed=9)]
    paths = []
    for i, design in enumerate(designs):
        path = tmp_path / f"gen_{i}.py"
        path.write_text(space.generate_source(design, {"preset": "x", "trial": i}))
        paths.append(str(path))
    config = ["--config", str(ROOT / "pyproject.toml"), "--no-cache"]
    fmt = subprocess.run([RUFF, "format", "--check", *config, *paths], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    check = subprocess.run([RUFF, "check", *config, *paths], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_generated_module_holds_only_what_its_design_uses(tmp_path: Path) -> None:
    """The shipped kind of design (MAS, a power, this context's Fisher total, the first 200 examples): no DESIGN
    field at a value that changes nothing, no branch it never takes, and no state of its own on the model."""
    design = space.Design(estimators="mas", power=0.9, reg_strength_scale=0.99)
    source = space.generate_source(design)
    hooks = generated(tmp_path, design)
    assert space.Design.from_dict(hooks.DESIGN) == design
    assert not {"norm", "clip_quantile"} & set(hooks.DESIGN)
    for unused in (
        "randperm",
        "SUBSET_SEED",
        "_power(",
        "_clip_quantile",
        "_norm_",
        "_custom_reference_total",
    ):
        assert unused not in source, unused
    model = TinyNet()
    attributes = set(vars(model))
    importance = hooks.estimate_importance(model, data(), {}, torch.device("cpu"))
    anchor = {k: v - 0.1 for k, v in model._custom_prev_params.items()}
    (100.0 * hooks.compute_regularization_loss(model, importance, anchor)).backward()
    assert set(vars(model)) == attributes


def test_golden_generated_file() -> None:
    source = space.generate_source(GOLDEN_DESIGN, {"study": "golden", "trial": 3})
    if os.environ.get("UPDATE_GOLDEN") == "1":
        space.write_module(GOLDEN, source)
    assert source == GOLDEN.read_text(), "regenerate with UPDATE_GOLDEN=1 if the change is intended"


@pytest.mark.parametrize(
    "provenance",
    [
        {"study": 'x"""\nimport os; os.system("echo pwned")\n"""'},
        {"study": "a'b"},
        {"study": "ok\nimport os"},
        {'bad"key': "x"},
        {"trial": True},
        {"study": ["a"]},
    ],
)
def test_hostile_provenance_cannot_inject_code(provenance: dict) -> None:
    with pytest.raises(space.DesignError, match="provenance"):
        space.generate_source(space.PRESETS["ewc"], provenance)


def test_names_and_numbers_enter_only_as_themselves_and_repr() -> None:
    source = space.generate_source(
        space.PRESETS["si"], {"study": "perm-mnist.v2", "score": 0.1 + 0.2, "trial": 7}
    )
    assert "study=perm-mnist.v2" in source and "score=0.30000000000000004" in source
    compile(source, "generated", "exec")


def test_write_module_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "custom_regularization.py"
    space.write_module(target, "A = 1\n")
    space.write_module(target, "A = 2\n")
    assert target.read_text() == "A = 2\n"
    assert [p.name for p in target.parent.iterdir()] == ["custom_regularization.py"]


# ------------------------------------------------------------------------------------------- export command


def test_export_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "si.py"
    assert search_main(["export", "--preset", "si", "--out", str(out)]) == 0
    assert out.read_text() == space.generate_source(space.PRESETS["si"], {"preset": "si"})
    design_file = tmp_path / "d.json"
    design_file.write_text(GOLDEN_DESIGN.to_json())
    assert search_main(["export", "--design", str(design_file), "--out", str(out)]) == 0
    assert out.read_text() == space.generate_source(GOLDEN_DESIGN)
    design_file.write_text('{"estimators": "mas", "colour": "red"}')
    assert search_main(["export", "--design", str(design_file), "--out", str(out)]) == 2
    assert search_main(["export", "--preset", "ewc2", "--out", str(out)]) == 2
    assert search_main(["export", "--design", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "colour" in err and "ewc2" in err and "missing.json" in err

    import cli.export

    calls = []

    def fake_trial_source(study: str, storage: str | None = None, trial: int | None = None) -> str:
        calls.append((study, storage, trial))
        return "# exact stored bytes\r\nA = 1\n"

    monkeypatch.setattr(cli.export, "trial_source", fake_trial_source)
    args = ["export", "--study", "s", "--trial", "3", "--storage", "sqlite:///x.db", "--out", str(out)]
    assert search_main(args) == 0
    assert out.read_bytes() == b"# exact stored bytes\r\nA = 1\n" and calls == [("s", "sqlite:///x.db", 3)]


def test_export_refuses_an_unusable_out_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`--out` naming a folder: one line, exit 2, the study never read, and no temporary file left behind."""
    import cli.export

    def must_not_run(*args: object, **kwargs: object) -> str:
        raise AssertionError("the study was read although --out is unusable")

    monkeypatch.setattr(cli.export, "trial_source", must_not_run)
    folder = tmp_path / "modules"
    folder.mkdir()
    for source in (["--preset", "ewc"], ["--study", "s", "--storage", "sqlite:///x.db"]):
        assert search_main(["export", *source, "--out", str(folder)]) == 2
        err = capsys.readouterr().err
        hint = folder / "custom_regularization.py"
        assert err == f"error: --out {folder} is a folder; give the path of a file, e.g. {hint}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["modules"] and not any(folder.iterdir())


def test_shipped_module_computes_what_todays_generator_writes_for_its_design(tmp_path: Path) -> None:
    """Today's generator, given the shipped file's own DESIGN literal, writes a module that computes the same
    numbers (that the file is its study's best trial, byte for byte, is
    test_make_regenerate_from_the_committed_study_is_the_shipped_module)."""
    shipped = ROOT / "custom_regularization.py"
    scored = load(shipped, "shipped_hooks")
    design = space.Design.from_dict(scored.DESIGN)
    current = generated(tmp_path, design, "current_hooks")
    # The file may come from an earlier version of the space (or list fields at a value that changes nothing):
    # its DESIGN converts to today's fields.
    assert space.Design.from_dict(current.DESIGN) == design
    assert current.CONFIG_OVERRIDES == scored.CONFIG_OVERRIDES
    models = {name: TinyNet() for name in ("scored", "current")}
    importance = {
        name: hooks.estimate_importance(models[name], data(), {}, torch.device("cpu"))
        for name, hooks in (("scored", scored), ("current", current))
    }
    torch.testing.assert_close(importance["scored"], importance["current"])
    anchor = {k: v - 0.1 for k, v in models["scored"]._custom_prev_params.items()}
    for name, hooks in (("scored", scored), ("current", current)):
        (100.0 * hooks.compute_regularization_loss(models[name], importance[name], anchor)).backward()
    torch.testing.assert_close(
        scored.compute_regularization_loss(models["scored"], importance["scored"], anchor),
        current.compute_regularization_loss(models["current"], importance["current"], anchor),
    )
    for (_, a), (_, b) in zip(
        models["scored"].named_parameters(), models["current"].named_parameters(), strict=True
    ):
        torch.testing.assert_close(a.grad, b.grad)
