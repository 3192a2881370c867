"""``CroppedVolume``: a region of a volume seen as a volume of its own, placed in the world
where it lies (its offset is the volume's plus the region's begin times the voxel size; a
NIfTI affine moves with it), so that outputs made from it overlay the whole volume."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from psc_seg.io.volume import Volume


class CroppedVolume(Volume):
    """The voxels ``[begin, begin + shape)`` ``(z, y, x)`` of ``base``, read-only: reads go to
    ``base`` shifted by ``begin``; every channel is kept. ``spec``, ``attrs`` (completeness,
    provenance) and ``chunks`` are the base volume's."""

    def __init__(self, base: Volume, begin: Sequence[int], shape: Sequence[int]) -> None:
        self.base = base
        self.begin = tuple(int(b) for b in begin)
        self.format = base.format
        offset = [o + b * v for o, b, v in zip(base.offset, self.begin, base.voxel_size)]
        affine = getattr(base, "affine", None)
        if affine is not None:  # NIfTI: voxel (x, y, z) -> world; the crop's voxel 0 is base voxel `begin`
            affine = np.array(affine, dtype=np.float64)
            affine[:3, 3] += affine[:3, :3] @ np.array(self.begin[::-1], dtype=np.float64)
        super().__init__(base.spec_obj, mode="r", shape=(*base.shape[:-3], *(int(s) for s in shape)),
                         dtype=base.dtype, voxel_size=base.voxel_size, offset=offset, chunks=base.chunks,
                         unit=base.unit, attrs=base.attrs, affine=affine)
        if affine is not None:
            self.header = getattr(base, "header", None)

    def _read(self, key: tuple[slice, ...]) -> np.ndarray:
        lead, spatial = key[:-3], key[-3:]
        shifted = tuple(slice(k.start + b, k.stop + b) for k, b in zip(spatial, self.begin))
        return self.base.read((*lead, *shifted))

    def __repr__(self) -> str:
        return f"CroppedVolume({self.base!r}, begin={self.begin}, shape={self.spatial_shape})"
