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


def _join_scores(pairs: np.ndarray, merges: list[tuple[int, int, float]], n_nodes: int) -> np.ndarray:
    """The score of the merge that first puts both ends of each pair in one region (inf if none).

    ``merges`` are waterz's ``(a, b, score)`` in the order they happened (scores ascending;
    ``a`` and ``b`` are the ids of live regions, and the union keeps ``a``). The merges form a
    tree (leaves: fragments ``0..n_nodes-1``; merge ``k`` is node ``n_nodes + k``); the join
    score of a pair is the score of the lowest common ancestor of its ends, found for all
    pairs at once by binary lifting.
    """
    n_merges = len(merges)
    parent = np.arange(n_nodes + n_merges, dtype=np.int64)
    node_of = list(range(n_nodes))  # tree node standing for each live region id
    for k, (a, b, _) in enumerate(merges):
        parent[node_of[a]] = parent[node_of[b]] = n_nodes + k
        node_of[a] = n_nodes + k
    score_of = np.concatenate([np.full(n_nodes, np.inf), np.array([m[2] for m in merges], dtype=np.float64)])
    # children have smaller ids than their parents: one pass from the top sets every depth
    depth = np.zeros(parent.size, dtype=np.int64)
    parent_list, depth_list = parent.tolist(), depth.tolist()
    for node in range(parent.size - 1, -1, -1):
        if parent_list[node] != node:
            depth_list[node] = depth_list[parent_list[node]] + 1
    depth = np.array(depth_list, dtype=np.int64)
    up = [parent]
    while (1 << len(up)) <= int(depth.max(initial=0)):
        up.append(up[-1][up[-1]])
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
    pairs = np.array([(e["u"], e["v"]) for e in initial if e["u"] and e["v"]], dtype=np.int64).reshape(-1, 2)
    scores = _join_scores(pairs, [(m["a"], m["b"], m["score"]) for m in history], ids.size)
    return np.sort(ids[pairs], axis=1), scores
