"""waterz agglomeration of fragments: segmentations per threshold, and scored edges."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from psc_seg.segment.fragments import as_affinities
from psc_seg.segment.quiet import quiet_stdout
from psc_seg.segment.relabel import unique_inverse

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
    ids, inverse, _ = unique_inverse(np.asarray(fragments, dtype=np.uint64))
    compact = inverse.astype(np.uint64)
    if ids.size == 0 or ids[0] != 0:
        ids = np.concatenate((np.zeros(1, dtype=ids.dtype), ids))
        compact += np.uint64(1)
    return compact, ids


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


def _merge_tree(merges: tuple[np.ndarray, np.ndarray], n_nodes: int) -> np.ndarray:
    """Parent of each node of the merge tree (roots are their own parent).

    Leaves are the fragments ``0..n_nodes-1``; merge ``k`` of live regions ``(a[k], b[k])``
    (the union keeps the id ``a[k]``) is node ``n_nodes + k``. The tree node of region ``x``
    just before merge ``k`` is the last earlier merge that kept ``x``, or the leaf ``x``:
    found for all merges at once by searching the merges sorted by (kept id, time).
    """
    a, b = merges
    n_merges = a.size
    parent = np.arange(n_nodes + n_merges, dtype=np.int64)
    if n_merges == 0:
        return parent
    time = np.arange(n_merges, dtype=np.int64)
    kept = np.sort(a * n_merges + time)  # (id, time) packed: ids < n_nodes, times < n_merges

    def node_before(region: np.ndarray) -> np.ndarray:
        last = np.searchsorted(kept, region * n_merges + time) - 1
        found = last >= 0
        found[found] = kept[last[found]] // n_merges == region[found]
        return np.where(found, n_nodes + kept[np.maximum(last, 0)] % n_merges, region)

    parent[node_before(a)] = n_nodes + time
    parent[node_before(b)] = n_nodes + time
    return parent


def _join_scores(pairs: np.ndarray, merges: tuple[np.ndarray, np.ndarray, np.ndarray], n_nodes: int) -> np.ndarray:
    """The score of the merge that first puts both ends of each pair in one region (inf if none).

    ``merges`` are waterz's merges as arrays ``(a, b, score)`` in the order they happened
    (scores ascending; ``a`` and ``b`` are the ids of live regions, and the union keeps
    ``a``). The merges form a tree (see :func:`_merge_tree`); the join score of a pair is the
    score of the lowest common ancestor of its ends, found for all pairs at once by binary
    lifting. The ancestor tables and the depths come from pointer jumping.
    """
    parent = _merge_tree(merges[:2], n_nodes)
    score_of = np.concatenate([np.full(n_nodes, np.inf), merges[2].astype(np.float64)])
    # pointer jumping: up[j] is the 2**j-th ancestor (the root if that is above it) and
    # depth the distance from each node to up[-1]; it stops once up[-1] is the root everywhere
    up, depth = [parent], (parent != np.arange(parent.size)).astype(np.int64)
    while True:
        above = up[-1][up[-1]]
        if np.array_equal(above, up[-1]):
            break
        depth += depth[up[-1]]
        up.append(above)
    u, v = pairs[:, 0].copy(), pairs[:, 1].copy()
    swap = depth[u] < depth[v]
    u[swap], v[swap] = v[swap], u[swap]
    lift = depth[u] - depth[v]
    for j, table in enumerate(up):
        step = ((lift >> j) & 1).astype(bool)
        u[step] = table[u[step]]
    for table in reversed(up):
        differ = table[u] != table[v]
        u[differ], v[differ] = table[u[differ]], table[v[differ]]
    common = np.where(u == v, u, parent[u])
    joined = (u == v) | (parent[u] == parent[v])
    return np.where(joined & (common >= n_nodes), score_of[common], np.inf)


def _column(records: list[dict], key: str, dtype) -> np.ndarray:
    return np.fromiter((r[key] for r in records), dtype=dtype, count=len(records))


def scored_edges(
    affs: np.ndarray, fragments: np.ndarray, *, max_threshold: float, scoring: str = "hist_quant_50"
) -> tuple[np.ndarray, np.ndarray]:
    """Each pair of touching fragments, with the score at which waterz first joins them.

    Agglomerates up to ``max_threshold``; the merge score of a pair ``(u, v)`` is the score
    of the merge that first put ``u`` and ``v`` in one region (inf if none did). Merging every
    pair whose score is below a threshold ``t <= max_threshold`` gives waterz's segmentation
    at ``t`` (waterz merges in ascending score order), as far as the context of ``affs``
    allows.

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
            [-1.0, float(max_threshold)],  # -1 merges nothing: the initial region graph
            fragments=compact,
            scoring_function=scoring_function(scoring),
            return_merge_history=True,
            return_region_graph=True,
        )
        _, _, initial = next(generator)
        _, history, _ = next(generator)
    # waterz's region graph has no edges to 0 (ids from 1 up); lists of dicts -> columns
    pairs = np.stack([_column(initial, "u", np.int64), _column(initial, "v", np.int64)], axis=1)
    merges = (_column(history, "a", np.int64), _column(history, "b", np.int64), _column(history, "score", np.float64))
    scores = _join_scores(pairs, merges, ids.size)
    return np.sort(ids[pairs], axis=1), scores
