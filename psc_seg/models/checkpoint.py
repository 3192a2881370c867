"""Checkpoints: one file that rebuilds a model with nothing else.

A checkpoint is a ``torch.save`` of a plain dict::

    {"format": "psc-seg-checkpoint", "format_version": 1, "psc_seg_version": "...",
     "model": {"name": "unet", "kwargs": {...}}, "state_dict": {...}, "metadata": {...}}

``metadata`` is free (the training config, normalisation, task, iteration...). It holds only
plain Python values, so files load with ``torch.load(weights_only=True)``. Writes are atomic:
a temporary file in the same folder, then a rename.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from psc_seg import __version__
from psc_seg.errors import UserError
from psc_seg.files import atomic_path
from psc_seg.models.registry import build_model

FORMAT = "psc-seg-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode) and what was stored with it."""

    model: nn.Module
    name: str
    kwargs: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    psc_seg_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, *, metadata: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (built by :func:`build_model`) to ``path`` atomically.

    ``metadata``: plain values kept with the model (training config, normalisation, task).
    ``extra``: further plain/tensor entries (optimizer state, RNG state) for resuming.
    """
    config = getattr(model, "build_config", None)
    if config is None:
        raise ValueError("save_checkpoint: model was not built by psc_seg.models.build_model (no build_config)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "psc_seg_version": __version__,
        "model": {"name": config["name"], "kwargs": config["kwargs"]},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": metadata or {},
        "extra": extra or {},
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def read_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """The raw checkpoint dict; UserError if the file is missing, corrupt or not ours.

    ``mmap``: map the tensors from the file instead of reading them (for the metadata alone).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist; give the path of a .pt file written by psc-seg")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises many types for a damaged file
        # torch's own message talks about weights_only defaults, which misleads here
        raise UserError(
            f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}): it is corrupt, truncated or not a "
            "psc-seg checkpoint; write one with `psc-seg train` or `psc-seg models init`"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(
            f"{str(path)!r} is not a psc-seg checkpoint (no '{FORMAT}' marker); "
            "write one with `psc-seg train` or `psc-seg models init`"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(
            f"checkpoint {str(path)!r} has format version {payload['format_version']}, newer than this "
            f"psc-seg ({__version__}) reads; upgrade psc-seg"
        )
    return payload


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` of the checkpoint at ``path``, without reading its weights."""
    return dict(read_checkpoint(path, mmap=True).get("metadata", {}))


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state_dict)``; weights that do not fit are a one-line ValueError
    that counts the missing, unexpected and reshaped entries and names the first of each."""
    own = model.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    reshaped = [f"{key} {tuple(state_dict[key].shape)} for {tuple(own[key].shape)}" for key in own
                if key in state_dict and tuple(state_dict[key].shape) != tuple(own[key].shape)]
    wrong = [f"{len(keys)} {what} (first {keys[0]})" for what, keys in
             (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)) if keys]
    if wrong:
        raise ValueError(f"weights do not fit the model: {'; '.join(wrong)}")
    model.load_state_dict(state_dict)


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model stored at ``path`` (in eval mode, on ``map_location``)."""
    payload = read_checkpoint(path)
    spec = payload["model"]
    try:
        model = build_model(spec["name"], **spec["kwargs"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"checkpoint {str(path)!r} does not match its model description: {exc}") from exc
    try:
        load_weights(model, payload["state_dict"])
    except (ValueError, RuntimeError, KeyError) as exc:
        written = payload.get("psc_seg_version") or "an unknown version"
        raise UserError(
            f"checkpoint {str(path)!r} does not fit the {spec['name']} its description builds in psc-seg "
            f"{__version__} ({exc}); it was written by psc-seg {written}, and models whose layout changed since "
            "(a DenseNet with psc(m,n), n >= 2, now groups n dense layers per block) must be trained again"
        ) from exc
    model.to(map_location).eval()
    return Checkpoint(
        model=model,
        name=spec["name"],
        kwargs=spec["kwargs"],
        metadata=payload.get("metadata", {}),
        psc_seg_version=payload.get("psc_seg_version", ""),
        extra=payload.get("extra", {}),
    )
