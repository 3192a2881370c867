"""Fast ``np.unique(labels, return_inverse=True, return_counts=True)`` for label volumes.

``np.unique`` sorts every voxel (O(N log N) on uint64). Label volumes are cheaper:

- small ids (at most one per voxel, as fragments 1..n are): a lookup table indexed by id,
  filled from ``np.bincount`` (O(N), no sort);
- large ids (globally unique block ids, ``block_id * stride + k``): only the first voxel of
  each run of equal values along the flattened array is sorted; labels are spatially
  coherent, so there are far fewer runs than voxels.
"""

from __future__ import annotations

import numpy as np


def unique_inverse(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sorted unique values of an integer label array, with inverse and counts.

    Equal to ``np.unique(labels, return_inverse=True, return_counts=True)`` (the inverse in
    the shape of ``labels``), several times faster.

    Args:
        labels: integer array of any shape (uint64 fragments or segments).

    Returns:
        ``(ids, inverse, counts)``: ``ids`` sorted unique values (dtype of ``labels``);
        ``inverse`` intp of the shape of ``labels`` with ``ids[inverse] == labels``;
        ``counts`` int64 voxels of each id.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui":
        raise TypeError(f"labels must be an integer array, got {labels.dtype}")
    flat = labels.reshape(-1)
    if flat.size == 0:
        return np.zeros(0, labels.dtype), np.zeros(labels.shape, np.intp), np.zeros(0, np.int64)
    largest = int(flat.max())
    if largest <= flat.size and (labels.dtype.kind == "u" or flat.min() >= 0):
        # ids <= N < 2**63: a uint64 array reads as int64 unchanged, without a copy
        index = flat.view(np.int64) if flat.dtype.itemsize == 8 else flat.astype(np.intp)
        counts = np.bincount(index, minlength=largest + 1)
        ids = np.flatnonzero(counts)
        lookup = np.zeros(largest + 1, dtype=np.intp)
        lookup[ids] = np.arange(ids.size)
        inverse = lookup[index]
        return ids.astype(labels.dtype), inverse.reshape(labels.shape), counts[ids].astype(np.int64)
    starts = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    ids, run_inverse = np.unique(flat[starts], return_inverse=True)
    lengths = np.diff(np.append(starts, flat.size))
    inverse = np.repeat(run_inverse.reshape(-1), lengths)
    counts = np.bincount(run_inverse.reshape(-1), weights=lengths, minlength=ids.size).astype(np.int64)
    return ids, inverse.reshape(labels.shape), counts


def unique_pairs(uv: np.ndarray) -> np.ndarray:
    """The distinct rows of ``(E, 2)`` pairs, sorted (as ``np.unique(uv, axis=0)``, faster)."""
    uv = np.asarray(uv).reshape(-1, 2)
    if len(uv) == 0:
        return uv
    uv = uv[np.lexsort((uv[:, 1], uv[:, 0]))]
    first = np.concatenate(([True], (uv[1:] != uv[:-1]).any(axis=1)))
    return uv[first]

