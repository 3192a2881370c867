"""The settings of one segmentation run, typed and checked where they enter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from psc_seg.affinities import DEFAULT_OFFSETS, EXAMPLE_OFFSETS, check_offsets, nearest_neighbour_channels
from psc_seg.errors import UserError
from psc_seg.segment.agglomerate import SCORING
from psc_seg.segment.fragments import FRAGMENT_METHODS

DECODERS = ("waterz", "cc")  # fragments + agglomeration, or connected components of affinities


DEFAULT_THRESHOLD = 0.5
DEFAULT_SCORING = "hist_quant_50"


@dataclass(frozen=True)
class SegmentSettings:
    """What a segmentation run computes (not where it runs or how it resumes).

    Attributes:
        affinities: the spec of the ``(C, Z, Y, X)`` affinity volume.
        thresholds: boundary-score thresholds, higher = more merging (fewer, larger
            segments) for every decoder; empty or None means ``(0.5,)``.
        scoring, fragments, decoder, min_size: see :func:`psc_seg.segment.segment_affinities`.
        block_shape: ``(Z, Y, X)`` write-block shape for blockwise segmentation; None
            segments the whole volume in memory.
        offsets: one ``(dz, dy, dx)`` per channel of the affinities (as stored with them);
            the nearest-neighbour channels are segmented (:attr:`channels`), others left out.
        roi: the region segmented, ``(begin, shape)`` ``(z, y, x)`` in voxels of the
            affinities, as if they were cropped to it; None: all of them.

    Raises:
        UserError: an unknown scoring, fragments method or decoder, a negative ``min_size``,
            a threshold outside [0, 1], offsets without the three nearest neighbours.
    """

    affinities: str
    thresholds: Sequence[float] = (DEFAULT_THRESHOLD,)
    scoring: str = DEFAULT_SCORING
    fragments: str = "waterz"
    decoder: str = "waterz"
    min_size: int = 0
    block_shape: Sequence[int] | None = None
    offsets: Sequence[Sequence[int]] = DEFAULT_OFFSETS
    roi: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "offsets", tuple(check_offsets(self.offsets)))
        except ValueError as exc:
            raise UserError(f"{exc}; give {{offsets}} as e.g. {EXAMPLE_OFFSETS}", options=("offsets",)) from None
        nearest_neighbour_channels(self.offsets)  # refuses offsets without the three
        object.__setattr__(self, "thresholds", tuple(float(t) for t in (self.thresholds or (DEFAULT_THRESHOLD,))))
        object.__setattr__(self, "block_shape", tuple(int(v) for v in self.block_shape) if self.block_shape else None)
        if self.block_shape is not None and (len(self.block_shape) != 3 or min(self.block_shape) < 1):
            raise UserError(f"{{block_shape}} needs three positive sizes Z Y X, got {self.block_shape}",
                            options=("block_shape",))
        if self.scoring not in SCORING:
            raise UserError(f"unknown {{scoring}} {self.scoring!r}; use one of {', '.join(SCORING)}",
                            options=("scoring",))
        if self.fragments not in FRAGMENT_METHODS:
            raise UserError(f"unknown {{fragments}} {self.fragments!r}; use one of {', '.join(FRAGMENT_METHODS)}",
                            options=("fragments",))
        if self.decoder not in DECODERS:
            raise UserError(f"unknown {{decoder}} {self.decoder!r}; use one of {', '.join(DECODERS)}",
                            options=("decoder",))
        if self.min_size < 0:
            raise UserError(f"{{min_size}} must be >= 0, got {self.min_size}", options=("min_size",))
        if any(not 0.0 <= t <= 1.0 for t in self.thresholds):
            raise UserError(f"thresholds must lie in [0, 1], got {list(self.thresholds)}")

    @cached_property  # blockwise steps ask for it per block
    def channels(self) -> tuple[int, int, int]:
        """The channels of the offsets ``(-1, 0, 0), (0, -1, 0), (0, 0, -1)``, in that order."""
        return nearest_neighbour_channels(self.offsets)[0]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values, in a fixed order: what resume hashes and provenance stores (the
        ROI only when one is given, so that earlier runs keep their hashes)."""
        region = {"roi": {"offset": list(self.roi[0]), "shape": list(self.roi[1])}} if self.roi else {}
        return {
            "affinities": self.affinities,
            "thresholds": list(self.thresholds),
            "scoring": self.scoring,
            "fragments": self.fragments,
            "decoder": self.decoder,
            "min_size": self.min_size,
            "block_shape": list(self.block_shape) if self.block_shape else None,
            "offsets": [list(o) for o in self.offsets],
            **region,
        }
