"""The settings of one segmentation run, typed and checked where they enter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psc_seg.errors import UserError
from psc_seg.segment.agglomerate import SCORING
from psc_seg.segment.fragments import FRAGMENT_METHODS

DECODERS = ("waterz", "cc")  # fragments + agglomeration, or connected components of affinities


@dataclass(frozen=True)
class SegmentSettings:
    """What a segmentation run computes (not where it runs or how it resumes).

    Attributes:
        affinities: the spec of the ``(C, Z, Y, X)`` affinity volume.
        thresholds: waterz merge-score thresholds, or affinity thresholds for ``cc``; empty
            or None means ``(0.5,)``.
        scoring, fragments, decoder, min_size: see :func:`psc_seg.segment.segment_affinities`.
        block_shape: ``(Z, Y, X)`` write-block shape for blockwise segmentation; None
            segments the whole volume in memory.

    Raises:
        UserError: an unknown scoring, fragments method or decoder, a negative ``min_size``,
            a threshold outside [0, 1].
    """

    affinities: str
    thresholds: Sequence[float] = (0.5,)
    scoring: str = "hist_quant_50"
    fragments: str = "waterz"
    decoder: str = "waterz"
    min_size: int = 0
    block_shape: Sequence[int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", tuple(float(t) for t in (self.thresholds or (0.5,))))
        object.__setattr__(self, "block_shape", tuple(self.block_shape) if self.block_shape else None)
        if self.scoring not in SCORING:
            raise UserError(f"unknown --scoring {self.scoring!r}; use one of {', '.join(SCORING)}")
        if self.fragments not in FRAGMENT_METHODS:
            raise UserError(f"unknown --fragments {self.fragments!r}; use one of {', '.join(FRAGMENT_METHODS)}")
        if self.decoder not in DECODERS:
            raise UserError(f"unknown --decoder {self.decoder!r}; use one of {', '.join(DECODERS)}")
        if self.min_size < 0:
            raise UserError(f"--min-size must be >= 0, got {self.min_size}")
        if any(not 0.0 <= t <= 1.0 for t in self.thresholds):
            raise UserError(f"thresholds must lie in [0, 1], got {list(self.thresholds)}")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values, in a fixed order: what resume hashes and provenance stores."""
        return {
            "affinities": self.affinities,
            "thresholds": list(self.thresholds),
            "scoring": self.scoring,
            "fragments": self.fragments,
            "decoder": self.decoder,
            "min_size": self.min_size,
            "block_shape": list(self.block_shape) if self.block_shape else None,
        }
