"""``psc-seg synth``: write synthetic volumes with ground truth to disk.

EM: one container with the volumes ``raw`` (uint8), ``labels`` (uint64 neuron ids) and
``mask`` (uint8, 1 on membranes), voxel size in nanometres: ``OUT.zarr`` (OME-Zarr image
groups ``OUT.zarr/raw`` ...) or ``OUT.h5`` (datasets ``/raw`` ...).
MRI: ``OUT_DIR/raw.nii.gz`` (float32) and ``OUT_DIR/labels.nii.gz`` (uint8: 0 background,
1 CSF, 2 GM, 3 WM) with a 1 mm affine.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from psc_seg.engine.pyramid import build_pyramids
from psc_seg.errors import UserError
from psc_seg.io import create_volume
from psc_seg.io.spec import HDF5_SUFFIXES, ZARR_SUFFIXES
from psc_seg.io.volume import lock_path
from psc_seg.synth import em_volume, mri_volume

EM_ARRAYS = ("raw", "labels", "mask")
MRI_FILES = ("raw.nii.gz", "labels.nii.gz")


def em_container(out: str | Path) -> tuple[Path, str]:
    """``(path, format)`` of an EM output: ``x.zarr`` -> zarr, ``x.h5`` / ``.hdf5`` / ``.hdf``
    -> hdf5, no suffix -> ``x.zarr``; any other suffix is a UserError."""
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix in ZARR_SUFFIXES:
        return path, "zarr"
    if suffix in HDF5_SUFFIXES:
        return path, "hdf5"
    if suffix == "":
        return path.with_suffix(".zarr"), "zarr"
    raise UserError(f"output {str(out)!r}: use a .zarr or .h5 name (or no suffix for zarr)")


def em_specs(path: Path, fmt: str) -> dict[str, str]:
    """Volume spec of each EM array in the container."""
    return {name: (f"{path}/{name}" if fmt == "zarr" else f"{path}:/{name}") for name in EM_ARRAYS}


def synth_em(
    out: str | Path,
    *,
    shape: Sequence[int] = (64, 128, 128),
    seed: int = 0,
    overwrite: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Generate an EM-like volume (:func:`psc_seg.synth.em_volume`) and write it to ``out``.

    Args:
        out: ``name.zarr`` (default format; a name without suffix gets ``.zarr``) or ``name.h5``.
        shape: ``(z, y, x)`` in voxels.
        seed: random seed.
        overwrite: replace an existing ``out`` (the whole container) that ``synth_em`` wrote
            (its arrays only, each with its ``synth`` provenance); without it, or for any other
            container, an existing output is a UserError and nothing is written. The container is written under a
            hidden partial name beside ``out`` and renamed when complete.
        options: further keyword arguments of :func:`psc_seg.synth.em_volume`.

    Returns:
        ``{"path", "format", "specs": {name: spec}, "shape", "voxel_size", "num_cells",
        "membrane_fraction"}``.
    """
    path, fmt = em_container(out)
    if path.exists() and not overwrite:
        raise UserError(f"{str(path)!r} exists; pass {{overwrite}} to replace it", options=("overwrite",))
    if path.exists():
        _check_ours(path, _not_synth_em(path, fmt))
    volume = em_volume(shape, seed=seed, **options)
    params = {"kind": "em", "shape": [int(s) for s in volume["raw"].shape], "seed": int(seed), **options}
    data = {"raw": volume["raw"], "labels": volume["labels"], "mask": volume["mask"].astype(np.uint8)}
    # written beside the target and renamed when complete: an interrupted run leaves no OUT
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    _remove(partial)
    for name, spec in em_specs(partial, fmt).items():
        _write(spec, data[name], voxel_size=volume["voxel_size"], unit="nanometer", params=params,
               labels=name != "raw")
    _remove(path)
    os.replace(partial, path)
    _remove(partial)  # its lock file
    specs = em_specs(path, fmt)
    return {
        "path": str(path),
        "format": fmt,
        "specs": specs,
        "shape": params["shape"],
        "voxel_size": [float(v) for v in volume["voxel_size"]],
        "num_cells": int(np.unique(volume["labels"][volume["labels"] > 0]).size),
        "membrane_fraction": float(volume["mask"].mean()),
    }


def synth_mri(
    out_dir: str | Path,
    *,
    shape: Sequence[int] = (64, 64, 64),
    seed: int = 0,
    overwrite: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Generate an MRI head phantom (:func:`psc_seg.synth.mri_volume`) and write
    ``out_dir/raw.nii.gz`` and ``out_dir/labels.nii.gz`` (1 mm voxels, identity affine).

    ``overwrite`` replaces existing files psc-seg wrote (their NIfTI description says so);
    without it, or for another file of those names, an existing one is a UserError and nothing
    is written. ``options``: further keyword arguments of ``mri_volume``.

    Returns:
        ``{"raw", "labels" (paths), "shape", "class_fractions": {name: fraction}}``.
    """
    from psc_seg.synth.mri import CLASSES

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{str(out_dir)!r} is a file; give a directory for the NIfTI outputs")
    paths = {name.split(".")[0]: out_dir / name for name in MRI_FILES}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]!r} exists; pass {{overwrite}} to replace it", options=("overwrite",))
    for path in existing:
        _check_ours(Path(path), _not_psc_seg_nifti(path))
    volume = mri_volume(shape, seed=seed, **options)
    params = {"kind": "mri", "shape": [int(s) for s in volume["raw"].shape], "seed": int(seed), **options}
    for name, path in paths.items():
        _write(str(path), volume[name], voxel_size=volume["voxel_size"], unit="millimeter", params=params,
               overwrite=overwrite, labels=name != "raw")
    labels = volume["labels"]
    return {
        "raw": str(paths["raw"]),
        "labels": str(paths["labels"]),
        "shape": params["shape"],
        "class_fractions": {CLASSES[k]: float((labels == k).mean()) for k in sorted(CLASSES)},
    }


def _check_ours(path: Path, reason: str | None) -> None:
    """UserError when ``reason`` says ``path`` is not what psc-seg synth wrote: ``overwrite``
    replaces only that."""
    if reason:
        raise UserError(f"{str(path)!r} was not written by psc-seg synth ({reason}); {{overwrite}} replaces only "
                        "what psc-seg wrote: choose another name, or move it away yourself", options=("overwrite",))


def _not_synth_em(path: Path, fmt: str) -> str | None:
    """Why the container ``path`` is not one :func:`synth_em` wrote (None if it is: the arrays
    of :data:`EM_ARRAYS`, each with its ``synth`` provenance, and nothing else)."""
    from psc_seg.io import META_KEY, open_volume

    if fmt == "zarr":
        if not path.is_dir():
            return "it is a file"
        members = {p.name for p in path.iterdir()} - {"zarr.json", ".zgroup", ".zattrs"}
    else:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                members = set(f.keys())
        except OSError:
            return "it is not an HDF5 file"
    if members - set(EM_ARRAYS) or not members:
        shown = sorted(members - set(EM_ARRAYS)) or ["no raw, labels or mask"]
        return f"it holds {', '.join(shown[:3])}{', ...' if len(shown) > 3 else ''}"
    for name, spec in em_specs(path, fmt).items():
        if name not in members:
            continue
        try:
            provenance = open_volume(spec).attrs.get(META_KEY, {}).get("provenance") or {}
        except UserError:
            return f"its {name} cannot be read as a volume"
        if "synth" not in provenance:
            return f"its {name} has no psc-seg synth provenance"
    return None


def _not_psc_seg_nifti(path: str) -> str | None:
    """Why the NIfTI file ``path`` is not one psc-seg wrote (its description says so)."""
    from psc_seg.io import open_volume

    try:
        header = open_volume(path).header
    except UserError:
        return "it is not a readable NIfTI file"
    descrip = header["descrip"].item()
    descrip = descrip.decode(errors="replace") if isinstance(descrip, bytes) else str(descrip)
    return None if descrip.startswith("psc-seg") else "its NIfTI description is not psc-seg's"


def _remove(path: Path) -> None:
    """Delete a file or directory tree if it exists, and the lock file psc_seg.io keeps beside
    an HDF5 file."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    lock_path(path).unlink(missing_ok=True)


def _write(spec: str, data: np.ndarray, *, voxel_size, unit: str, params: dict, overwrite: bool = False,
           labels: bool = False) -> None:
    """Write one whole array as a finished volume (incomplete until the last step); a zarr one
    with its OME-Zarr pyramid (``labels``: a label volume, by mode)."""
    volume = create_volume(
        spec,
        shape=data.shape,
        dtype=data.dtype,
        chunks=(64, 64, 64),
        voxel_size=[float(v) for v in voxel_size],
        unit=unit,
        provenance={"synth": params},
        overwrite=overwrite,
        pyramid=True,
        labels=labels,
    )
    volume.write(tuple(slice(0, n) for n in data.shape), data)
    build_pyramids([volume], progress=False)
    volume.finalize()
    volume.close()
