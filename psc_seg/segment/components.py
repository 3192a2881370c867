"""Connected components: of thresholded affinities (the ``cc`` decoder), of scored fragment
edges (the global pass of blockwise agglomeration), and removal of small segments."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from psc_seg.segment.relabel import unique_inverse
from psc_seg.affinities import DEFAULT_OFFSETS, check_offsets, pair_slices


def _components(n_nodes: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Component index (0..k-1, ordered by smallest node) of each of ``n_nodes`` nodes."""
    graph = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(n_nodes, n_nodes))
    return connected_components(graph, directed=False)[1]


def joins(affinities: np.ndarray, threshold: float) -> np.ndarray:
    """Where an edge joins its two voxels at ``threshold``: its boundary score
    ``1 - affinity`` is below the threshold, waterz's merge rule, so that a higher threshold
    joins more for every decoder. uint8 affinities are read as value / 255."""
    affinities = np.asarray(affinities)
    if affinities.dtype == np.uint8:
        affinities = affinities / np.float32(255)
    return 1 - affinities < threshold


def affinity_components(
    affs: np.ndarray, threshold: float, *, offsets: Sequence[Sequence[int]] = DEFAULT_OFFSETS
) -> np.ndarray:
    """Connected components of the voxels joined at ``threshold`` (BANIS's decoder).

    Args:
        affs: ``(C, Z, Y, X)`` affinities; channel ``i`` joins ``p`` and ``p + offsets[i]``.
        threshold: an edge joins its voxels when its boundary score ``1 - affinity`` is
            strictly below it (:func:`joins`), as waterz merges: higher = more merging
            (fewer, larger segments).
        offsets: one ``(dz, dy, dx)`` per channel (default: the three nearest neighbours).

    Returns:
        ``(Z, Y, X)`` uint64 labels 1..n; voxels joined to no other voxel are 0.
    """
    affs = np.asarray(affs)
    offsets = check_offsets(offsets)
    if affs.ndim != 4 or affs.shape[0] != len(offsets):
        raise ValueError(f"affinities must be (C, Z, Y, X) with C = {len(offsets)} offsets, got {affs.shape}")
    shape = affs.shape[1:]
    index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    sources, targets = [], []
    for channel, offset in enumerate(offsets):
        pair = pair_slices(offset, shape)
        if pair is None:
            continue
        here, there = pair
        joined = joins(affs[channel][here], threshold)
        sources.append(index[here][joined])
        targets.append(index[there][joined])
    src = np.concatenate(sources) if sources else np.zeros(0, np.int64)
    dst = np.concatenate(targets) if targets else np.zeros(0, np.int64)
    component = _components(index.size, src, dst)
    joined_any = np.zeros(index.size, dtype=bool)
    joined_any[src] = True
    joined_any[dst] = True
    labels = np.zeros(index.size, dtype=np.uint64)
    _, labels[joined_any], _ = unique_inverse(component[joined_any])
    labels[joined_any] += np.uint64(1)
    return labels.reshape(shape)


def merge_fragments(
    fragment_ids: np.ndarray, uv: np.ndarray, scores: np.ndarray, threshold: float
) -> np.ndarray:
    """Segment of each fragment when every edge with a score below ``threshold`` is merged.

    Args:
        fragment_ids: ``(F,)`` uint64 ids of all fragments (no 0), sorted and unique.
        uv: ``(E, 2)`` uint64 fragment ids joined by each edge.
        scores: ``(E,)`` merge scores.
        threshold: edges with ``score < threshold`` merge, as in waterz.

    Returns:
        ``(F,)`` uint64 segment ids 1..S, numbered by the smallest fragment id of each segment.
    """
    merged = uv[scores < threshold]
    ends = np.searchsorted(fragment_ids, merged.reshape(-1)).reshape(-1, 2)
    if merged.size and not np.array_equal(fragment_ids[np.minimum(ends, fragment_ids.size - 1)], merged):
        raise ValueError("an edge joins a fragment that is not in fragment_ids")
    component = _components(fragment_ids.size, ends[:, 0], ends[:, 1])
    return component.astype(np.uint64) + np.uint64(1)


def remove_small_segments(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labels with every segment of fewer than ``min_size`` voxels set to 0 (a new array)."""
    if min_size <= 1:
        return labels.copy()
    ids, inverse, counts = unique_inverse(labels)
    keep = np.where(counts >= min_size, ids, 0).astype(labels.dtype)
    return keep[inverse]
