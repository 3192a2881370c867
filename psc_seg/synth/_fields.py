"""Smooth random fields shared by the EM and MRI generators."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from psc_seg.errors import UserError


def smooth_field(shape: Sequence[int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field of ``shape`` with zero mean and unit standard deviation.

    White noise on a coarse grid (one node per ``scale`` voxels) interpolated to every voxel
    with Gaussian weights, one small matrix product per axis, so the field varies over about
    ``scale`` voxels and costs a few passes over the output whatever ``scale`` is.
    Returns float32 of ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    step = max(float(scale), 1.0)
    coarse_shape = tuple(int(np.ceil(n / step)) + 3 for n in shape)
    field = rng.standard_normal(coarse_shape).astype(np.float32)
    for axis, (n, c) in enumerate(zip(shape, coarse_shape)):
        # node j sits at voxel (j - 1.5) * step + offset so the grid overhangs both ends
        nodes = (np.arange(c) - 1.5) * step - (c - 3) * step / 2 + (n - 1) / 2
        weights = np.exp(-0.5 * ((np.arange(n)[:, None] - nodes[None, :]) / (0.6 * step)) ** 2).astype(np.float32)
        field = np.moveaxis(np.tensordot(weights, np.moveaxis(field, axis, 0), axes=(1, 0)), 0, axis)
    field -= field.mean()
    std = float(field.std())
    return np.ascontiguousarray(field / std if std > 0 else field, dtype=np.float32)


def check_shape(shape: Sequence[int], *, minimum: int, name: str) -> tuple[int, int, int]:
    """``shape`` as a 3-tuple of ints >= ``minimum``; UserError (a ValueError) naming ``name`` otherwise."""
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise UserError(f"{name}: shape must be three integers (z, y, x), got {shape!r}") from None
    if len(dims) != 3 or any(d < minimum for d in dims):
        raise UserError(f"{name}: shape must be three integers (z, y, x) each >= {minimum}, got {tuple(shape)}")
    return dims  # type: ignore[return-value]
