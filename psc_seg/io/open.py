"""``open_volume`` and ``create_volume``: the two entry points to volumes on disk."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from psc_seg import __version__
from psc_seg.errors import UserError
from psc_seg.files import fixable_writes
from psc_seg.io import stores
from psc_seg.io.n5 import N5Volume
from psc_seg.io.pyramid import Level, pyramid_levels
from psc_seg.io.geometry import check_offset, moved_affine
from psc_seg.io.spec import STAGED, VolumeSpec, parse_spec
from psc_seg.io.volume import (
    META_KEY, SPATIAL_AXES, BufferedVolume, Hdf5Volume, NiftiVolume, NpyVolume, TiffVolume, Volume, ZarrVolume,
    _file_lock, check_affine, check_dims, check_hdf5_room, h5_attr, new_buffered, partial_path, remove_output,
)

DEFAULT_CHUNK = 64
_READERS = {"zarr": ZarrVolume, "n5": N5Volume, "hdf5": Hdf5Volume, "nifti": NiftiVolume, "tiff": TiffVolume, "npy": NpyVolume}


def open_volume(spec: str | Path | VolumeSpec, mode: str = "r") -> Volume:
    """Open the volume named by ``spec`` (see :mod:`psc_seg.io.spec`) without reading its data.

    ``mode``: "r" (read) or "r+" (write into an existing zarr / HDF5 volume, or continue an
    unfinished NIfTI / TIFF / npy output). UserError (one line) for a missing file, a missing
    dataset inside a container (listing what is there), data that is not 3D / 4D, or an
    unsupported extension.
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"open_volume: mode must be 'r' or 'r+', got {mode!r}")
    s = parse_spec(spec)
    if mode == "r+" and s.url:
        stores.check_writable(s.url)
    if s.format in ("nifti", "tiff", "npy"):
        if mode == "r+":
            return BufferedVolume(s, mode="r+")
        if not s.path.exists() and partial_path(s.path).exists():
            raise UserError(f"{str(s.path)!r} is unfinished (only {partial_path(s.path).name} exists); "
                            "rerun the command that writes it with --resume")
    return _READERS[s.format](s, mode=mode)


def volume_exists(spec: str | Path | VolumeSpec) -> bool:
    """Whether something (finished or not) already exists where ``spec`` points."""
    s = parse_spec(spec)
    if s.format in ("zarr", "n5"):
        return stores.exists(stores.join(s.url or s.path, s.inner))
    if s.format == "hdf5":
        if not s.path.is_file():
            return False
        import h5py

        if not h5py.is_hdf5(s.path):
            raise UserError(f"{str(s.path)!r} exists and is not an HDF5 file; choose another file for the output")
        with _file_lock(s.path), h5py.File(s.path, "r") as f:
            return (s.inner in f) if s.inner else True
    return s.path.exists() or partial_path(s.path).exists()


def volume_complete(spec: str | Path | VolumeSpec) -> bool:
    """Whether the volume at ``spec`` exists and was finished (an output marked complete, or a
    NIfTI / TIFF / npy file that is no longer being assembled)."""
    s = parse_spec(spec)
    if s.format in ("nifti", "tiff", "npy"):
        return s.path.exists() and not partial_path(s.path).exists()
    return open_volume(spec).complete


def default_provenance(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"psc_seg_version", "command"}`` plus ``extra`` (e.g. the resolved config)."""
    return {"psc_seg_version": __version__, "command": shlex.join(["psc-seg", *sys.argv[1:]]), **(extra or {})}


def ome_multiscales(*, name: str, axis_names: Sequence[str], voxel_size: Sequence[float], offset: Sequence[float],
                    unit: str | None, version: str, levels: Sequence[Level] = (), method: str | None = None
                    ) -> dict[str, Any]:
    """One OME-Zarr multiscales entry: level ``"0"``, then ``levels`` as ``"1"``, ``"2"``, ...
    (:mod:`psc_seg.io.pyramid`; channel axis scale 1), downsampled by ``method`` (kept as
    the entry's ``type``)."""
    axes = []
    for ax in axis_names:
        if ax in SPATIAL_AXES:
            axes.append({"name": ax, "type": "space", **({"unit": unit} if unit else {})})
        else:
            axes.append({"name": ax, "type": "channel"})
    lead = len(axis_names) - 3
    placed = [(voxel_size, offset), *((level.voxel_size, level.translation) for level in levels)]
    ms: dict[str, Any] = {
        "name": name,
        "axes": axes,
        "datasets": [{
            "path": str(index),
            "coordinateTransformations": [
                {"type": "scale", "scale": [1.0] * lead + [float(v) for v in size]},
                {"type": "translation", "translation": [0.0] * lead + [float(v) for v in where]},
            ],
        } for index, (size, where) in enumerate(placed)],
    }
    if levels and method:
        ms["type"] = method
    if version == "0.4":
        ms["version"] = "0.4"
    return ms


def create_volume(
    spec: str | Path | VolumeSpec,
    *,
    shape: Sequence[int],
    dtype: Any,
    chunks: Sequence[int] | None = None,
    voxel_size: Sequence[float] | None = None,
    offset: Sequence[float] | None = None,
    unit: str | None = None,
    axis_names: Sequence[str] | None = None,
    attrs: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    reference: Volume | None = None,
    overwrite: bool = False,
    pyramid: bool = False,
    labels: bool = False,
) -> Volume:
    """Create an empty output volume and return it open for writing (mode "r+").

    Args:
        spec: where to write (see :mod:`psc_seg.io.spec`). ``out.zarr`` or
            ``out.zarr/name``: an OME-Zarr image group (array ``0``; zarr v3 and OME-Zarr 0.5,
            or v2 / 0.4 inside an existing v2 container). Floating-point data is compressed
            with Blosc (LZ4, byte shuffle): for a block of float32 affinities 8x faster to
            write than zarr's default zstd, and as small (``benchmarks/RESULTS.md``);
            integers (labels) with zstd, 3x smaller than LZ4 for uint64 labels.
            ``out.h5:/name``:
            a gzip-compressed chunked HDF5 dataset. ``.nii[.gz]``, ``.tif``, ``.npy``:
            assembled in a partial file, written at :meth:`Volume.finalize`.
        shape: ``(Z, Y, X)`` or ``(C, Z, Y, X)``.
        dtype: numpy dtype.
        chunks: spatial ``(z, y, x)`` chunk shape (all channels share a chunk); default
            64 per axis (capped at the shape). Align it with the write ROIs of the blocks.
        voxel_size, offset, unit: ``(z, y, x)`` in world units; default: ``reference``'s or
            1 / 0 / none.
        axis_names: default ``("z", "y", "x")`` or ``("c", "z", "y", "x")``.
        attrs: extra metadata stored with the volume.
        provenance: extra provenance (e.g. ``{"config": {...}}``); the psc-seg version and the
            command line are added.
        reference: a volume whose voxel size / offset / unit (and, for NIfTI, affine and
            header) the output copies. Its NIfTI affine (a NIfTI, or a volume made from one)
            goes with the output, moved to the output's offset and voxel size: into a NIfTI
            output's header, into ``psc_seg.affine`` of a zarr or HDF5 output.
        overwrite: replace an existing output; without it an existing one is a UserError.
        pyramid: a zarr output is an OME-Zarr multiscale pyramid: the arrays of the levels
            below level 0 (:func:`~psc_seg.io.pyramid.pyramid_levels`) are made empty and
            listed now, and filled by :func:`psc_seg.engine.build_pyramids` once level 0 is
            written. Other formats have no pyramid.
        labels: the output is a label volume (a segmentation, class labels): a zarr output
            carries OME-Zarr ``image-label`` metadata and its pyramid keeps ids (mode, not
            mean). Inside a container whose root is an OME-Zarr image, a label volume may be
            written where the OME-Zarr labels convention puts it, ``CONTAINER.zarr/labels/NAME``
            (listed in the ``labels`` group).

    The output is marked incomplete (``psc_seg.complete = false``) until ``finalize()``.
    """
    s = parse_spec(spec)
    shape = tuple(int(v) for v in shape)
    channels = check_dims(shape, f"output {str(s)!r}")
    if min(shape) < 1:
        raise UserError(f"output {str(s)!r}: shape {shape} has an empty axis")
    check_affine(s, reference)
    if s.format == "n5":
        raise UserError(f"output {str(s)!r}: psc-seg reads N5 but does not write it; write a zarr output "
                        "(e.g. out.zarr), which the same tools read")
    if s.url:
        stores.check_writable(s.url)
    if volume_exists(s):
        if not overwrite:
            raise UserError(f"output {str(s)!r} already exists; pass {{overwrite}} to replace it", options=("overwrite",))
        remove_output(s)
    if reference is not None:
        voxel_size = voxel_size if voxel_size is not None else reference.voxel_size
        offset = offset if offset is not None else reference.offset
        unit = unit if unit is not None else reference.unit
    voxel_size = tuple(float(v) for v in (voxel_size if voxel_size is not None else (1.0, 1.0, 1.0)))
    offset = tuple(float(v) for v in (offset if offset is not None else (0.0, 0.0, 0.0)))
    affine = None
    if reference is not None and reference.affine is not None:
        # a non-finite affine is not carried (check_affine refuses it for NIfTI outputs)
        if np.isfinite(reference.affine).all():
            affine = moved_affine(reference.affine, voxel_size=reference.voxel_size, offset=reference.offset,
                                  new_voxel_size=voxel_size, new_offset=offset)
    else:
        check_offset(f"output {str(s)!r}", voxel_size, offset)
    if axis_names is None:
        axis_names = ("z", "y", "x") if channels is None else ("c", "z", "y", "x")
    axis_names = tuple(axis_names)
    if len(axis_names) != len(shape):
        raise ValueError(f"create_volume: axis_names {axis_names} do not match shape {shape}")
    spatial = shape[-3:]
    chunks = tuple(min(int(c), s_) for c, s_ in zip(chunks or (DEFAULT_CHUNK,) * 3, spatial))
    if len(chunks) != 3:
        raise ValueError(f"create_volume: chunks must be spatial (z, y, x), got {chunks}")
    full_chunks = chunks if channels is None else (channels, *chunks)
    meta = {META_KEY: {"complete": False, "provenance": default_provenance(provenance),
                       **({"affine": affine.tolist()} if affine is not None else {})}}
    user_attrs = {**(attrs or {}), **meta}
    dtype = np.dtype(dtype)

    with fixable_writes(f"create output {str(s)!r}"):  # an unwritable folder, a full disk: one line
        if s.format == "zarr":
            try:
                _create_zarr(s, shape=shape, dtype=dtype, chunks=full_chunks, voxel_size=voxel_size, offset=offset,
                             unit=unit, axis_names=axis_names, attrs=user_attrs, pyramid=pyramid, labels=labels)
            except FileNotFoundError as exc:
                if not s.url:
                    raise
                raise stores.missing_bucket(str(s), exc) from None
            return ZarrVolume(s, mode="r+")
        if s.format == "hdf5":
            _create_hdf5(s, shape=shape, dtype=dtype, chunks=full_chunks, voxel_size=voxel_size, offset=offset,
                         unit=unit, axis_names=axis_names, attrs=user_attrs)
            return Hdf5Volume(s, mode="r+")
        return new_buffered(s, shape=shape, dtype=dtype, voxel_size=voxel_size, offset=offset, unit=unit,
                            attrs=user_attrs, reference=reference, affine=affine)


def _create_zarr(s: VolumeSpec, *, shape, dtype, chunks, voxel_size, offset, unit, axis_names, attrs,
                 pyramid: bool = False, labels: bool = False) -> None:
    import numcodecs
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    zarr_format = 3
    root = s.url or s.path
    if stores.exists(root):
        try:
            zarr_format = zarr.open_group(stores.zarr_store(root), mode="r").metadata.zarr_format
        except Exception as exc:
            raise UserError(f"{str(s.path)!r} exists and is not a zarr group ({exc}); choose another output") from None
    if s.inner:
        *parents, name = s.inner.split("/")
        in_labels = labels and parents == [LABELS_GROUP] and _zarr_node_kind(root) == "image"
        for depth in range(len(parents) + 1):
            node = stores.join(root, *parents[:depth])
            kind = _zarr_node_kind(node)
            if kind is not None and not (in_labels and depth == 0):  # the OME-Zarr labels convention
                raise UserError(f"output {str(s)!r} would lie inside the {kind} {str(node)!r}, which holds data of its "
                                "own; choose an output in a group or a new container")
        parent = zarr.open_group(stores.zarr_store(root, mode="a"), mode="a", zarr_format=zarr_format)
        for part in parents:
            parent = parent.require_group(part)
        group = parent.create_group(name, overwrite=True)
    else:
        in_labels = False
        name = s.path.stem
        group = zarr.open_group(stores.zarr_store(root, mode="w"), mode="w", zarr_format=zarr_format)
    name = name.removesuffix(f".{STAGED}")  # a replacement is named as the output it replaces
    version = "0.5" if zarr_format == 3 else "0.4"
    levels = pyramid_levels(shape, voxel_size, offset) if pyramid else []
    ms = ome_multiscales(name=name, axis_names=axis_names, voxel_size=voxel_size, offset=offset, unit=unit,
                         version=version, levels=levels, method="mode" if labels else "mean")
    ome: dict[str, Any] = {"multiscales": [ms]}
    if labels:
        ome["image-label"] = {"source": {"image": "../../"}} if in_labels else {}
        if zarr_format == 2:
            ome["image-label"]["version"] = version
    group.attrs.update({**({"ome": {"version": "0.5", **ome}} if zarr_format == 3 else ome), **attrs})
    if in_labels:
        _list_label(stores.join(root, LABELS_GROUP), name, zarr_format)
    kwargs = {"dimension_names": list(axis_names)} if zarr_format == 3 else {}
    if np.dtype(dtype).kind == "f":  # network outputs: Blosc LZ4 + byte shuffle
        kwargs["compressors"] = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle") if zarr_format == 3
                                 else numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE))
    else:  # labels, raw: zstd
        kwargs["compressors"] = ZstdCodec(level=3) if zarr_format == 3 else numcodecs.Zstd(level=3)
    group.create_array("0", shape=shape, dtype=dtype, chunks=chunks, fill_value=0, **kwargs)
    lead = tuple(shape[:-3])
    for index, level in enumerate(levels, start=1):
        group.create_array(str(index), shape=(*lead, *level.shape), dtype=dtype, fill_value=0,
                           chunks=(*lead, *(min(c, n) for c, n in zip(chunks[-3:], level.shape))), **kwargs)


LABELS_GROUP = "labels"  # where the OME-Zarr labels convention puts the label images of an image


def _list_label(where: Path | str, name: str, zarr_format: int) -> None:
    """Add ``name`` to the ``labels`` list of the OME-Zarr labels group ``where``."""
    import zarr

    group = zarr.open_group(stores.zarr_store(where, mode="a"), mode="a", zarr_format=zarr_format)
    attrs = dict(group.attrs)
    held = attrs.get("ome", {}) if zarr_format == 3 else attrs
    names = [n for n in held.get("labels", []) if n != name] + [name]
    group.attrs.update({"ome": {**held, "version": "0.5", "labels": names}} if zarr_format == 3 else {"labels": names})


def _zarr_node_kind(node: Path | str) -> str | None:
    """``"array"`` if the folder (or URL) ``node`` is a zarr array (v3 ``zarr.json`` of node type
    array, or v2), ``"image"`` if it is an OME-Zarr image group, else None."""
    if stores.read_bytes(stores.join(node, ".zarray")) is not None:
        return "array"
    try:
        meta = json.loads(stores.read_bytes(stores.join(node, "zarr.json")) or b"{}")
        attrs = meta.get("attributes", {})
        if not attrs and meta.get("node_type") is None:  # zarr v2
            attrs = json.loads(stores.read_bytes(stores.join(node, ".zattrs")) or b"{}")
    except (OSError, ValueError):
        return None
    if meta.get("node_type") == "array":
        return "array"
    return "image" if "multiscales" in attrs.get("ome", attrs) else None


def _create_hdf5(s: VolumeSpec, *, shape, dtype, chunks, voxel_size, offset, unit, axis_names, attrs) -> None:

    import h5py

    if not s.inner:
        raise UserError(f"name the dataset of HDF5 output {str(s.path)!r}, e.g. {s.path}:/volumes/output")
    s.path.parent.mkdir(parents=True, exist_ok=True)
    check_hdf5_room(s.path)
    with _file_lock(s.path), h5py.File(s.path, "a") as f:
        ds = f.create_dataset(s.inner, shape=shape, dtype=dtype, chunks=chunks, compression="gzip",
                              compression_opts=1, fillvalue=0)
        ds.attrs["resolution"] = list(voxel_size)
        ds.attrs["offset"] = list(offset)
        ds.attrs["axis_names"] = list(axis_names)
        if unit:
            ds.attrs["unit"] = unit
        for k, v in attrs.items():
            ds.attrs[k] = h5_attr(v)
