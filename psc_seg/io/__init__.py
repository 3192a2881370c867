"""Volumes on disk: ``open_volume(spec) -> Volume`` and ``create_volume(spec, ...)``.

Formats: zarr v2/v3 (OME-Zarr image groups), N5 (read), HDF5, NIfTI, TIFF stacks, ``.npy``;
zarr and N5 also behind ``s3://``, ``gs://`` and ``http(s)://`` URLs (:mod:`psc_seg.io.stores`).
See :mod:`psc_seg.io.spec` for the spec strings, :mod:`psc_seg.io.volume` for axes, units and
completeness, :mod:`psc_seg.io.geometry` for world units (``Volume.roi``, a :class:`WorldRoi`;
where each format keeps voxel size, offset and a NIfTI affine). Example::

    from psc_seg.io import create_volume, open_volume

    raw = open_volume("sample.h5:/volumes/raw")          # (z, y, x), lazy
    block = raw.read((slice(0, 64), slice(0, 64), slice(0, 64)))
    out = create_volume("pred.zarr", shape=(3, *raw.spatial_shape), dtype="float32",
                        chunks=(64, 64, 64), reference=raw)
    out.write((slice(0, 64), slice(0, 64), slice(0, 64)), affinities_block)  # (3, 64, 64, 64)
    out.finalize()                                        # now it is complete
"""

from psc_seg.io.geometry import WorldRoi, world_roi
from psc_seg.io.normalize import (
    check_image, check_value_range, default_normalization, normalize, resolve_normalization, sample_values,
)
from psc_seg.io.open import create_volume, default_provenance, open_volume, volume_complete, volume_exists
from psc_seg.io.spec import VolumeSpec, check_apart, overlaps, parse_spec, staged_spec
from psc_seg.io.volume import META_KEY, Volume, partial_path, remove_output, replace_output, sidecar_beside

__all__ = [
    "META_KEY", "Volume", "VolumeSpec", "WorldRoi", "check_apart", "check_image", "check_value_range", "create_volume",
    "default_normalization", "default_provenance", "normalize", "open_volume", "overlaps", "parse_spec", "partial_path",
    "remove_output", "replace_output", "resolve_normalization", "sample_values", "sidecar_beside", "staged_spec",
    "volume_complete",
    "volume_exists", "world_roi",
]
