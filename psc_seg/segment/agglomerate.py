"""waterz agglomeration of fragments: segmentations per threshold, and scored edges."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from psc_seg.segment.fragments import as_affinities
from psc_seg.segment.quiet import quiet_stdout

SCORING = {
    "hist_quant_50": "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256>>",
    "hist_quant_75": "OneMinus<HistogramQuantileAffinity<RegionGraphType, 75, ScoreValue, 256>>",
    "mean": "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>",
}


def scoring_function(name: str) -> str:
    """The waterz C++ scoring type of a scoring name (``hist_quant_50``, ``hist_quant_75``, ``mean``)."""
    try:
        return SCORING[name]
    except KeyError:
        raise ValueError(f"unknown scoring {name!r}; use one of {', '.join(SCORING)}") from None


def compact_ids(fragments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fragments renumbered 0..n (0 stays 0), and the original id of each new one.

    waterz sizes its region graph by the largest id, so globally unique (large) ids must be
    made small before it sees them.

    Returns:
        ``(compact, ids)``: ``compact`` uint64 of the shape of ``fragments``; ``ids[k]`` is
        the original id of compact id ``k`` (``ids[0] == 0``).
    """
    ids, inverse = np.unique(fragments, return_inverse=True)
    if ids.size == 0 or ids[0] != 0:
        ids = np.concatenate((np.zeros(1, dtype=ids.dtype), ids))
        inverse = inverse + 1
    return inverse.reshape(fragments.shape).astype(np.uint64), ids.astype(np.uint64)


def agglomerate(
    affs: np.ndarray,
    thresholds: Sequence[float],
    *,
    fragments: np.ndarray | None = None,
    scoring: str = "hist_quant_50",
) -> list[np.ndarray]:
    """Segmentations of affinities for several thresholds at once, with waterz.

    Args:
        affs: ``(C, Z, Y, X)`` affinities in [0, 1] (or uint8), channels in waterz order.
        thresholds: merge-score thresholds; a region pair merges while its score
            (1 - affinity statistic) is below the threshold.
        fragments: ``(Z, Y, X)`` initial fragments; None uses waterz's watershed.
        scoring: ``hist_quant_50``, ``hist_quant_75`` or ``mean``.

    Returns:
        One ``(Z, Y, X)`` uint64 segmentation per threshold, in the order given.
    """
    import waterz

    affs = as_affinities(affs)
    function = scoring_function(scoring)
    ids = None
    if fragments is not None:
        fragments, ids = compact_ids(np.asarray(fragments))
    order = np.argsort(thresholds, kind="stable")
    results: list[np.ndarray | None] = [None] * len(thresholds)
    with quiet_stdout():
        generator = waterz.agglomerate(
            affs, [float(thresholds[i]) for i in order], fragments=fragments, scoring_function=function
        )
        for i, segmentation in zip(order, generator):
            # waterz reuses one array for every threshold
            results[i] = segmentation.copy() if ids is None else ids[segmentation]
    return results  # type: ignore[return-value]


def scored_edges(
    affs: np.ndarray, fragments: np.ndarray, *, max_threshold: float, scoring: str = "hist_quant_50"
) -> tuple[np.ndarray, np.ndarray]:
    """Edges between fragments with the score at which waterz merges them.

    Agglomerates up to ``max_threshold`` and returns the merges of its history and the edges
    of the region graph left at the end (waterz keeps the first fragment id of a merged
    pair as the id of the union, so every edge joins two original fragment ids). Merging
    every edge with a score below a threshold ``t <= max_threshold`` gives waterz's
    segmentation at ``t``, as far as the context of ``affs`` allows.

    Args:
        affs: ``(C, Z, Y, X)`` affinities.
        fragments: ``(Z, Y, X)`` fragment ids (any uint64 values; 0 is no fragment).
        max_threshold: the largest threshold that will be asked for.
        scoring: ``hist_quant_50``, ``hist_quant_75`` or ``mean``.

    Returns:
        ``(uv, scores)``: ``(E, 2)`` uint64 fragment ids with ``u < v`` and ``(E,)`` float64
        merge scores.
    """
    import waterz

    affs = as_affinities(affs)
    compact, ids = compact_ids(np.asarray(fragments))
    with quiet_stdout():
        generator = waterz.agglomerate(
            affs,
            [float(max_threshold)],
            fragments=compact,
            scoring_function=scoring_function(scoring),
            return_merge_history=True,
            return_region_graph=True,
        )
        _, history, graph = next(generator)
    pairs = [(m["a"], m["b"], m["score"]) for m in history] + [(e["u"], e["v"], e["score"]) for e in graph]
    if not pairs:
        return np.zeros((0, 2), np.uint64), np.zeros(0, np.float64)
    table = np.array(pairs, dtype=np.float64)
    uv = ids[table[:, :2].astype(np.int64)]
    keep = (uv[:, 0] != 0) & (uv[:, 1] != 0)
    return np.sort(uv[keep], axis=1), table[keep, 2]
