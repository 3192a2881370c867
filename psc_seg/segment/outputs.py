"""The label volumes of a segmentation run, opened in one place for both paths (whole-volume
and blockwise) through :func:`psc_seg.engine.prepare_outputs`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from psc_seg.engine import PreparedOutputs
    from psc_seg.segment.settings import SegmentSettings


def open_outputs(affs, outputs: Sequence[str], *, settings: SegmentSettings, hashed: dict[str, Any],
                 chunks: Sequence[int] | None = None, resume: bool, overwrite: bool,
                 pyramid: bool = True) -> PreparedOutputs:
    """``outputs`` (one ``(Z, Y, X)`` uint64 volume per ``settings.thresholds``, shaped like
    ``affs``), keyed by their specs; resumable for the same ``hashed`` settings.

    ``chunks``: storage chunks (the write blocks of a blockwise run). Each output's provenance
    holds ``settings`` and its threshold. ``pyramid``: zarr outputs are OME-Zarr pyramids
    (by mode), filled by :func:`psc_seg.engine.build_pyramids` before they are finished; every
    zarr output carries OME-Zarr ``image-label`` metadata.
    """
    from psc_seg.engine import prepare_outputs
    from psc_seg.io import create_volume

    config = settings.as_dict()

    def create(where: dict[str, str]) -> dict[str, Any]:
        return {
            spec: create_volume(where[spec], shape=affs.spatial_shape, dtype=np.uint64, chunks=chunks,
                                reference=affs, axis_names=("z", "y", "x"), pyramid=pyramid, labels=True,
                                provenance={"config": {**config, "threshold": threshold}})
            for spec, threshold in zip(outputs, settings.thresholds)
        }

    if not pyramid:  # outputs with a pyramid keep the settings (and resume records) they had
        hashed = {**hashed, "pyramid": False}
    return prepare_outputs({spec: spec for spec in outputs}, hashed, create=create, resume=resume,
                           overwrite=overwrite)
