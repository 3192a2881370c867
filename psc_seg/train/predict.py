"""Prediction of a whole (small) validation volume in memory, tile by tile."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from psc_seg.train.config import TrainConfig
from psc_seg.train.data import LabelledVolume, read_raw


def predict_in_memory(model: nn.Module, volume: LabelledVolume, *, device: torch.device, config: TrainConfig) -> np.ndarray:
    """``(C, Z, Y, X)`` float32 network output over ``volume`` (affinities or logits).

    Tiles of output ``validation.block_shape`` (default the training patch) read their input
    with the model's context, mirrored outside the volume; the last tile of an axis is moved
    back to end at the volume's end."""
    shape = volume.shape
    block = tuple(config.validation.block_shape or config.train.patch_shape)
    if model.padding == "valid":
        block = model.valid_output_shape(block)
        in_shape = model.valid_input_shape(block)
    else:
        halo = model.context
        in_shape = model.valid_output_shape([b + 2 * h for b, h in zip(block, halo)])
    crop = [(i - o) // 2 for i, o in zip(in_shape, block)]
    out = np.zeros((model.out_channels, *shape), dtype=np.float32)
    starts = [sorted({min(s, max(n - b, 0)) for s in range(0, n, b)}) for n, b in zip(shape, block)]
    model.eval()
    with torch.no_grad():
        for start in itertools.product(*starts):
            raw = read_raw(volume, [s - c for s, c in zip(start, crop)], in_shape)
            x = torch.from_numpy(np.ascontiguousarray(raw.reshape((-1, *in_shape)))[None]).to(device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                y = model(x)[0].float().cpu().numpy()
            y = y[(slice(None), *[slice(c, c + b) for c, b in zip(crop, block)])] if model.padding != "valid" else y
            size = [min(b, n - s) for b, n, s in zip(block, shape, start)]
            out[(slice(None), *[slice(s, s + z) for s, z in zip(start, size)])] = y[
                (slice(None), *[slice(0, z) for z in size])]
    return out
