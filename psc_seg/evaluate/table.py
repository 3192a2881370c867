"""The sparse contingency table of two labellings, built without dense arrays.

A table lists each pair ``(gt_id, pred_id)`` that occurs, with its number of voxels. Ids are
kept as ``uint64`` values, so ids up to 2**63 and beyond cost nothing more than small ones.
Tables of disjoint parts of a volume add up (:meth:`ContingencyTable.add`), which is how
volumes larger than memory are scored block by block.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


def _as_label_array(name: str, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"{name} must hold integer labels, got dtype {labels.dtype}")
    return labels


def _run_starts(*arrays: np.ndarray) -> np.ndarray:
    """Indices where a run of equal entries (equal in every one of the same-length ``arrays``,
    at least one entry long) begins."""
    new = np.empty(arrays[0].size, dtype=bool)
    new[0] = True
    np.not_equal(arrays[0][1:], arrays[0][:-1], out=new[1:])
    for a in arrays[1:]:
        new[1:] |= a[1:] != a[:-1]
    return np.flatnonzero(new)


def _sum_duplicate_pairs(
    gt_ids: np.ndarray, pred_ids: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort pairs by (gt_id, pred_id) and add the counts of equal pairs."""
    if gt_ids.size == 0:
        return gt_ids, pred_ids, counts
    order = np.lexsort((pred_ids, gt_ids))
    gt_ids, pred_ids, counts = gt_ids[order], pred_ids[order], counts[order]
    starts = _run_starts(gt_ids, pred_ids)
    return gt_ids[starts], pred_ids[starts], np.add.reduceat(counts, starts)


@dataclass(frozen=True)
class ContingencyTable:
    """Voxel counts of each ``(gt_id, pred_id)`` pair that occurs.

    Attributes:
        gt_ids: ``(K,)`` uint64 ground-truth ids, sorted (then by ``pred_ids``), one per pair.
        pred_ids: ``(K,)`` uint64 prediction ids.
        counts: ``(K,)`` int64 number of voxels with that pair, all > 0.

    Nothing is ignored here (ground-truth 0 included): the metrics choose what to ignore.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    counts: np.ndarray

    @classmethod
    def empty(cls) -> ContingencyTable:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64))

    @property
    def n_voxels(self) -> int:
        return int(self.counts.sum())

    def add(self, *others: ContingencyTable) -> ContingencyTable:
        """The table of the union of the (disjoint) regions these tables were counted on."""
        return sum_tables((self, *others))

    def drop_gt(self, ignore_labels: Iterable[int]) -> ContingencyTable:
        """The table without the pairs whose ground-truth id is in ``ignore_labels``."""
        ignore = np.asarray(list(ignore_labels), dtype=np.uint64)
        if ignore.size == 0:
            return self
        keep = ~np.isin(self.gt_ids, ignore)
        return ContingencyTable(self.gt_ids[keep], self.pred_ids[keep], self.counts[keep])

    def gt_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, sizes)`` of the ground-truth segments: the row sums."""
        return _marginal(self.gt_ids, self.counts, is_sorted=True)

    def pred_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, sizes)`` of the predicted segments: the column sums."""
        return _marginal(self.pred_ids, self.counts, is_sorted=False)


def _marginal(ids: np.ndarray, counts: np.ndarray, *, is_sorted: bool) -> tuple[np.ndarray, np.ndarray]:
    if ids.size == 0:
        return ids, counts
    if not is_sorted:
        order = np.argsort(ids, kind="stable")
        ids, counts = ids[order], counts[order]
    starts = _run_starts(ids)
    return ids[starts], np.add.reduceat(counts, starts)


def sum_tables(tables: Iterable[ContingencyTable]) -> ContingencyTable:
    """One table from tables counted on disjoint regions (blocks) of the same volumes."""
    tables = list(tables)
    if not tables:
        return ContingencyTable.empty()
    if len(tables) == 1:
        return tables[0]
    return ContingencyTable(
        *_sum_duplicate_pairs(
            np.concatenate([t.gt_ids for t in tables]),
            np.concatenate([t.pred_ids for t in tables]),
            np.concatenate([t.counts for t in tables]),
        )
    )


def contingency_table(
    gt: np.ndarray, pred: np.ndarray, *, mask: np.ndarray | None = None
) -> ContingencyTable:
    """Count the voxels of each ``(gt_id, pred_id)`` pair of two labellings.

    Labelled volumes are piecewise constant, so the voxels are first cut into runs along the
    flattened array where neither label changes; only the runs are sorted, never a dense
    table of all ids.

    Args:
        gt: ground-truth labels, any shape, integer dtype.
        pred: predicted labels, the shape of ``gt``, integer dtype.
        mask: optional boolean array of that shape; only voxels where it is true count.

    Returns:
        The :class:`ContingencyTable` (ground-truth 0 included).
    """
    gt = _as_label_array("gt", gt)
    pred = _as_label_array("pred", pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred must have the same shape, got {gt.shape} and {pred.shape}")
    gt_flat, pred_flat = gt.reshape(-1), pred.reshape(-1)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != gt.shape:
            raise ValueError(f"mask must have the shape of the labels {gt.shape}, got {mask.shape}")
        keep = mask.reshape(-1)
        gt_flat, pred_flat = gt_flat[keep], pred_flat[keep]
    n = gt_flat.size
    if n == 0:
        return ContingencyTable.empty()
    starts = _run_starts(gt_flat, pred_flat)
    lengths = np.diff(starts, append=n).astype(np.int64)
    return ContingencyTable(
        *_sum_duplicate_pairs(
            gt_flat[starts].astype(np.uint64), pred_flat[starts].astype(np.uint64), lengths
        )
    )
