"""Volume spec strings: one string names one volume.

=========================================  ======================================================
spec                                       volume
=========================================  ======================================================
``vol.zarr``                               zarr v2/v3 array, or OME-Zarr image group (level 0)
``vol.zarr/group/array``                   a node inside a zarr container (``vol.zarr:/group``
                                           is accepted too)
``vol.h5:/group/dataset``                  HDF5 dataset (also ``.hdf5``, ``.hdf``); ``vol.h5``
                                           alone if the file holds exactly one dataset
``scan.nii``, ``scan.nii.gz``              NIfTI (stored x, y, z; exposed as z, y, x)
``stack.tif``, ``stack.tiff``              TIFF stack (z, y, x)
``vol.npy``                                NumPy array file
=========================================  ======================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from psc_seg.errors import UserError

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
ZARR_SUFFIXES = (".zarr",)
SUPPORTED = "a .zarr container (vol.zarr or vol.zarr/group/array), vol.h5:/dataset, .nii/.nii.gz, .tif or .npy"


@dataclass(frozen=True)
class VolumeSpec:
    """A parsed spec: ``format`` in {"zarr", "hdf5", "nifti", "tiff", "npy"}, the file or
    container ``path`` and the ``inner`` path of a node inside a container ("" for the root)."""

    format: str
    path: Path
    inner: str = ""
    text: str = ""

    def __str__(self) -> str:
        return self.text or (f"{self.path}/{self.inner}" if self.inner else str(self.path))


def _lower_name(path: str) -> str:
    return path.rstrip("/").lower()


def parse_spec(spec: str | Path | VolumeSpec) -> VolumeSpec:
    """Parse a volume spec string; UserError naming the supported forms if it fits none."""
    if isinstance(spec, VolumeSpec):
        return spec
    text = str(spec)
    # HDF5: "file.h5:/inner" or "file.h5"
    for suffix in HDF5_SUFFIXES:
        marker = suffix + ":"
        idx = text.lower().find(marker)
        if idx >= 0:
            return VolumeSpec("hdf5", Path(text[: idx + len(suffix)]), text[idx + len(marker):].strip("/"), text)
        if _lower_name(text).endswith(suffix):
            return VolumeSpec("hdf5", Path(text), "", text)
    # zarr: the first path component ending in .zarr is the container
    parts = text.replace(":/", "/").split("/")
    for i, part in enumerate(parts):
        if part.lower().endswith(ZARR_SUFFIXES):
            container = "/".join(parts[: i + 1]) or "/"
            inner = "/".join(p for p in parts[i + 1:] if p)
            return VolumeSpec("zarr", Path(container), inner, text)
    name = _lower_name(text)
    for fmt, suffixes in (("nifti", NIFTI_SUFFIXES), ("tiff", TIFF_SUFFIXES), ("npy", NPY_SUFFIXES)):
        if name.endswith(suffixes):
            return VolumeSpec(fmt, Path(text), "", text)
    raise UserError(f"unsupported volume {text!r}: use {SUPPORTED}")


STAGED = "psc-seg-new"


def staged_spec(spec: str | Path | VolumeSpec) -> VolumeSpec:
    """Where a replacement of the output ``spec`` is written until it is complete
    (``overwrite``), beside the output it replaces: ``out.zarr`` -> ``out.psc-seg-new.zarr``,
    ``d.zarr/affs`` -> ``d.zarr/affs.psc-seg-new``, ``f.h5:/affs`` -> ``f.h5:/affs.psc-seg-new``,
    ``seg.nii.gz`` -> ``seg.psc-seg-new.nii.gz``."""
    s = parse_spec(spec)
    if s.inner:
        return parse_spec(f"{s.path}{':/' if s.format == 'hdf5' else '/'}{s.inner}.{STAGED}")
    name = s.path.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else s.path.suffix
    return parse_spec(str(s.path.with_name(f"{name[:len(name) - len(suffix)]}.{STAGED}{suffix}")))


def _node(spec: VolumeSpec) -> tuple[Path, ...]:
    """Where ``spec`` lives, as path components: a zarr node is a folder, an HDF5 node is a
    path inside its file (the file counts as one more level), anything else is its file."""
    parts = spec.path.resolve().parts
    inner = tuple(p for p in spec.inner.split("/") if p)
    if spec.format == "zarr":
        return (*parts, *inner)
    if spec.format == "hdf5":
        return (*parts, ":", *inner)
    return parts


def overlaps(a: str | Path | VolumeSpec, b: str | Path | VolumeSpec) -> bool:
    """Whether the volumes ``a`` and ``b`` share storage: the same node, or one inside the
    other (``d.zarr`` holds ``d.zarr/raw``; ``d.zarr/raw`` holds its array ``d.zarr/raw/0``; an
    HDF5 file holds its datasets). Writing one of two overlapping volumes can destroy the other."""
    na, nb = _node(parse_spec(a)), _node(parse_spec(b))
    return na[:len(nb)] == nb or nb[:len(na)] == na


def check_apart(input: str | Path | VolumeSpec, outputs) -> None:
    """UserError if any of the ``outputs`` :func:`overlaps` the ``input``: checked before an
    output is created, since creating it (``overwrite`` above all) would delete the input."""
    for output in outputs:
        if overlaps(input, output):
            raise UserError(f"output {str(output)!r} is the input volume {str(input)!r}, lies inside it or holds it: "
                            "writing the output would destroy the input; choose an output outside the input's file "
                            "or container")
