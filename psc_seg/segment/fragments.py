"""Fragments: an over-segmentation of affinities, the nodes of the region graph.

Two methods:

- ``"waterz"``: waterz's own watershed on the affinity graph (thresholds low / high);
- ``"distance"``: a seeded watershed on the distance transform of the boundary map: voxels
  whose mean nearest-neighbour affinity exceeds ``boundary_threshold`` are inside cells, the
  maxima of their distance to the boundary are the seeds.

Both return ``(Z, Y, X)`` uint64 ids 1..n with 0 on boundary voxels that belong to no fragment.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from psc_seg.segment.relabel import unique_inverse

FRAGMENT_METHODS = ("waterz", "distance")


def as_affinities(affs: np.ndarray, channels: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """The nearest-neighbour channels as ``(3, Z, Y, X)`` C-contiguous float32 in [0, 1]
    (uint8 input is scaled by 1/255).

    Args:
        affs: ``(C, Z, Y, X)`` affinities, C >= 3.
        channels: the channels of the offsets ``(-1, 0, 0), (0, -1, 0), (0, 0, -1)`` (waterz
            order), as :func:`psc_seg.affinities.nearest_neighbour_channels` finds them.
    """
    affs = np.asarray(affs)
    if affs.ndim != 4 or affs.shape[0] < 3:
        raise ValueError(f"affinities must be (C, Z, Y, X) with C >= 3, got shape {affs.shape}")
    channels = tuple(int(c) for c in channels)
    affs = affs[:3] if channels == (0, 1, 2) else affs[list(channels)]
    if affs.dtype == np.uint8:
        return np.ascontiguousarray(affs, dtype=np.float32) / np.float32(255)
    if not np.issubdtype(affs.dtype, np.floating):
        raise ValueError(f"affinities must be float in [0, 1] or uint8, got dtype {affs.dtype}")
    return np.ascontiguousarray(affs, dtype=np.float32)


def waterz_fragments(affs: np.ndarray, *, low: float = 0.0001, high: float = 0.9999) -> np.ndarray:
    """waterz's watershed fragments of ``(C, Z, Y, X)`` affinities, ``(Z, Y, X)`` uint64."""
    import waterz

    from psc_seg.segment.quiet import quiet_stdout

    affs = as_affinities(affs)
    with quiet_stdout():
        # a negative threshold merges nothing: the result is the initial watershed
        (fragments,) = list(waterz.agglomerate(affs, [-1.0], aff_threshold_low=low, aff_threshold_high=high))
    return fragments.copy()


def incident_affinities(affs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and the highest affinity of the six edges that touch each voxel.

    Channel ``d`` at ``p`` is the edge from ``p`` back to ``p - e_d``; the edge forward to
    ``p + e_d`` is channel ``d`` at ``p + e_d``. Edges leaving the volume are left out.

    Returns:
        ``(lowest, highest)``, both ``(Z, Y, X)`` float32.
    """
    affs = as_affinities(affs)
    lowest = affs.min(axis=0)
    highest = affs.max(axis=0)
    for axis in range(3):
        ahead = [slice(None)] * 3
        ahead[axis] = slice(1, None)
        here = [slice(None)] * 3
        here[axis] = slice(0, -1)
        forward = affs[axis][tuple(ahead)]
        np.minimum(lowest[tuple(here)], forward, out=lowest[tuple(here)])
        np.maximum(highest[tuple(here)], forward, out=highest[tuple(here)])
    return lowest, highest


def distance_fragments(
    affs: np.ndarray, *, boundary_threshold: float = 0.5, min_seed_distance: int = 10
) -> np.ndarray:
    """Seeded watershed on the distance transform of the boundary map, ``(Z, Y, X)`` uint64.

    Voxels whose six edges all have affinity above ``boundary_threshold`` are the cell
    interiors; the maxima of their distance to the boundary (at least one per connected
    interior) seed a watershed of the negated distance, over the voxels with at least one
    edge above the threshold. Voxels with none stay 0. The basins are then split where the
    affinity graph thresholded at ``boundary_threshold`` falls apart, so no fragment crosses
    a boundary that is only one edge thin.

    Args:
        affs: ``(C, Z, Y, X)`` affinities in [0, 1].
        boundary_threshold: affinity above which an edge joins two voxels of one cell.
        min_seed_distance: size in voxels of the window in which a seed is the distance maximum.
    """
    from skimage.segmentation import watershed

    from psc_seg.segment.components import affinity_components

    affs = as_affinities(affs)  # once: incident_affinities and affinity_components take it as is
    lowest, highest = incident_affinities(affs)
    interior = lowest > boundary_threshold
    if not interior.any():
        return np.zeros(interior.shape, dtype=np.uint64)
    distance = ndimage.distance_transform_edt(interior).astype(np.float32)
    peaks = (distance == ndimage.maximum_filter(distance, size=min_seed_distance)) & interior
    # an interior whose window peaks lie elsewhere still gets one seed, at its own maximum
    parts, n_parts = ndimage.label(interior)
    unseeded = np.setdiff1d(np.arange(1, n_parts + 1), np.unique(parts[peaks]))
    if unseeded.size:
        for position in ndimage.maximum_position(distance, parts, index=unseeded):
            peaks[position] = True
    seeds, _ = ndimage.label(peaks)
    fragments = watershed(distance.max() - distance, seeds, mask=highest > boundary_threshold)
    # a voxel-wise watershed cannot see a boundary that is one edge thin (two touching
    # cells): split the basins along the cuts of the affinity graph as well
    # affinity_components takes a boundary-score threshold: edges above boundary_threshold join
    return _intersect(fragments, affinity_components(affs, 1.0 - boundary_threshold))


def _intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Labels 1..n of the non-empty intersections of two labellings; 0 where either is 0."""
    keep = (a != 0) & (b != 0)
    out = np.zeros(a.shape, dtype=np.uint64)
    if keep.any():
        b_kept = b[keep].astype(np.uint64)
        key = a[keep].astype(np.uint64) * (b_kept.max() + np.uint64(1)) + b_kept
        _, inverse, _ = unique_inverse(key)
        out[keep] = inverse.astype(np.uint64) + np.uint64(1)
    return out


def make_fragments(affs: np.ndarray, *, method: str = "waterz") -> np.ndarray:
    """Fragments by ``method`` (``"waterz"`` or ``"distance"``), ``(Z, Y, X)`` uint64."""
    if method == "waterz":
        return waterz_fragments(affs)
    if method == "distance":
        return distance_fragments(affs)
    raise ValueError(f"unknown fragments method {method!r}; use one of {', '.join(FRAGMENT_METHODS)}")
