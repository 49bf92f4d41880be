"""Resumable runs: the loop's whole state at the end of each context, so that a killed run resumes at the next.

A full Permuted-MNIST run is 10 contexts of about 3 minutes each on one CPU thread; without this, a process
killed in context 9 (a session's end, a machine taken back) loses all of it. With it, it loses at most one
context. The state is what the frozen loop carries across contexts (HARNESS.md section 3): the parameters, the
one Adam optimizer, the carried importance, the anchor, the attributes the hook module put on the model (its
own state, such as a reference total or a learnt penalty factor), the random number generators, the accuracy
rows and the time spent. A hook module's module-level variables are not part of it: a module that keeps state
there (the contract allows it) resumes without it, which is why only the evaluation cache, whose modules are
generated and keep their state on the model, asks for checkpoints. A resumed run is bit for bit the run
without the interruption on the same machine (tests/test_checkpoint.py).
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


@dataclass(frozen=True)
class Checkpoint:
    """Where a run keeps its state between contexts, and what the run is.

    `identity` names the run (module digest, configuration, harness version): a checkpoint written by any other
    run is never resumed, whatever its file is called.
    """

    path: Path
    identity: dict[str, Any]

    def save(self, state: dict[str, Any]) -> None:
        """Replace the checkpoint by `state` atomically (a reader sees the old one or the new one)."""
        with atomic_file(self.path) as handle:
            torch.save({"format": FORMAT, "identity": self.identity, **state}, handle)

    def load(self, device: torch.device) -> dict[str, Any] | None:
        """The saved state (said on stderr), or None: no checkpoint, or one that is unreadable or of another run
        (said on stderr, and the run starts from its first context)."""
        if not self.path.is_file():
            return None
        try:
            # Written by `save` above (it holds the hook's own attributes, which may be any picklable value).
            state = torch.load(self.path, map_location=device, weights_only=False)
        except Exception as exc:  # a truncated or foreign file: start over, never stop the run
            print(f"checkpoint {self.path} is unreadable ({exc}); starting from context 1", file=sys.stderr)
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
