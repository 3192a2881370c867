"""Segmentation metrics from one contingency table: VI, adapted Rand error, Dice.

Conventions (DESIGN.md section 1): ground-truth 0 is background / unlabelled and ignored by
the instance metrics; prediction 0 is counted like any other id. With ``n_ij`` the number of
voxels with ground-truth id ``i`` and predicted id ``j`` (ignored voxels left out),
``a_i = sum_j n_ij``, ``b_j = sum_i n_ij``, ``N = sum_ij n_ij`` and ``p = n / N``:

- VI split (false splits, over-segmentation) = H(pred | gt) = -sum_ij p_ij log2(p_ij / p_i);
- VI merge (false merges, under-segmentation) = H(gt | pred) = -sum_ij p_ij log2(p_ij / p_j);
- VI = split + merge, in bits. These equal ``skimage.metrics.variation_of_information(gt,
  pred, ignore_labels=[0])``, which returns ``(split, merge)`` in that order;
- adapted Rand error (SNEMI3D / CREMI) = 1 - F, F the harmonic mean of the Rand precision
  ``P = (sum n_ij^2 - N) / (sum b_j^2 - N)`` and recall ``R = (sum n_ij^2 - N) /
  (sum a_i^2 - N)`` (pairs of distinct voxels), equal to ``skimage.metrics.adapted_rand_error``;
- Dice of class k (semantic labels, background 0 excluded) = 2 n_kk / (a_k + b_k).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from psc_seg.evaluate.table import ContingencyTable, contingency_table

CONVENTIONS = {
    "voi_units": "bits (log2)",
    "voi_split": "H(pred | gt): false splits",
    "voi_merge": "H(gt | pred): false merges",
    "voi": "voi_split + voi_merge",
    "arand": "adapted Rand error, 1 - F-score of Rand precision and recall over pairs of voxels (SNEMI3D)",
    "ignored": "ground-truth label 0 (and voxels outside the mask); prediction label 0 is counted",
    "n_segments": "distinct non-zero prediction ids in the scored region",
    "dice": "2|G_k & P_k| / (|G_k| + |P_k|) per class k, background 0 excluded; mean_dice over classes present",
    "equals": "skimage.metrics.variation_of_information / adapted_rand_error(gt, pred, ignore_labels=[0])",
}


def _table(gt, pred, table: ContingencyTable | None, ignore_labels: Iterable[int]) -> ContingencyTable:
    if table is None:
        if gt is None or pred is None:
            raise ValueError("give either both label arrays or a contingency table")
        table = contingency_table(gt, pred)
    table = table.drop_gt(ignore_labels)
    if table.counts.size == 0:
        raise ValueError("the ground truth has no labelled voxels to score (all ignored)")
    return table


def _sum_xlogx(counts: np.ndarray) -> float:
    counts = counts.astype(np.float64)
    return float(np.sum(counts * np.log2(counts)))


def variation_of_information(
    gt: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    *,
    table: ContingencyTable | None = None,
    ignore_labels: Iterable[int] = (0,),
) -> tuple[float, float]:
    """Variation of information, split into its two conditional entropies.

    Args:
        gt, pred: label arrays of one shape (unused if ``table`` is given).
        table: a precomputed :class:`ContingencyTable` (ground truth first).
        ignore_labels: ground-truth ids left out of the score.

    Returns:
        ``(voi_split, voi_merge)`` in bits: H(pred | gt) (false splits) and H(gt | pred)
        (false merges). Their sum is the VI.
    """
    table = _table(gt, pred, table, ignore_labels)
    n = float(table.counts.sum())
    joint = _sum_xlogx(table.counts)
    gt_part = _sum_xlogx(table.gt_sizes()[1])
    pred_part = _sum_xlogx(table.pred_sizes()[1])
    # H(pred | gt) = H(gt, pred) - H(gt), with H(X) = log2 N - sum x log2 x / N
    split = (gt_part - joint) / n
    merge = (pred_part - joint) / n
    return max(split, 0.0), max(merge, 0.0)


def adapted_rand_error(
    gt: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    *,
    table: ContingencyTable | None = None,
    ignore_labels: Iterable[int] = (0,),
) -> tuple[float, float, float]:
    """Adapted Rand error of SNEMI3D / CREMI (pairs of distinct voxels).

    Args:
        gt, pred: label arrays of one shape (unused if ``table`` is given).
        table: a precomputed :class:`ContingencyTable` (ground truth first).
        ignore_labels: ground-truth ids left out of the score.

    Returns:
        ``(arand, precision, recall)``: precision = pairs together in both / pairs together
        in pred, recall = pairs together in both / pairs together in gt, arand = 1 - their
        harmonic mean. With no pair together anywhere, both labellings agree: ``(0, 1, 1)``.
    """
    table = _table(gt, pred, table, ignore_labels)
    counts = table.counts.astype(np.float64)
    n = counts.sum()
    together_both = float(counts @ counts - n)
    gt_sizes = table.gt_sizes()[1].astype(np.float64)
    pred_sizes = table.pred_sizes()[1].astype(np.float64)
    together_gt = float(gt_sizes @ gt_sizes - n)
    together_pred = float(pred_sizes @ pred_sizes - n)
    precision = together_both / together_pred if together_pred else 1.0
    recall = together_both / together_gt if together_gt else 1.0
    denominator = 0.5 * (together_gt + together_pred)
    arand = 1.0 - together_both / denominator if denominator else 0.0
    return arand, precision, recall


def instance_scores(table: ContingencyTable, *, ignore_labels: Iterable[int] = (0,)) -> dict[str, float]:
    """All instance metrics of one table.

    Returns:
        ``{"voi_split", "voi_merge", "voi", "arand", "arand_precision", "arand_recall",
        "n_segments"}`` (see the module docstring for the definitions).
    """
    ignore_labels = tuple(ignore_labels)
    split, merge = variation_of_information(table=table, ignore_labels=ignore_labels)
    arand, precision, recall = adapted_rand_error(table=table, ignore_labels=ignore_labels)
    pred_ids = table.pred_sizes()[0]
    return {
        "voi_split": split,
        "voi_merge": merge,
        "voi": split + merge,
        "arand": arand,
        "arand_precision": precision,
        "arand_recall": recall,
        "n_segments": int(np.count_nonzero(pred_ids)),
    }


def dice_scores(
    gt: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    *,
    table: ContingencyTable | None = None,
    background: int = 0,
) -> tuple[dict[int, float], float]:
    """Dice of each class of a semantic labelling.

    Args:
        gt, pred: class-label arrays of one shape (unused if ``table`` is given).
        table: a precomputed :class:`ContingencyTable` (ground truth first).
        background: the class left out.

    Returns:
        ``(dice, mean_dice)``: ``dice[k] = 2 n_kk / (a_k + b_k)`` for every class k != background
        present in gt or pred, and the mean over those classes (nan if there is none).
    """
    if table is None:
        if gt is None or pred is None:
            raise ValueError("give either both label arrays or a contingency table")
        table = contingency_table(gt, pred)
    gt_ids, gt_sizes = table.gt_sizes()
    pred_ids, pred_sizes = table.pred_sizes()
    agree = table.gt_ids == table.pred_ids
    hit_ids, hits = table.gt_ids[agree], table.counts[agree]
    classes = np.union1d(gt_ids, pred_ids)
    classes = classes[classes != background]

    def lookup(ids: np.ndarray, values: np.ndarray, k: np.uint64) -> int:
        at = np.searchsorted(ids, k)
        return int(values[at]) if at < ids.size and ids[at] == k else 0

    dice = {}
    for k in classes:
        size = lookup(gt_ids, gt_sizes, k) + lookup(pred_ids, pred_sizes, k)
        dice[int(k)] = 2.0 * lookup(hit_ids, hits, k) / size
    mean = float(np.mean(list(dice.values()))) if dice else float("nan")
    return dice, mean
