"""Resumable runs: the loop's whole state at the end of each context, so that a killed run resumes at the next.

A full Permuted-MNIST run is 10 contexts of about 3 minutes each on one CPU thread; without this, a process
killed in context 9 (a session's end, a machine taken back) loses all of it. With it, it loses at most one
context. The state is what the frozen loop carries across contexts (docs/contract.md section 3): the parameters, the
one Adam optimizer, the carried importance, the anchor, the attributes the hook module put on the model (its
own state, such as a reference total or a learnt penalty factor), the random number generators, the accuracy
rows and the time spent. A hook module's module-level variables are not part of it: a module that keeps state
there (the contract allows it) resumes without it, which is why only the evaluation cache, whose modules are
generated and keep their state on the model, asks for checkpoints. A resumed run is bit for bit the run
without the interruption on the same machine (tests/test_checkpoint.py).

Nothing in a checkpoint runs: it holds only tensors, numbers, strings and containers of them, and is loaded with
`torch.load(weights_only=True)`, so a crafted file (a pickle that would call something) is refused like a broken
one and the run starts over. A hook module that keeps anything else on the model (an object of its own class) is
told so once on stderr and its run is not checkpointed: it runs to its end as it would without a checkpoint.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clharness.atomic import atomic_file

FORMAT = 1

# What a checkpoint may hold (all of it loads under `weights_only=True`), besides tensors and the containers.
_PLAIN = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def unstorable(value: Any, where: str = "state") -> str | None:
    """Where in `value` something other than tensors, numbers, strings and containers of them lies (with its
    type), or None when all of it is."""
    if isinstance(value, (torch.Tensor, *_PLAIN)):
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unstorable(key, f"{where} key") or unstorable(item, f"{where}[{key!r}]")
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = unstorable(item, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    return f"{where} is a {type(value).__qualname__}"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# The checkpoints already told of an unstorable state (one line per run, not one per context).
_told: set[Path] = set()


@dataclass(frozen=True)
class Checkpoint:
    """Where a run keeps its state between contexts, and what the run is.

    `identity` names the run (module digest, configuration, harness version): a checkpoint written by any other
    run is never resumed, whatever its file is called.
    """

    path: Path
    identity: dict[str, Any]

    def save(self, state: dict[str, Any]) -> None:
        """Replace the checkpoint by `state` atomically (a reader sees the old one or the new one).

        A state holding anything `load` would refuse is not written (said once on stderr; any older checkpoint
        of the run is removed): the run goes on, and an interrupted one starts over.
        """
        full = {"format": FORMAT, "identity": self.identity, **state}
        found = next((f for key, value in full.items() if (f := unstorable(value, key)) is not None), None)
        if found is not None:
            if self.path not in _told:
                print(
                    f"checkpoint {self.path} not written: {found}, and a checkpoint holds only tensors, numbers,"
                    " strings and containers of them; this run cannot resume",
                    file=sys.stderr,
                )
                _told.add(self.path)
            self.path.unlink(missing_ok=True)
            return
        with atomic_file(self.path) as handle:
            torch.save(full, handle)

    def load(self, device: torch.device) -> dict[str, Any] | None:
        """The saved state (said on stderr), or None: no checkpoint, or one that is unreadable or of another run
        (said on stderr, and the run starts from its first context)."""
        if not self.path.is_file():
            return None
        try:
            # Tensors, numbers, strings and containers only: a pickle that would call anything is refused here.
            state = torch.load(self.path, map_location=device, weights_only=True)
        except Exception as exc:  # a truncated, foreign or crafted file: start over, never stop the run
            print(
                f"checkpoint {self.path} is unreadable or holds more than tensors, numbers and strings"
                f" ({type(exc).__name__}: {_first_line(exc)}); starting from context 1",
                file=sys.stderr,
            )
            return None
        if (
            not isinstance(state, dict)
            or state.get("format") != FORMAT
            or state.get("identity") != self.identity
        ):
            print(f"checkpoint {self.path} is of another run; starting from context 1", file=sys.stderr)
            return None
        # One line, so that a log shows which runs went on from where they stopped.
        print(f"checkpoint {self.path}: resuming after context {state['context']}", file=sys.stderr)
        return state


def rng_state() -> dict[str, Any]:
    """Every random number generator a hook module may draw from (torch's, CUDA's, the standard library's)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "random": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    random.setstate(state["random"])
