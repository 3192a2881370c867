"""Blocks: a write ROI (what a task produces) and a read ROI (what it needs), tiled over a
``total_roi``, and mirrored reads for read ROIs that leave the volume.

Edge behaviour along one axis (``total_roi`` of 10 voxels, write shape 4, context 2)::

    voxel     -2 -1 | 0  1  2  3  4  5  6  7  8  9 | 10 11 12 13
    block 0   r  r  | W  W  W  W  r  r             |
    block 1         |       r  r  W  W  W  W  r  r |
    block 2         |                   r  r  W  W | c  c  r  r
              ^^^^^ mirrored                         ^^^^^^^^^^^ mirrored
    W: write ROI   r: read-only context   c: computed then cropped (write ROI clipped to the volume)

Write ROIs start on ``total_roi.begin + k * write_shape`` and never overlap, so a task owns
its write ROI's output chunks when chunks equal the write shape. Every block has the same
read shape (the last one included), so a network sees one input shape and tiles whose read
ROIs start on the same lattice stitch exactly. Outside the volume the input is mirrored
without repeating the edge voxel (numpy's ``"reflect"``): voxel ``-1`` reads voxel ``1``,
voxel ``N`` reads voxel ``N - 2``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from psc_seg.engine.roi import Roi, _triple


@dataclass(frozen=True)
class Block:
    """One task: ``block_id`` (its index in C order over the grid), ``read_roi`` and
    ``write_roi`` (voxels; the write ROI is clipped to the total ROI)."""

    block_id: int
    read_roi: Roi
    write_roi: Roi


def grid_shape(total_roi: Roi, write_shape: Sequence[int]) -> tuple[int, ...]:
    """Number of blocks per axis."""
    return tuple(-(-s // w) for s, w in zip(total_roi.shape, _triple(write_shape, "write_shape")))


def block_grid(
    total_roi: Roi,
    *,
    write_shape: int | Sequence[int],
    context: int | Sequence[int] = 0,
    read_shape: int | Sequence[int] | None = None,
) -> list[Block]:
    """Blocks tiling ``total_roi`` (see the module docstring).

    Args:
        total_roi: the region to produce, in voxels.
        write_shape: ``(z, y, x)`` write ROI shape (the last block per axis is clipped).
        context: voxels of input needed before the write ROI's begin, per axis.
        read_shape: the read ROI shape; default ``write_shape + 2 * context``. A network that
            needs a larger input (the smallest valid one) passes it here; the read ROI always
            starts at ``write begin - context``.
    """
    write_shape = _triple(write_shape, "write_shape")
    if min(write_shape) < 1:
        raise ValueError(f"write_shape must be positive, got {write_shape}")
    context = _triple(context, "context")
    read_shape = (tuple(w + 2 * c for w, c in zip(write_shape, context)) if read_shape is None
                  else _triple(read_shape, "read_shape"))
    blocks = []
    counts = grid_shape(total_roi, write_shape)
    for block_id, index in enumerate(itertools.product(*(range(n) for n in counts))):
        begin = tuple(t + i * w for t, i, w in zip(total_roi.begin, index, write_shape))
        write = Roi(begin, write_shape).intersect(total_roi)
        read = Roi(tuple(b - c for b, c in zip(begin, context)), read_shape)
        blocks.append(Block(block_id, read, write))
    return blocks


def mirror_indices(begin: int, end: int, size: int) -> np.ndarray:
    """Indices into ``[0, size)`` for positions ``begin..end-1``, mirrored at both edges without
    repeating the edge voxel (period ``2 * size - 2``)."""
    positions = np.arange(begin, end)
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * size - 2
    folded = np.mod(positions, period)
    return np.where(folded < size, folded, period - folded)


def read_mirrored(volume, roi: Roi) -> np.ndarray:
    """``volume``'s values in ``roi`` (``(z, y, x)`` voxels), mirrored where ``roi`` leaves the
    volume. Returns ``(Z, Y, X)`` or ``(C, Z, Y, X)`` like ``volume.read``. Reads only the
    bounding box of the source voxels needed."""
    shape = volume.spatial_shape
    inside = all(b >= 0 and e <= s for b, e, s in zip(roi.begin, roi.end, shape))
    if inside:
        return volume.read(roi.to_slices())
    indices = [mirror_indices(b, e, s) for b, e, s in zip(roi.begin, roi.end, shape)]
    source = tuple(slice(int(i.min()), int(i.max()) + 1) for i in indices)
    data = volume.read(source)
    lead = data.ndim - 3
    for axis, (idx, src) in enumerate(zip(indices, source)):
        local = idx - src.start
        if not (local.size == data.shape[lead + axis] and np.array_equal(local, np.arange(local.size))):
            data = np.take(data, local, axis=lead + axis)
    return data


def iter_batches(blocks: Sequence[Block], batch_size: int) -> Iterator[list[Block]]:
    """Consecutive groups of at most ``batch_size`` blocks."""
    for i in range(0, len(blocks), batch_size):
        yield list(blocks[i:i + batch_size])
