"""Affinities to instance labels: fragments, waterz agglomeration, connected components, and
blockwise stitching for volumes larger than memory (DESIGN.md section 4)."""

from psc_seg.segment.agglomerate import SCORING, agglomerate, scored_edges
from psc_seg.segment.components import affinity_components, merge_fragments, remove_small_segments
from psc_seg.segment.fragments import FRAGMENT_METHODS, distance_fragments, make_fragments, waterz_fragments
from psc_seg.segment.settings import DECODERS, SegmentSettings
from psc_seg.segment.whole import segment_affinities, segment_whole

__all__ = [
    "DECODERS",
    "FRAGMENT_METHODS",
    "SCORING",
    "SegmentSettings",
    "affinity_components",
    "agglomerate",
    "distance_fragments",
    "make_fragments",
    "merge_fragments",
    "remove_small_segments",
    "scored_edges",
    "segment_affinities",
    "segment_whole",
    "waterz_fragments",
]
