"""Contingency tables of volumes larger than memory, counted block by block."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from psc_seg.evaluate.table import ContingencyTable, contingency_table, sum_tables


def slab_depth(shape: Sequence[int], *, max_voxels: int = 2**25) -> int:
    """The number of z sections per block so that one block holds at most ``max_voxels``."""
    section = int(np.prod(shape[1:], dtype=np.int64)) or 1
    return int(max(1, min(shape[0], max_voxels // section)))


def contingency_tables_blockwise(
    gt,
    preds: Sequence,
    *,
    mask=None,
    max_voxels: int = 2**25,
    progress: bool = False,
) -> list[ContingencyTable]:
    """One contingency table per prediction, read in z slabs of at most ``max_voxels`` voxels.

    Args:
        gt: ``(Z, Y, X)`` array-like with numpy slicing (numpy, zarr, h5py, a psc-seg Volume).
        preds: array-likes of the shape of ``gt``.
        mask: optional array-like of that shape; voxels where it is 0 are left out.
        max_voxels: the most voxels of one volume held in memory at once.
        progress: show a progress bar over the slabs.

    Returns:
        The tables, in the order of ``preds``; they equal the tables of the whole volumes.
    """
    shape = tuple(gt.shape)
    depth = slab_depth(shape, max_voxels=max_voxels)
    tables: list[list[ContingencyTable]] = [[] for _ in preds]
    starts = range(0, shape[0], depth)
    for z in tqdm(starts, desc="scoring", unit="slab", disable=not progress):
        window = slice(z, min(z + depth, shape[0]))
        gt_slab = np.asarray(gt[window])
        mask_slab = None if mask is None else np.asarray(mask[window]).astype(bool)
        for i, pred in enumerate(preds):
            tables[i].append(contingency_table(gt_slab, np.asarray(pred[window]), mask=mask_slab))
            # fold as we go so the lists stay short for many slabs
            if len(tables[i]) >= 16:
                tables[i] = [sum_tables(tables[i])]
    return [sum_tables(t) for t in tables]
