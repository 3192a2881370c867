"""``psc-seg info``: what a volume is, without reading all of it."""

from __future__ import annotations

from typing import Any

import numpy as np

from psc_seg.io import open_volume, sample_values
from psc_seg.io.pyramid import pyramid_steps

INFO_SAMPLE_VOXELS = 1_000_000


def volume_info(spec: str) -> dict[str, Any]:
    """Shape, dtype, chunks, voxel size, offset, unit, world ROI, completeness, the spatial shapes
    of its OME-Zarr pyramid levels below level 0 (``pyramid``), metadata and the value range of
    a sample (at most about a million voxels) of the volume ``spec``."""
    vol = open_volume(spec)
    values = sample_values(vol, max_voxels=INFO_SAMPLE_VOXELS)
    finite = values[np.isfinite(values)]
    info: dict[str, Any] = {
        "spec": vol.spec,
        "format": vol.format,
        "shape": list(vol.shape),
        "channels": vol.channels,
        "dtype": str(vol.dtype),
        "chunks": list(vol.chunks) if vol.chunks else None,
        "voxel_size": list(vol.voxel_size),
        "offset": list(vol.offset),
        "unit": vol.unit,
        "roi": vol.roi.as_dict(),
        "complete": vol.complete,
        "pyramid": [list(step.shape) for step in pyramid_steps(vol)],
        "sample": {
            "voxels": int(values.size),
            "whole_volume": int(values.size) == int(np.prod(vol.shape)),
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "mean": float(finite.mean()) if finite.size else None,
            "non_finite": int(values.size - finite.size),
        },
        "attrs": vol.attrs,
    }
    if getattr(vol, "affine", None) is not None:
        info["affine"] = np.asarray(vol.affine).tolist()
    return info


def roi_text(info: dict[str, Any]) -> str:
    """The world ROI of a :func:`volume_info` as text: ``[z 0:512, y 0:768, x 0:768] nanometer``."""
    from psc_seg.io.geometry import WorldRoi

    return str(WorldRoi.from_dict(info["roi"]))
