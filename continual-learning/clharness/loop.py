"""The frozen training loop of docs/contract.md section 3 and the evaluation of section 5."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clharness.benchmarks import ContextData
from clharness.checkpoint import Checkpoint, rng_state, set_rng_state
from clharness.errors import DivergenceError, HookError
from clharness.hooks import HookModule, hook_raised
from clharness.models import ContinualNet, regularized_parameters
from clharness.streams import BatchSampler

# Finiteness flags are collected on the device and read every this many steps: one sync per block, not per step.
CHECK_EVERY = 50
EVAL_BATCH = 1000


@dataclass
class Timing:
    """Seconds spent per phase."""

    train_s: float = 0.0
    importance_s: float = 0.0
    eval_s: float = 0.0


@dataclass
class LoopSettings:
    """What the loop needs beyond the model, the contexts and the hook module."""

    iters: int
    batch_size: int
    lr: float
    reg_strength: float  # already multiplied by the module's reg_strength_scale
    seed: int
    progress: bool = True
    label: str = ""
    evaluate_each_context: bool = False
    on_context_end: Callable[[int, list[float]], None] | None = None
    timing: Timing = field(default_factory=Timing)
    checkpoint: Checkpoint | None = None  # save the state after each context; resume from it at the start
    # Set by `train_sequence` when it resumed: the context the checkpoint was saved after, and the seconds the
    # loop had spent before it.
    resumed: dict[str, float] | None = None


def evaluate(model: ContinualNet, ctx: ContextData) -> float:
    """Accuracy on a context's whole evaluation split, in eval mode, with its own units active."""
    was_training = model.training
    model.eval()
    model.active_units = ctx.units
    correct = 0
    with torch.no_grad():
        for start in range(0, len(ctx), EVAL_BATCH):
            x, y = ctx.batch(torch.arange(start, min(start + EVAL_BATCH, len(ctx))))
            correct += int((model(x).argmax(dim=1) == y).sum())
    model.train(was_training)
    return correct / max(1, len(ctx))


def _snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in params.items()}


def check_importance(
    returned: object, params: dict[str, torch.nn.Parameter], context: int
) -> dict[str, torch.Tensor]:
    """The importance a hook returned, checked: a dict over a subset of the regularized parameters (`{}` too),
    keyed by their `__` names, each tensor of the parameter's shape and dtype with finite values.

    The result is in the order of `params`.
    """
    where = f"estimate_importance after context {context}"
    if not isinstance(returned, dict):
        raise HookError(f"{where} returned {type(returned).__name__}, not a dict of tensors")
    not_str = [k for k in returned if not isinstance(k, str)]
    if not_str:
        raise HookError(
            f"{where}: key {not_str[0]!r} is not a string (keys are parameter names with '.' -> '__')"
        )
    extra = sorted(set(returned) - set(params))
    if extra:
        raise HookError(
            f"{where}: {extra[0]!r} is not a regularized parameter (keys are names with '.' -> '__')"
        )
    checked = {}
    for name, param in params.items():
        if name not in returned:  # nothing added for it: the original harness adds whatever keys come back
            continue
        value = returned[name]
        if not isinstance(value, torch.Tensor):
            raise HookError(f"{where}: importance of {name!r} is a {type(value).__name__}, not a tensor")
        if value.shape != param.shape:
            raise HookError(
                f"{where}: importance of {name!r} has shape {tuple(value.shape)}, expected {tuple(param.shape)}"
            )
        if value.dtype != param.dtype:
            raise HookError(
                f"{where}: importance of {name!r} has dtype {value.dtype}, expected {param.dtype}"
            )
        value = value.detach().to(param.device)
        if not bool(torch.isfinite(value).all()):
            raise HookError(f"{where}: importance of {name!r} has NaN or infinite values")
        checked[name] = value
    return checked


def add_importance(
    carried: dict[str, torch.Tensor], added: dict[str, torch.Tensor], names: list[str]
) -> dict[str, torch.Tensor]:
    """The new carried importance: `carried[n] + added[n]` for returned names, `added[n]` (a copy) for names
    carried for the first time, `carried[n]` unchanged for names not returned; in the order of `names`."""
    return {
        name: (carried[name] + added[name] if name in carried else added[name].clone())
        if name in added
        else carried[name]
        for name in names
        if name in added or name in carried
    }


def _penalty(hooks: HookModule, model: ContinualNet, context: int, step: int) -> torch.Tensor:
    try:
        reg = hooks.compute_regularization_loss(model, model._custom_importance, model._custom_prev_params)
    except MemoryError:
        raise  # the machine's limit, not the module's doing
    except (Exception, SystemExit) as exc:  # not KeyboardInterrupt: Ctrl-C and SIGTERM stop the run
        raise hook_raised("compute_regularization_loss", exc, hooks.path, context=context, step=step) from exc
    if not isinstance(reg, torch.Tensor) or reg.numel() != 1:
        shape = tuple(reg.shape) if isinstance(reg, torch.Tensor) else type(reg).__name__
        raise HookError(
            f"compute_regularization_loss returned {shape} at context {context}, step {step}; expected a scalar tensor"
        )
    return reg.reshape(())


def train_context(
    model: ContinualNet,
    ctx: ContextData,
    hooks: HookModule,
    optimizer: torch.optim.Optimizer,
    settings: LoopSettings,
    context: int,
    n_contexts: int,
) -> None:
    """Steps 1-2 of the loop for context `context` (1-based)."""
    params = regularized_parameters(model)
    names = list(params)
    plist: list[torch.Tensor] = [params[n] for n in names]
    model._custom_W = {n: torch.zeros_like(p) for n, p in params.items()}
    model._custom_p_old = _snapshot(params)
    w_list = [model._custom_W[n] for n in names]
    old_list = [model._custom_p_old[n] for n in names]
    model.active_units = ctx.units
    model.train()
    sampler = BatchSampler(len(ctx), settings.batch_size, settings.seed, context)
    device = plist[0].device
    bad_loss = torch.zeros(CHECK_EVERY, dtype=torch.bool, device=device)
    bad_reg = torch.zeros(CHECK_EVERY, dtype=torch.bool, device=device)
    bar = tqdm(
        total=settings.iters, desc=f"{settings.label} context {context}/{n_contexts}", leave=False,
        disable=not settings.progress, mininterval=0.5,
    )  # fmt: skip
    for step in range(1, settings.iters + 1):
        x, y = ctx.batch(sampler.next())
        reg = _penalty(hooks, model, context, step)
        loss = F.cross_entropy(model(x), y) + settings.reg_strength * reg
        slot = (step - 1) % CHECK_EVERY
        bad_loss[slot] = ~torch.isfinite(loss)
        bad_reg[slot] = ~torch.isfinite(reg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            # W += -grad * (p_new - p_old) for parameters with a grad; then p_old <- p_new for all.
            # In place, no temporaries: p_old becomes -(step taken), W += grad * that, then p_old <- p.
            has_grad = [i for i, p in enumerate(plist) if p.grad is not None]
            if has_grad:
                neg_steps = [old_list[i] for i in has_grad]
                torch._foreach_sub_(neg_steps, [plist[i] for i in has_grad])
                grads = [plist[i].grad for i in has_grad]
                torch._foreach_addcmul_([w_list[i] for i in has_grad], grads, neg_steps)  # type: ignore[arg-type]
            torch._foreach_copy_(old_list, plist)
        if slot == CHECK_EVERY - 1 or step == settings.iters:
            _raise_if_diverged(bad_loss, bad_reg, slot, step, context)
        bar.update(1)
    bar.close()


def _raise_if_diverged(
    bad_loss: torch.Tensor, bad_reg: torch.Tensor, slot: int, step: int, context: int
) -> None:
    flags = bad_loss[: slot + 1] | bad_reg[: slot + 1]
    if bool(flags.any()):
        first = int(flags.nonzero()[0])
        what = "penalty" if bool(bad_reg[first]) else "loss"
        raise DivergenceError(context, step - slot + first, what)
    bad_loss.zero_()
    bad_reg.zero_()


# Set by `train_context` at every context's start: not state carried across contexts.
_PER_CONTEXT_ATTRS = ("_custom_W", "_custom_p_old")


def loop_state(
    model: ContinualNet, optimizer: torch.optim.Optimizer, context: int, matrix: list[list[float]],
    timing: Timing, harness_attrs: set[str],
) -> dict[str, Any]:  # fmt: skip
    """Everything the loop carries into context `context + 1`: what a checkpoint saves. `harness_attrs` are the
    model's attributes before training; any other (but the per-context `_custom_W`, `_custom_p_old`) is the hook
    module's own state."""
    hook_attrs = {
        name: value
        for name, value in vars(model).items()
        if name not in harness_attrs and name not in _PER_CONTEXT_ATTRS
    }
    return {
        "context": context,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "importance": model._custom_importance,
        "anchor": model._custom_prev_params,
        "hook_attrs": hook_attrs,
        "rng": rng_state(),
        "matrix": matrix,
        "timing": dataclasses.asdict(timing),
    }


def _restore(
    model: ContinualNet, optimizer: torch.optim.Optimizer, state: dict[str, Any], timing: Timing
) -> None:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    model._custom_importance = state["importance"]
    model._custom_prev_params = state["anchor"]
    for name, value in state["hook_attrs"].items():
        setattr(model, name, value)
    set_rng_state(state["rng"])
    for name, value in state["timing"].items():
        setattr(timing, name, value)


def train_sequence(
    model: ContinualNet,
    train: list[ContextData],
    evaluation: list[ContextData],
    hooks: HookModule,
    settings: LoopSettings,
) -> list[list[float]]:
    """Train on every context in turn (docs/contract.md section 3); returns the accuracy matrix rows when asked for.

    With `settings.checkpoint` the loop's state is saved after each context but the last, and a run that finds a
    checkpoint of itself resumes after the context it saved (`settings.resumed`).
    """
    params = regularized_parameters(model)
    model._custom_importance = {}
    model._custom_prev_params = _snapshot(params)  # the anchor starts at the initial parameters
    harness_attrs = set(vars(model))  # whatever a hook module adds to the model after this is its own state
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=settings.lr, betas=(0.9, 0.999)
    )
    timing = settings.timing
    matrix: list[list[float]] = []
    n = len(train)
    device = next(model.parameters()).device
    saved = settings.checkpoint.load(device) if settings.checkpoint is not None else None
    done = 0
    if saved is not None and saved["context"] < n:
        _restore(model, optimizer, saved, timing)
        matrix, done = saved["matrix"], saved["context"]
        settings.resumed = {"after_context": done, "earlier_s": sum(saved["timing"].values())}
    for k, ctx in enumerate(train, start=1):
        if k <= done:
            continue
        t0 = time.perf_counter()
        train_context(model, ctx, hooks, optimizer, settings, k, n)
        t1 = time.perf_counter()
        timing.train_s += t1 - t0
        if k < n:
            model.train()
            model.active_units = ctx.units
            try:
                returned = hooks.estimate_importance(model, ctx, model._custom_prev_params, device)
            except MemoryError:
                raise
            except (Exception, SystemExit) as exc:
                raise hook_raised("estimate_importance", exc, hooks.path, context=k) from exc
            model.train()  # whatever mode the hook left is reset
            added = check_importance(returned, params, k)
            model._custom_importance = add_importance(model._custom_importance, added, list(params))
            model._custom_prev_params = _snapshot(params)
            timing.importance_s += time.perf_counter() - t1
        row: list[float] | None = None
        if settings.evaluate_each_context or settings.on_context_end is not None:
            t2 = time.perf_counter()
            row = [evaluate(model, evaluation[i]) for i in range(k)]
            timing.eval_s += time.perf_counter() - t2
            matrix.append(row)
        if settings.checkpoint is not None and k < n:
            settings.checkpoint.save(loop_state(model, optimizer, k, matrix, timing, harness_attrs))
        if settings.on_context_end is not None and row is not None:
            settings.on_context_end(k, row)
    return matrix


def train_joint(model: ContinualNet, train: list[ContextData], settings: LoopSettings) -> None:
    """The upper bound: all contexts' data together for K x iters steps, each example with its own units."""
    device = next(model.parameters()).device
    base = train[0].base_x  # every context indexes the same input tensor
    idx = torch.cat([c.idx for c in train])
    y = torch.cat([c.y for c in train])
    ctx_id = torch.cat([torch.full((len(c),), k, device=device) for k, c in enumerate(train)])
    perms = torch.stack([c.perm for c in train if c.perm is not None]) if train[0].perm is not None else None
    units = train[0].units
    width = None if units is None else units[1] - units[0]
    lo = None if units is None else torch.tensor([c.units[0] for c in train], device=device)  # type: ignore[index]
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=settings.lr, betas=(0.9, 0.999)
    )
    sampler = BatchSampler(len(idx), settings.batch_size, settings.seed, 0)
    model.active_units = None
    model.train()
    total = settings.iters * len(train)
    t0 = time.perf_counter()
    for step in tqdm(
        range(1, total + 1), desc=f"{settings.label} joint", leave=False, disable=not settings.progress
    ):
        rows = sampler.next().to(device)
        x = base[idx[rows]]
        if perms is not None:
            x = torch.gather(x, 1, perms[ctx_id[rows]])
        out = model.all_units(x)
        if lo is not None and width is not None:
            out = torch.gather(out, 1, lo[ctx_id[rows]].unsqueeze(1) + torch.arange(width, device=device))
        loss = F.cross_entropy(out, y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % CHECK_EVERY == 0 and not bool(torch.isfinite(loss)):
            raise DivergenceError(1, step)
    settings.timing.train_s += time.perf_counter() - t0
