"""Segmentation of affinities that fit in memory."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from psc_seg.segment.agglomerate import agglomerate
from psc_seg.segment.components import affinity_components, remove_small_segments
from psc_seg.segment.fragments import as_affinities, make_fragments

DECODERS = ("waterz", "cc")


def segment_affinities(
    affs: np.ndarray,
    *,
    thresholds: Sequence[float] = (0.5,),
    decoder: str = "waterz",
    fragments: str = "waterz",
    scoring: str = "hist_quant_50",
    min_size: int = 0,
) -> list[np.ndarray]:
    """Instance segmentations of ``(C, Z, Y, X)`` affinities, one per threshold.

    Args:
        affs: ``(C, Z, Y, X)`` affinities in [0, 1] (or uint8), channels in waterz order.
        thresholds: for ``waterz``, merge-score thresholds (regions merge while
            1 - affinity statistic is below it); for ``cc``, affinity thresholds (voxels join
            where the affinity is above it).
        decoder: ``waterz`` (fragments + agglomeration) or ``cc`` (connected components).
        fragments: ``waterz`` or ``distance`` (see :mod:`psc_seg.segment.fragments`).
        scoring: ``hist_quant_50``, ``hist_quant_75`` or ``mean`` (waterz decoder).
        min_size: segments of fewer voxels become background 0.

    Returns:
        One ``(Z, Y, X)`` uint64 segmentation per threshold, in the order given.
    """
    affs = as_affinities(affs)  # once, not per threshold or per step
    if decoder == "cc":
        segmentations = [affinity_components(affs, t) for t in thresholds]
    elif decoder == "waterz":
        # waterz's own watershed inside the agglomeration call is the "waterz" fragments
        # (same thresholds), without building the region graph twice
        initial = None if fragments == "waterz" else make_fragments(affs, method=fragments)
        segmentations = agglomerate(affs, thresholds, fragments=initial, scoring=scoring)
    else:
        raise ValueError(f"unknown decoder {decoder!r}; use one of {', '.join(DECODERS)}")
    if min_size > 1:
        segmentations = [remove_small_segments(s, min_size) for s in segmentations]
    return segmentations
