"""The ``--device`` option: one rule for predict and train."""

from __future__ import annotations

import torch

from psc_seg.errors import UserError


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch device; UserError for another name or when
    CUDA is asked for and torch has no CUDA device."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"{{device}} must be cpu or cuda, got {device!r}", options=("device",))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{{device}} {device}: CUDA is not available on this machine (no CUDA device is available "
                        "to torch); use {device} cpu", options=("device",))
    return torch.device(device)
