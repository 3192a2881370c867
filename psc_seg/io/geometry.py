"""Where a volume lies in the world: ``WorldRoi`` and the geometry read from each format.

All ``(z, y, x)`` in world units (nanometres for EM, millimetres for MRI). A volume's world ROI
begins at its ``offset`` (the world position of the corner of voxel ``(0, 0, 0)``) and spans
``shape * voxel_size``::

    offset                               offset + shape * voxel_size
      |<-- voxel_size -->|                 |
      +--------+--------+--------+--------+
      | voxel 0| voxel 1|  ...   |        |      begin = offset, end = offset + 4 * voxel_size
      +--------+--------+--------+--------+

Sources, by format: OME-Zarr ``scale`` / ``translation``; funlib / daisy attributes on zarr
arrays and HDF5 datasets (``voxel_size`` or ``resolution``, ``offset``, ``units`` or
``unit``, ``axis_names``; in the array's axis order, spatial axes only or all of them); the
NIfTI affine (voxel size: the header's zooms; offset: the affine's translation). An offset of
zarr or HDF5 metadata must be a multiple of the voxel size, as in funlib, so that volumes of one
voxel size share one voxel grid.

A NIfTI affine (4 x 4, voxel index ``(i, j, k, 1)`` in NIfTI's ``x, y, z`` order to world
``x, y, z``) may rotate or shear the voxel grid; the world ROI above is then the box in the
volume's own axes, and the affine is the exact placement. It travels with outputs: NIfTI
outputs write it into their header, zarr and HDF5 outputs store it as ``psc_seg.affine`` (a
4 x 4 list, NIfTI's convention) in their attributes, from where a later NIfTI output takes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from psc_seg.errors import UserError

AXES = ("z", "y", "x")
# unit names as OME-Zarr writes them (UDUNITS-2), from the short forms funlib and others use
UNIT_NAMES = {"nm": "nanometer", "um": "micrometer", "µm": "micrometer", "μm": "micrometer", "mm": "millimeter",
              "m": "meter", "nanometers": "nanometer", "micrometers": "micrometer", "millimeters": "millimeter"}
# and back, for labels on scale bars and in messages
UNIT_SYMBOLS = {"nanometer": "nm", "micrometer": "µm", "millimeter": "mm", "centimeter": "cm", "meter": "m"}
ALIGN_TOLERANCE = 1e-6  # of a voxel: float metadata (e.g. 0.1 mm written as 0.1000000001)


def unit_name(unit) -> str | None:
    """``unit`` in OME-Zarr's spelling (``"nm"`` -> ``"nanometer"``); the first of a list of
    per-axis units; None for none."""
    if isinstance(unit, (list, tuple)):
        unit = next((u for u in unit if u), None)
    if not unit:
        return None
    unit = unit.decode(errors="replace") if isinstance(unit, bytes) else str(unit)
    return UNIT_NAMES.get(unit.lower(), unit)


def unit_symbol(unit: str | None) -> str:
    """The short form of an OME unit name (``"nanometer"`` -> ``"nm"``); another name as it is,
    "" for none."""
    return UNIT_SYMBOLS.get(unit or "", unit or "")


@dataclass(frozen=True)
class WorldRoi:
    """An axis-aligned box in world units: ``begin`` and ``shape``, each ``(z, y, x)``; the end
    is exclusive. ``unit`` only labels it (for messages)."""

    begin: tuple[float, ...]
    shape: tuple[float, ...]
    unit: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "begin", tuple(float(v) for v in self.begin))
        object.__setattr__(self, "shape", tuple(max(0.0, float(v)) for v in self.shape))
        if len(self.begin) != 3 or len(self.shape) != 3:
            raise ValueError(f"WorldRoi needs 3 values (z, y, x), got begin {self.begin}, shape {self.shape}")

    @property
    def end(self) -> tuple[float, ...]:
        return tuple(b + s for b, s in zip(self.begin, self.shape))

    @property
    def empty(self) -> bool:
        return min(self.shape) <= 0

    def intersect(self, other: WorldRoi) -> WorldRoi:
        """The common part (empty, with a zero extent, where they do not overlap)."""
        begin = tuple(max(a, b) for a, b in zip(self.begin, other.begin))
        end = tuple(min(a, b) for a, b in zip(self.end, other.end))
        return WorldRoi(begin, tuple(e - b for b, e in zip(begin, end)), self.unit or other.unit)

    def as_dict(self) -> dict:
        """``{"begin", "end", "shape", "unit"}`` for JSON reports."""
        return {"begin": list(self.begin), "end": list(self.end), "shape": list(self.shape), "unit": self.unit}

    @classmethod
    def from_dict(cls, values: dict) -> WorldRoi:
        """The ROI :meth:`as_dict` wrote."""
        return cls(values["begin"], values["shape"], values.get("unit"))

    def __str__(self) -> str:
        axes = ", ".join(f"{a} {_num(b)}:{_num(e)}" for a, b, e in zip(AXES, self.begin, self.end))
        return f"[{axes}]" + (f" {self.unit}" if self.unit else "")


def _num(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e15 else repr(value)


def world_roi(offset: Sequence[float], voxel_size: Sequence[float], shape: Sequence[int],
              unit: str | None = None) -> WorldRoi:
    """The world ROI of ``shape`` voxels ``(Z, Y, X)`` of ``voxel_size`` from ``offset``."""
    return WorldRoi(offset, tuple(n * v for n, v in zip(shape[-3:], voxel_size)), unit)


def number_list(values: Sequence[float]) -> str:
    """``"(40, 4, 4)"``: world numbers for messages."""
    return "(" + ", ".join(_num(v) for v in values) + ")"


def check_offset(where: str, voxel_size: Sequence[float], offset: Sequence[float]) -> None:
    """UserError unless ``offset`` is a whole number of voxels of ``voxel_size`` on every axis."""
    for axis, o, v in zip(AXES, offset, voxel_size):
        if v > 0 and abs(o / v - round(o / v)) > ALIGN_TOLERANCE:
            raise UserError(f"{where} has offset {number_list(offset)} that is not a multiple of its voxel size "
                            f"{number_list(voxel_size)} (z, y, x) on axis {axis}; fix the offset in its metadata")


def voxel_slices(roi: WorldRoi, offset: Sequence[float], voxel_size: Sequence[float]) -> tuple[slice, ...] | None:
    """The ``(z, y, x)`` voxel slices of a volume at ``offset`` with ``voxel_size`` that cover
    ``roi`` exactly; None where ``roi`` does not fall on that volume's voxel grid."""
    out = []
    for b, e, o, v in zip(roi.begin, roi.end, offset, voxel_size):
        start, stop = (b - o) / v, (e - o) / v
        if max(abs(start - round(start)), abs(stop - round(stop))) > ALIGN_TOLERANCE:
            return None
        out.append(slice(int(round(start)), int(round(stop))))
    return tuple(out)


def funlib_geometry(attrs: dict, ndim: int) -> tuple[list | None, list | None, str | None]:
    """``(voxel_size, offset, unit)`` (spatial, ``(z, y, x)``) from funlib / daisy / gunpowder
    attributes of an array of ``ndim`` axes: ``voxel_size`` or ``resolution``, ``offset``,
    ``units`` or ``unit``; lists over all ``ndim`` axes (``axis_names`` with channel axes) or
    over the spatial axes only. None for what is not there."""
    def spatial(key: str) -> list | None:
        value = attrs.get(key)
        if value is None or isinstance(value, (str, bytes)):
            return None
        values = list(np.ravel(value))
        names = attrs.get("axis_names")
        if isinstance(names, (list, tuple)) and len(names) == len(values) == ndim:
            # funlib marks channel axes with a trailing "^"
            values = [v for v, name in zip(values, names) if not str(name).endswith("^")]
        return values[-3:] if len(values) >= 3 else values

    voxel_size = spatial("voxel_size") or spatial("resolution")
    units = attrs.get("units", attrs.get("unit"))
    return voxel_size, spatial("offset"), unit_name(units)


def nifti_offset(affine: np.ndarray) -> tuple[float, float, float]:
    """The world position of voxel 0 of a NIfTI ``affine`` as ``(z, y, x)`` (0 on an axis where
    a damaged affine has no finite translation)."""
    return tuple(float(v) if np.isfinite(v) else 0.0 for v in np.asarray(affine, dtype=np.float64)[:3, 3][::-1])


def moved_affine(affine: np.ndarray, *, voxel_size: Sequence[float], offset: Sequence[float],
                 new_voxel_size: Sequence[float], new_offset: Sequence[float]) -> np.ndarray:
    """The NIfTI ``affine`` of a volume with ``voxel_size`` and ``offset`` (``(z, y, x)``), made
    for a grid of ``new_voxel_size`` starting at ``new_offset`` in the same volume's axes: an
    output that covers a sub-region, or another resolution, lands where it belongs."""
    matrix = np.asarray(affine, dtype=np.float64).copy()
    scale = np.array([n / v if v else 1.0 for n, v in zip(new_voxel_size, voxel_size)])[::-1]
    shift = np.array([(n - o) / v if v else 0.0 for n, o, v in zip(new_offset, offset, voxel_size)])[::-1]
    origin = matrix[:3, :3] @ shift + matrix[:3, 3]
    matrix[:3, :3] = matrix[:3, :3] * scale
    matrix[:3, 3] = origin
    return matrix


def placed_by_index(other, raw, role: str) -> bool:
    """Whether ``other`` (the ``role`` volume: labels, mask, affinities) is aligned with ``raw``
    by array index, as it is where either has no voxel size in its metadata (then
    ``has_voxel_size`` is false); it must then have the raw's shape.

    Raises:
        UserError: aligned by index with another shape than the raw's.
    """
    if raw.has_voxel_size and other.has_voxel_size:
        return False
    if other.spatial_shape != raw.spatial_shape:
        missing = role if not other.has_voxel_size else "raw"
        raise UserError(
            f"{role} {other.spec!r} has shape {other.spatial_shape} but raw {raw.spec!r} has {raw.spatial_shape}, and "
            f"without a voxel size in the metadata of the {missing} one cannot be placed over the other; give both "
            f"voxel size and offset metadata (resolution / offset attributes or OME-Zarr scale / translation), or "
            f"{role} of the raw's shape"
        )
    return True
