"""Where in a volume a stage works, in world units: a region of interest given as
``"z0:z1,y0:y1,x0:x1"`` (world units, ``roi``; voxel indices, ``roi_voxels``) turned into the
voxels it covers (:func:`resolve_roi`), and the blocks whose write ROI touches a mask's
nonzero voxels (:func:`mask_blocks`), the mask read at its own voxel size and offset.

World coordinates of a volume's voxel ``i`` (per axis): ``offset + i * voxel_size``; its world
ROI is ``[offset, offset + shape * voxel_size)``. Volumes are duck-typed: anything with
``spec``, ``spatial_shape``, ``voxel_size``, ``offset``, ``unit`` and ``read``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from psc_seg.engine.blocks import Block
from psc_seg.engine.chunk_cache import ChunkCache
from psc_seg.engine.roi import Roi
from psc_seg.errors import UserError, check_exclusive
from psc_seg.io.geometry import unit_symbol

ROI_SYNTAX = "z0:z1,y0:y1,x0:x1"
_EPS = 1e-6  # relative tolerance for world coordinates that must land on voxel borders

def _num(value: float) -> str:
    return f"{value:g}"


def unit_of(volume) -> str:
    """The short name of ``volume``'s spatial unit (``"nm"``), or ``"world units"``."""
    return unit_symbol(getattr(volume, "unit", None)) or "world units"


def world_roi(volume, roi: Roi | None = None) -> str:
    """``roi`` (voxels of ``volume``; default all of it) in world units, for messages:
    ``"400:1360,800:992,800:992 nm"``."""
    roi = roi or Roi((0, 0, 0), volume.spatial_shape)
    parts = [f"{_num(o + b * v)}:{_num(o + e * v)}"
             for o, v, b, e in zip(volume.offset, volume.voxel_size, roi.begin, roi.end)]
    return ",".join(parts) + f" {unit_of(volume)}"


def parse_roi(text: str, *, option: str) -> list[tuple[float, float]]:
    """``"z0:z1,y0:y1,x0:x1"`` -> ``[(z0, z1), (y0, y1), (x0, x1)]``; UserError naming
    ``{option}`` for any other form."""
    parts = str(text).replace(" ", "").split(",")
    try:
        bounds = [tuple(float(v) for v in part.split(":")) for part in parts]
    except ValueError:
        bounds = []
    if len(bounds) != 3 or any(len(b) != 2 or not all(math.isfinite(v) for v in b) for b in bounds):
        raise UserError(f"{{{option}}} {text!r} is not of the form {ROI_SYNTAX} (three begin:end ranges, z first)",
                        options=(option,))
    return bounds  # type: ignore[return-value]


def resolve_roi(volume, *, roi: str | None = None, roi_voxels: str | None = None) -> Roi | None:
    """The voxels of ``volume`` a stage works on: ``roi`` in world units (the volume's unit,
    e.g. nm; ends exclusive), or ``roi_voxels`` in voxel indices, both ``"z0:z1,y0:y1,x0:x1"``;
    None when neither is given (the whole volume).

    Raises:
        UserError (one line, naming the ROI and the volume's world ROI): both given; a world
        ROI whose bounds are not on voxel borders (offset + a multiple of the voxel size);
        an empty ROI; one that leaves the volume.
    """
    check_exclusive(roi=roi is not None, roi_voxels=roi_voxels is not None)
    if roi is None and roi_voxels is None:
        return None
    option, text = ("roi", roi) if roi is not None else ("roi_voxels", roi_voxels)
    bounds = parse_roi(text, option=option)
    where = f"input {volume.spec!r} covers {world_roi(volume)} (voxels 0:{',0:'.join(map(str, volume.spatial_shape))})"
    if option == "roi":
        voxels = [[(w - o) / v for w in pair] for pair, o, v in zip(bounds, volume.offset, volume.voxel_size)]
        if any(abs(i - round(i)) > _EPS * max(1.0, abs(i)) for pair in voxels for i in pair):
            size = "x".join(_num(v) for v in volume.voxel_size)
            raise UserError(f"{{roi}} {text} ({unit_of(volume)}) does not lie on voxel borders: its bounds must be the "
                            f"offset plus multiples of the voxel size {size}; {where}", options=("roi",))
        bounds = [tuple(round(i) for i in pair) for pair in voxels]
    elif any(v != int(v) for pair in bounds for v in pair):
        raise UserError(f"{{roi_voxels}} {text} must be whole voxel indices; {where}", options=("roi_voxels",))
    begin = [int(b) for b, _ in bounds]
    end = [int(e) for _, e in bounds]
    if any(e <= b for b, e in zip(begin, end)):
        raise UserError(f"{{{option}}} {text} is empty (an end is not after its begin); {where}", options=(option,))
    region = Roi(begin, [e - b for b, e in zip(begin, end)])
    if not Roi((0, 0, 0), volume.spatial_shape).contains(region):
        raise UserError(f"{{{option}}} {text} reaches outside the input: {where}", options=(option,))
    return region


def check_mask(mask, volume, region: Roi | None = None) -> None:
    """UserError (one line) unless ``mask`` can select blocks of ``volume``: a 3D volume whose
    voxel size is an integer multiple of the volume's (or divides it) on every axis, and whose
    world ROI overlaps that of ``region`` (voxels of ``volume``; default all of it)."""
    if mask.channels is not None:
        raise UserError(f"mask {mask.spec!r} has shape {mask.shape}; a mask is 3D (z, y, x), nonzero where to "
                        "predict", options=("mask",))
    for m, v in zip(mask.voxel_size, volume.voxel_size):
        ratio = m / v if m >= v else v / m
        if abs(ratio - round(ratio)) > _EPS * ratio:
            raise UserError(f"{{mask}} {mask.spec!r} has voxel size {'x'.join(map(_num, mask.voxel_size))}, not an "
                            f"integer multiple of the voxel size {'x'.join(map(_num, volume.voxel_size))} of input "
                            f"{volume.spec!r} (z, y, x); resample the mask", options=("mask",))
    region = region or Roi((0, 0, 0), volume.spatial_shape)
    low = [o + b * v for o, v, b in zip(volume.offset, volume.voxel_size, region.begin)]
    high = [o + e * v for o, v, e in zip(volume.offset, volume.voxel_size, region.end)]
    m_low = list(mask.offset)
    m_high = [o + s * v for o, s, v in zip(mask.offset, mask.spatial_shape, mask.voxel_size)]
    if any(max(a, c) >= min(b, d) for a, b, c, d in zip(low, high, m_low, m_high)):
        raise UserError(f"{{mask}} {mask.spec!r} covers {world_roi(mask)}, which does not overlap "
                        f"{world_roi(volume, region)} of input {volume.spec!r}; give the mask of this volume",
                        options=("mask",))


def mask_voxels(mask, volume, roi: Roi) -> Roi:
    """The voxels of ``mask`` that the voxels ``roi`` of ``volume`` touch in world units (an
    empty ROI where none)."""
    begin, end = [], []
    for o, v, b, e, mo, mv in zip(volume.offset, volume.voxel_size, roi.begin, roi.end, mask.offset, mask.voxel_size):
        low = (o + b * v - mo) / mv
        high = (o + e * v - mo) / mv
        begin.append(math.floor(low + _EPS))
        end.append(math.ceil(high - _EPS))
    region = Roi(begin, [max(0, e - b) for b, e in zip(begin, end)])
    return region.intersect(Roi((0, 0, 0), mask.spatial_shape))


def mask_blocks(mask, volume, blocks: Sequence[Block]) -> list[int]:
    """Ids of the ``blocks`` (voxels of ``volume``) whose write ROI touches a nonzero voxel of
    ``mask``, read at its own voxel size and offset (see :func:`check_mask`)."""
    reader = ChunkCache(mask)
    chosen = []
    for block in blocks:
        where = mask_voxels(mask, volume, block.write_roi)
        if not where.empty and reader.read(where).any():
            chosen.append(block.block_id)
    return chosen


def mask_identity(mask, spec: str, chosen: Sequence[int]) -> dict:
    """What the resume settings keep of a mask: its spec, shape, dtype, voxel size, offset,
    and a hash of the blocks it selects (its content, as far as it matters to the run)."""
    digest = hashlib.sha256(",".join(map(str, sorted(chosen))).encode()).hexdigest()
    return {"spec": spec, "shape": list(mask.shape), "dtype": str(mask.dtype), "voxel_size": list(mask.voxel_size),
            "offset": list(mask.offset), "blocks_sha256": digest}
