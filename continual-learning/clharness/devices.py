"""The torch device a run asks for: `auto`, `cpu` or `cuda` (also `cuda:N`), checked once for everyone."""

from __future__ import annotations

import torch

from clharness.errors import HarnessError


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` -> CUDA when present, else CPU; CUDA on a machine without it, or another kind, is a HarnessError."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise HarnessError(f"unknown device {device!r} (auto, cpu or cuda)")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    return resolved
