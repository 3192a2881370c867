"""``Volume``: a lazily read / written 3D ``(z, y, x)`` or 4D ``(c, z, y, x)`` array with
voxel size, offset and metadata, and its format back ends (zarr, HDF5, NIfTI, TIFF, NumPy).

Coordinates: ``voxel_size`` and ``offset`` are ``(z, y, x)`` in world units (``unit``, e.g.
nanometer for EM, millimeter for MRI); ``offset`` is the world position of voxel ``(0, 0, 0)``;
``roi`` is the :class:`~psc_seg.io.geometry.WorldRoi` the volume covers (where each format
keeps them: :mod:`psc_seg.io.geometry`).
Regions passed to :meth:`Volume.read` / :meth:`Volume.write` are in voxels of the array
(tuples of slices, or any object with ``to_slices()`` such as :class:`psc_seg.engine.Roi`);
three slices address ``(z, y, x)`` of every channel.

NIfTI stores ``(x, y, z[, c])``; a NIfTI volume is exposed as ``(z, y, x)`` / ``(c, z, y, x)``
like every other volume (``voxel_size`` is the header's zooms reversed, ``offset`` the
affine's translation reversed), and its ``affine`` and ``header`` are kept unchanged, so
outputs written with ``reference=`` land exactly on the input in any viewer (zarr and HDF5
outputs keep the affine in ``psc_seg.affine``).

Written volumes are not *complete* until :meth:`Volume.finalize`: zarr and HDF5 outputs carry
``psc_seg.complete = false`` until then; NIfTI, TIFF and ``.npy`` outputs are assembled in a
``<name>.partial.npy`` file beside the target and only appear under their name at
:meth:`Volume.finalize`.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import glob
import itertools
import json
import os
import shutil
import weakref
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from psc_seg.errors import UserError
from psc_seg.files import fixable_writes, os_fault
from psc_seg.io import stores
from psc_seg.io.geometry import WorldRoi, check_offset, funlib_geometry, nifti_offset, unit_name, world_roi
from psc_seg.io.spec import VolumeSpec

META_KEY = "psc_seg"  # our attribute namespace: {"complete": bool, "provenance": {...}, ...}
SPATIAL_AXES = ("z", "y", "x")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def voxels(key: Sequence[slice]) -> str:
    """The spatial part of a region, for messages: ``"voxels z 0:16, y 16:32, x 0:16"``."""
    return "voxels " + ", ".join(f"{axis} {k.start}:{k.stop}" for axis, k in zip(SPATIAL_AXES, key[-3:]))


def _unreadable(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a back end reading a region inside the array, says the stored
    data cannot be read (a damaged chunk, a failed decompression, an OS error), not that the
    code is wrong."""
    return (isinstance(exc, (OSError, RuntimeError, ValueError, EOFError, zlib.error))
            and not isinstance(exc, (UserError, NotImplementedError, RecursionError)))


def check_dims(shape: Sequence[int], where: str) -> int | None:
    """Channel count (None for 3D) of a ``shape``; UserError unless it is 3D or 4D."""
    if len(shape) == 3:
        return None
    if len(shape) == 4:
        return int(shape[0])
    raise UserError(
        f"{where} is {len(shape)}D (shape {tuple(shape)}); psc-seg needs a 3D (z, y, x) or 4D (c, z, y, x) volume"
    )



def sidecar_beside(spec: VolumeSpec, name: str) -> Path | str:
    """A hidden bookkeeping folder beside the file or container of ``spec``:
    ``.<file>[.<inner path>].psc-seg-<name>`` (a URL beside a remote container)."""
    inner = f".{spec.inner.replace('/', '_')}" if spec.inner else ""
    hidden = f".{spec.path.name}{inner}.psc-seg-{name}"
    return stores.join(stores.parent(spec.url), hidden) if spec.url else spec.path.with_name(hidden)

def known_voxel_size(voxel_size: Sequence[float], unit: str | None) -> bool:
    """Whether ``voxel_size`` (in ``unit``) was set by someone: not the ``(1, 1, 1)`` without a
    unit that formats hold when nobody set one (OME-Zarr needs a scale, NIfTI zooms default
    to 1)."""
    return not (tuple(float(v) for v in voxel_size) == (1.0, 1.0, 1.0) and not unit)


class Volume:
    """A 3D ``(z, y, x)`` or 4D ``(c, z, y, x)`` array on disk, read and written lazily.

    Attributes:
        spec: the spec string it was opened from.
        format: "zarr", "hdf5", "nifti", "tiff" or "npy".
        shape: full array shape, ``(Z, Y, X)`` or ``(C, Z, Y, X)``.
        dtype: numpy dtype of the stored values.
        voxel_size: ``(z, y, x)`` size of a voxel in ``unit``.
        offset: ``(z, y, x)`` world position of voxel 0 in ``unit``.
        channels: None for 3D volumes, C for ``(C, Z, Y, X)``.
        chunks: storage chunk shape (same length as ``shape``), or None if unchunked.
        unit: spatial unit name ("nanometer", "millimeter") or None.
        roi: the :class:`~psc_seg.io.geometry.WorldRoi` covered, ``offset`` to
            ``offset + spatial_shape * voxel_size``.
        affine: NIfTI's 4 x 4 voxel-to-world matrix (``x, y, z``) of a NIfTI volume or of an
            output made from one (``psc_seg.affine``), else None.
        attrs: user metadata (a copy; change it with :meth:`update_attrs`).
        resumable: written by a run that a rerun with ``resume`` continues (set by
            :func:`psc_seg.engine.prepare_outputs`); a write that fails for a reason the user
            can fix (full disk, permissions) says to rerun so.
    """

    format = ""
    resumable = False
    affine: np.ndarray | None = None

    def __init__(
        self, spec: VolumeSpec, *, mode: str, shape: Sequence[int], dtype: Any,
        voxel_size: Sequence[float] | None = None, offset: Sequence[float] | None = None,
        chunks: Sequence[int] | None = None, unit: str | None = None, attrs: dict | None = None,
        affine: Any = None,
    ) -> None:
        self.spec_obj = spec
        self.spec = str(spec)
        self.mode = mode
        self.shape = tuple(int(s) for s in shape)
        self.channels = check_dims(self.shape, f"volume {self.spec!r}")
        if min(self.shape) < 1:
            raise UserError(f"volume {self.spec!r} is empty: shape {self.shape}; name a volume that holds voxels")
        self.dtype = np.dtype(dtype)
        self.voxel_size = tuple(float(v) for v in (voxel_size or (1.0, 1.0, 1.0)))
        self.offset = tuple(float(v) for v in (offset or (0.0, 0.0, 0.0)))
        if len(self.voxel_size) != 3 or len(self.offset) != 3:
            raise UserError(f"volume {self.spec!r}: voxel size and offset must have 3 values (z, y, x)")
        self.chunks = tuple(int(c) for c in chunks) if chunks else None
        self.unit = unit
        self._attrs = dict(attrs or {})
        stored = self._attrs.get(META_KEY, {}).get("affine") if isinstance(self._attrs.get(META_KEY), dict) else None
        affine = affine if affine is not None else stored
        self.affine = np.asarray(affine, dtype=np.float64) if affine is not None else None
        if self.affine is None:  # a NIfTI affine places voxels anywhere; metadata offsets are on the grid
            check_offset(f"volume {self.spec!r}", self.voxel_size, self.offset)

    # ------------------------------------------------------------------ properties
    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        return self.shape[-3:]  # type: ignore[return-value]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def roi(self) -> WorldRoi:
        """The world ROI covered (:class:`~psc_seg.io.geometry.WorldRoi`, ``(z, y, x)``)."""
        return world_roi(self.offset, self.voxel_size, self.spatial_shape, self.unit)

    @property
    def attrs(self) -> dict:
        return json.loads(json.dumps(self._attrs))

    @property
    def has_voxel_size(self) -> bool:
        """Whether the metadata gives a voxel size (:func:`known_voxel_size`)."""
        return known_voxel_size(self.voxel_size, self.unit)

    @property
    def complete(self) -> bool:
        """False for an output whose writing has not been finalised (interrupted run)."""
        return bool(self._attrs.get(META_KEY, {}).get("complete", True))

    def __repr__(self) -> str:
        return (f"Volume({self.spec!r}, format={self.format}, shape={self.shape}, dtype={self.dtype}, "
                f"voxel_size={self.voxel_size})")

    # ------------------------------------------------------------------ access
    def key(self, region: Any = None) -> tuple[slice, ...]:
        """Full-rank tuple of slices for ``region`` (see the module docstring); ValueError if it
        leaves the array."""
        return self._parse(region)[0]

    def _parse(self, region: Any) -> tuple[tuple[slice, ...], tuple[int, ...]]:
        """``(key(region), axes indexed by an integer)``: the latter are dropped by read."""
        if region is None:
            items: tuple = ()
        elif hasattr(region, "to_slices"):
            items = tuple(region.to_slices())
        elif isinstance(region, (slice, int, np.integer)):
            items = (region,)
        else:
            items = tuple(region)
        if self.channels is not None and len(items) == 3:
            items = (slice(None), *items)
        if len(items) > self.ndim:
            raise ValueError(f"{self.spec}: region {region} has more axes than the volume {self.shape}")
        items = items + (slice(None),) * (self.ndim - len(items))
        out, dropped = [], []
        for axis, (s, size) in enumerate(zip(items, self.shape)):
            if isinstance(s, (int, np.integer)):
                if not 0 <= s < size:
                    raise ValueError(f"{self.spec}: index {s} outside [0, {size})")
                out.append(slice(int(s), int(s) + 1))
                dropped.append(axis)
                continue
            start = 0 if s.start is None else int(s.start)
            stop = size if s.stop is None else int(s.stop)
            if s.step not in (None, 1) or not 0 <= start <= stop <= size:
                raise ValueError(f"{self.spec}: region {region} leaves the array of shape {self.shape}")
            out.append(slice(start, stop))
        return tuple(out), tuple(dropped)

    def read(self, region: Any = None) -> np.ndarray:
        """The values in ``region`` (voxels) as a numpy array; integer indices drop their axis
        as in numpy; ``None`` reads everything (only for small volumes)."""
        key, drop = self._parse(region)
        try:
            data = np.asarray(self._read(key))
        except Exception as exc:
            if not _unreadable(exc):
                raise
            raise self._read_error(key, exc) from exc
        return data.squeeze(axis=drop) if drop else data

    def _read_error(self, key: tuple[slice, ...], exc: BaseException) -> UserError:
        """The one-line error for data of ``key`` that cannot be read: naming the storage chunk
        at fault where there are several, and what to do."""
        key, exc = self._bad_chunk(key, exc)
        where = f"{self.spec!r} at {voxels(key)}"
        fault = os_fault(exc, write=False)
        if fault is not None:
            return UserError(f"cannot read {where} ({fault[0]}); {fault[1]}, then rerun")
        return UserError(f"cannot read {where}: the data there are damaged ({_one_line(exc)}); "
                         "restore the file from a copy or re-create the volume")

    def _bad_chunk(self, key: tuple[slice, ...], exc: BaseException) -> tuple[tuple[slice, ...], BaseException]:
        """The first storage chunk of ``key`` (clipped to it) that cannot be read, and its error;
        ``key`` and ``exc`` themselves if it spans one chunk, or every chunk reads alone."""
        if self.chunks is None:
            return key, exc
        lead, spatial = key[:-3], key[-3:]
        steps = [range(k.start - k.start % c, k.stop, c) for k, c in zip(spatial, self.chunks[-3:])]
        if all(len(r) <= 1 for r in steps):
            return key, exc
        for starts in itertools.product(*steps):
            part = (*lead, *(slice(max(b, k.start), min(b + c, k.stop))
                             for b, k, c in zip(starts, spatial, self.chunks[-3:])))
            try:
                self._read(part)
            except Exception as error:
                if _unreadable(error):
                    return part, error
                raise
        return key, exc

    def write(self, region: Any, data: np.ndarray | float) -> None:
        """Write ``data`` (broadcast to the region's shape) into ``region`` (voxels); the volume
        must be open for writing."""
        if self.mode == "r":
            raise ValueError(f"{self.spec}: opened read-only")
        key, drop = self._parse(region)
        want = tuple(s.stop - s.start for s in key)
        data = np.asarray(data)
        if drop and data.ndim == len(want) - len(drop):
            data = np.expand_dims(data, drop)
        try:
            data = np.broadcast_to(data, want)
        except ValueError:
            raise ValueError(f"{self.spec}: data of shape {data.shape} written into region of shape {want}") from None
        with self._writing(f"write output {self.spec!r} at {voxels(key)}"):
            self._write(key, data.astype(self.dtype, copy=False))

    def _writing(self, what: str):
        """:func:`~psc_seg.files.fixable_writes` for ``what`` this output does: a full disk or
        missing permission is one line saying how to go on (``resume`` where it continues)."""
        if self.resumable:
            return fixable_writes(what, then="rerun with {resume}: what was written is kept", options=("resume",))
        return fixable_writes(what)

    def __getitem__(self, region: Any) -> np.ndarray:
        return self.read(region)

    def __setitem__(self, region: Any, data: np.ndarray) -> None:
        self.write(region, data)

    def update_attrs(self, values: dict) -> None:
        """Merge ``values`` into the stored metadata."""
        self._attrs.update(values)
        with self._writing(f"write the metadata of output {self.spec!r}"):
            self._store_attrs()

    def sidecar_dir(self, name: str) -> Path | str:
        """A folder kept with this volume for bookkeeping (e.g. resume records): inside the
        array folder for zarr (zarr ignores it; objects under the array's prefix in an object
        store), else a hidden folder beside the file."""
        if self.format == "zarr":
            return stores.join(self.array_path, f".psc-seg-{name}")
        return sidecar_beside(self.spec_obj, name)

    def finalize(self) -> None:
        """Mark a written volume complete (and assemble buffered formats)."""
        meta = dict(self._attrs.get(META_KEY, {}))
        meta["complete"] = True
        self.update_attrs({META_KEY: meta})

    def close(self) -> None:
        """Release open handles (reopened on the next access)."""

    # ------------------------------------------------------------------ back end hooks
    def _read(self, key: tuple[slice, ...]) -> np.ndarray:
        raise NotImplementedError

    def _write(self, key: tuple[slice, ...], data: np.ndarray) -> None:
        raise NotImplementedError(f"{self.format} volumes cannot be written")

    def _store_attrs(self) -> None:
        raise NotImplementedError(f"{self.format} volumes cannot store metadata")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in [k for k in state if k.startswith("_h_")]:  # open handles
            state[name] = None
        return state


# ====================================================================== zarr
def _ome_level(array_path: Path | str) -> int | None:
    """The level of ``array_path`` in the OME-Zarr image group around it (0: full resolution),
    or None where it is not one of its datasets."""
    import zarr

    try:
        parent = zarr.open_group(stores.zarr_store(stores.parent(array_path)), mode="r")
    except Exception:
        return None
    multiscales, _ = _ome_multiscales(dict(parent.attrs))
    datasets = (multiscales or [{}])[0].get("datasets") or [{}]
    paths = [str(d.get("path", "")).strip("/") for d in datasets]
    name = str(array_path).rstrip("/").rsplit("/", 1)[-1]
    return paths.index(name) if name in paths else None


def _ome_multiscales(attrs: dict) -> tuple[list | None, str | None]:
    if "ome" in attrs and isinstance(attrs["ome"], dict) and "multiscales" in attrs["ome"]:
        return attrs["ome"]["multiscales"], attrs["ome"].get("version")
    if "multiscales" in attrs:
        ms = attrs["multiscales"]
        return ms, (ms[0].get("version") if ms else None)
    return None, None


def _transforms(transforms: list | None, n: int) -> tuple[list[float], list[float]]:
    scale, translation = [1.0] * n, [0.0] * n
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            scale = [a * b for a, b in zip(scale, t["scale"])]
        elif t.get("type") == "translation" and "translation" in t:
            translation = [a + b for a, b in zip(translation, t["translation"])]
    return scale, translation


def _zarr_members(node) -> list[str]:
    import zarr

    names = []
    try:
        for name, child in node.members(max_depth=None):
            names.append(name + ("/" if isinstance(child, zarr.Group) else ""))
    except Exception:  # a damaged hierarchy: say what we can
        pass
    return names


class ZarrVolume(Volume):
    """A zarr v2 or v3 array (a plain array, or level 0 of an OME-Zarr image group)."""

    format = "zarr"

    def __init__(self, spec: VolumeSpec, *, mode: str = "r") -> None:
        import zarr

        root_path = spec.url or spec.path
        if not stores.exists(root_path):
            raise UserError(f"{str(root_path)!r} does not exist; check the {'URL' if spec.url else 'path'} of the "
                            "zarr container")
        node_path = stores.join(root_path, spec.inner)
        if not stores.exists(node_path):
            try:
                root = zarr.open(stores.zarr_store(root_path), mode="r")
                listed = ", ".join(_zarr_members(root)[:20]) or "nothing"
            except Exception as exc:
                listed = f"unreadable ({_one_line(exc)})"
            raise UserError(f"no {spec.inner!r} in zarr container {str(root_path)!r}; it holds: {listed}")
        try:
            node = zarr.open(stores.zarr_store(node_path), mode="r")
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"{str(node_path)!r} is not a zarr array or group ({_one_line(exc)})") from None
        level = _ome_level(node_path) if not isinstance(node, zarr.Group) and spec.inner else None
        if level:  # a pyramid level: another voxel size than the image's, which psc-seg reads at level 0
            image = str(spec).rstrip("/").rsplit("/", 1)[0]
            raise UserError(f"{str(spec)!r} is level {level} of the OME-Zarr image pyramid "
                            f"{image!r} (downsampled, for viewers); psc-seg reads an image at full resolution: "
                            f"name {image!r}")
        if level == 0:
            # the level-0 array of an OME-Zarr image (``img.zarr/0``) is that image: its voxel size,
            # task and completeness are the group's (an unfinished output must not pass as complete)
            node_path = stores.parent(node_path)
            node = zarr.open(stores.zarr_store(node_path), mode="r")
        group_attrs: dict = {}
        voxel_size = offset = None
        unit = None
        self.meta_path = node_path  # where our attrs live: the image group, or the array itself
        if isinstance(node, zarr.Group):
            group_attrs = dict(node.attrs)
            multiscales, _ = _ome_multiscales(group_attrs)
            if not multiscales:
                arrays = ", ".join(_zarr_members(node)[:20]) or "nothing"
                raise UserError(
                    f"zarr group {spec.text or str(node_path)!r} is not an OME-Zarr image (no multiscales); "
                    f"name an array inside it: {arrays}"
                )
            ms = multiscales[0]
            level0 = ms["datasets"][0]
            self.array_path = stores.join(node_path, *str(level0["path"]).strip("/").split("/"))
            axes = ms.get("axes", [])
            n = len(axes) if axes else None
            array = zarr.open_array(stores.zarr_store(self.array_path), mode="r")
            n = n or array.ndim
            scale, translation = _transforms(level0.get("coordinateTransformations"), n)
            scale2, translation2 = _transforms(ms.get("coordinateTransformations"), n)
            scale = [a * b for a, b in zip(scale, scale2)]
            translation = [a * b + c for a, b, c in zip(translation, scale2, translation2)]
            space = [i for i, ax in enumerate(axes) if isinstance(ax, dict) and ax.get("type") == "space"]
            if len(space) != 3:
                space = list(range(n))[-3:]
            voxel_size = [scale[i] for i in space]
            offset = [translation[i] for i in space]
            units = [axes[i].get("unit") for i in space] if axes and isinstance(axes[0], dict) else []
            unit = unit_name(units)
            attrs = {k: v for k, v in group_attrs.items() if k not in ("ome", "multiscales", "image-label")}
            # OME-Zarr from other tools is often (t, c, z, y, x) with t = 1 (and c = 1): drop those
            types = [ax.get("type") if isinstance(ax, dict) else None for ax in axes]
            lead = []
            for i, size in enumerate(array.shape[:-3]):
                if size == 1 and (types[i] == "time" if i < len(types) else False):
                    lead.append(i)
            if lead and array.ndim - len(lead) == 4 and array.shape[-4] == 1 and types[-4] == "channel":
                lead.append(array.ndim - 4)
            squeeze = tuple(lead)
        else:
            array = node
            self.array_path = node_path
            attrs = dict(array.attrs)
            voxel_size, offset, unit = funlib_geometry(attrs, array.ndim)
            squeeze = ()
        shape = tuple(s for i, s in enumerate(array.shape) if i not in squeeze)
        chunks = tuple(c for i, c in enumerate(array.chunks) if i not in squeeze)
        check_dims(shape, f"zarr array {spec.text or str(node_path)!r}")
        super().__init__(spec, mode=mode, shape=shape, dtype=array.dtype, voxel_size=voxel_size,
                         offset=offset, chunks=chunks, unit=unit, attrs=attrs)
        self._squeeze = squeeze  # leading singleton axes (OME time / channel) hidden from the view
        self._h_array = None

    def _full_key(self, key: tuple) -> tuple:
        if not self._squeeze:
            return key
        parts = list(key)
        for axis in self._squeeze:
            parts.insert(axis, slice(0, 1))
        return tuple(parts)

    def _array(self):
        if self._h_array is None:
            import zarr

            mode = "r" if self.mode == "r" else "r+"
            self._h_array = zarr.open_array(stores.zarr_store(self.array_path, mode=mode), mode=mode)
        return self._h_array

    def _read(self, key):
        data = self._array()[self._full_key(key)]
        return data.reshape(data.shape[len(self._squeeze):]) if self._squeeze else data

    def _write(self, key, data):
        full = self._full_key(key)
        self._array()[full] = data.reshape(tuple(s.stop - s.start for s in full)) if self._squeeze else data

    def _store_attrs(self) -> None:
        import zarr

        node = zarr.open(stores.zarr_store(self.meta_path, mode="r+"), mode="r+")
        node.attrs.update(self._attrs)

    def close(self) -> None:
        self._h_array = None


# ====================================================================== HDF5
def lock_path(path: Path) -> Path:
    """``.<name>.lock`` beside ``path``: the file :func:`_file_lock` locks."""
    return path.with_name(f".{path.name}.lock")


# HDF5 volumes of this process that keep a file open for reading, by resolved path: HDF5
# refuses to open a file for writing while this process has it open read-only, so a writer of
# the file closes them first (they reopen on their next read)
_HDF5_READERS: dict[Path, weakref.WeakSet] = {}


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive advisory lock on :func:`lock_path` (serialises HDF5 access across
    processes; HDF5's own lock on the file itself would make them fail instead). Readers of the
    file kept open in this process are closed first."""
    for reader in list(_HDF5_READERS.get(Path(path).resolve(), ())):
        reader.close()
    with open(lock_path(path), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _reading(path: Path):
    """The context for a read of the HDF5 file ``path``: the file lock where psc-seg writes,
    or has written, into that file (its lock file exists), so that a read never meets a
    writer of another process half-way; nothing otherwise."""
    return _file_lock(path) if lock_path(path).exists() else contextlib.nullcontext()


HDF5_HEADROOM = 1 << 20  # bytes left free beyond a write's data, for HDF5's own (chunk index, attributes)


def check_hdf5_room(path: Path, nbytes: int = 0) -> None:
    """OSError (ENOSPC) unless the disk of the HDF5 file ``path`` has room for ``nbytes`` of
    data and :data:`HDF5_HEADROOM`. HDF5 cannot recover from a full disk in the middle of a
    write (the file stays open half-written and the library crashes at exit), so writes into
    HDF5 look before they leap. A file system that reports no size (some network and FUSE
    file systems say 0 blocks) is not judged."""
    stat = os.statvfs(path if path.exists() else path.parent)
    if stat.f_blocks and stat.f_bavail * stat.f_frsize < nbytes + HDF5_HEADROOM:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _h5_datasets(f) -> list[str]:
    import h5py

    names: list[str] = []
    f.visititems(lambda name, obj: names.append("/" + name) if isinstance(obj, h5py.Dataset) else None)
    return names


class Hdf5Volume(Volume):
    """An HDF5 dataset. Metadata: ``resolution`` (or ``voxel_size``), ``offset``, ``units``
    (or ``unit``) and ``axis_names`` attributes (z, y, x), as gunpowder / funlib write them
    (:func:`~psc_seg.io.geometry.funlib_geometry`). Writes from several processes are
    serialised by a lock file."""

    format = "hdf5"

    def __init__(self, spec: VolumeSpec, *, mode: str = "r") -> None:
        import h5py

        if not spec.path.is_file():
            raise UserError(f"{str(spec.path)!r} does not exist; check the path of the HDF5 file")
        with contextlib.ExitStack() as stack:
            stack.enter_context(_reading(spec.path))
            try:
                f = stack.enter_context(h5py.File(spec.path, "r"))
            except OSError as exc:
                raise UserError(f"{str(spec.path)!r} is not a readable HDF5 file ({_one_line(exc)})") from None
            datasets = _h5_datasets(f)
            inner = spec.inner
            if not inner:
                if len(datasets) != 1:
                    listed = ", ".join(datasets[:20]) or "no datasets"
                    raise UserError(f"name a dataset in {str(spec.path)!r}, e.g. {spec.path}:{datasets[0] if datasets else '/raw'} "
                                    f"(it holds: {listed})")
                inner = datasets[0].strip("/")
            if inner not in f or not isinstance(f[inner], h5py.Dataset):
                listed = ", ".join(datasets[:20]) or "no datasets"
                raise UserError(f"no dataset {'/' + inner!r} in {str(spec.path)!r}; it holds: {listed}")
            ds = f[inner]
            attrs = {k: _plain(v) for k, v in ds.attrs.items()}
            where = f"dataset {spec.path}:/{inner}"
            check_dims(ds.shape, where)
            shape, dtype, chunks = ds.shape, ds.dtype, ds.chunks
        self.inner = inner
        voxel_size, offset, unit = funlib_geometry(attrs, len(shape))
        super().__init__(spec, mode=mode, shape=shape, dtype=dtype, voxel_size=voxel_size,
                         offset=offset, chunks=chunks, unit=unit,
                         attrs={k: _from_json(v) for k, v in attrs.items()})
        self._h_file = None

    def _dataset(self):
        import h5py

        if self._h_file is None:
            self._h_file = h5py.File(self.spec_obj.path, "r")
            _HDF5_READERS.setdefault(self.spec_obj.path.resolve(), weakref.WeakSet()).add(self)
        return self._h_file[self.inner]

    def _read(self, key):
        """Through a handle kept open, unless psc-seg writes into this file (an output beside
        the input, ``f.h5:/raw`` -> ``f.h5:/affinities``): then under the file lock, the file
        opened for this read only, so that writers of this and other processes can open it."""
        if self.mode != "r" or lock_path(self.spec_obj.path).exists():
            import h5py

            with _file_lock(self.spec_obj.path), h5py.File(self.spec_obj.path, "r") as f:  # (closes our handle)
                return f[self.inner][key]
        return self._dataset()[key]

    def _write(self, key, data):
        import h5py

        check_hdf5_room(self.spec_obj.path, data.nbytes)
        with _file_lock(self.spec_obj.path), h5py.File(self.spec_obj.path, "r+") as f:
            dataset = f[self.inner]
            dataset[key] = data
            dataset.flush()  # here, where a failed write raises: closing the dataset would only print it

    def _store_attrs(self) -> None:
        import h5py

        check_hdf5_room(self.spec_obj.path)
        with _file_lock(self.spec_obj.path), h5py.File(self.spec_obj.path, "r+") as f:
            ds = f[self.inner]
            for k, v in self._attrs.items():
                ds.attrs[k] = h5_attr(v)

    def close(self) -> None:
        if self._h_file is not None:
            self._h_file.close()
        self._h_file = None


def _from_json(value: Any) -> Any:
    """Dicts and lists are stored in HDF5 attributes as JSON text; decode them."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def h5_attr(value: Any) -> Any:
    """``value`` as an HDF5 attribute: dicts as JSON text (read back as dicts), the rest as
    native HDF5 values (lists such as ``resolution`` stay arrays other tools read)."""
    return json.dumps(value) if isinstance(value, dict) else _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


# ====================================================================== NIfTI / TIFF / npy (read)
NIFTI_UNITS = {"mm": "millimeter", "micron": "micrometer", "meter": "meter"}  # NIfTI's xyz unit -> ours


class NiftiVolume(Volume):
    """A NIfTI image, exposed as ``(z, y, x)`` (or ``(c, z, y, x)`` for a 4D image whose 4th
    axis becomes channels). ``affine`` and ``header`` are nibabel's, unchanged (x, y, z order)."""

    format = "nifti"

    def __init__(self, spec: VolumeSpec, *, mode: str = "r") -> None:
        import nibabel as nib

        if not spec.path.is_file():
            raise UserError(f"{str(spec.path)!r} does not exist; check the path of the NIfTI file")
        try:
            img = nib.load(str(spec.path))
        except Exception as exc:
            raise UserError(f"{str(spec.path)!r} is not a readable NIfTI file ({_one_line(exc)})") from None
        xyz_shape = img.shape
        if len(xyz_shape) == 5 and xyz_shape[3] == 1:  # (x, y, z, t=1, c)
            xyz_shape = xyz_shape[:3] + xyz_shape[4:]
        if len(xyz_shape) not in (3, 4):
            check_dims(xyz_shape, f"NIfTI {str(spec.path)!r}")
        shape = tuple(reversed(xyz_shape[:3]))
        if len(xyz_shape) == 4:
            shape = (xyz_shape[3], *shape)
        proxy = img.dataobj
        scaled = getattr(proxy, "slope", 1.0) not in (1.0, None) or getattr(proxy, "inter", 0.0) not in (0.0, None)
        dtype = np.float32 if scaled else img.get_data_dtype()
        zooms = img.header.get_zooms()[:3]
        units = img.header.get_xyzt_units()[0]
        unit = NIFTI_UNITS.get(units)
        # a class map psc-seg wrote says so (NIFTI_KINDS), as zarr and HDF5 outputs do in attributes
        classes = _header_text(img.header, "intent_name") == NIFTI_KINDS["classes"][2]
        super().__init__(spec, mode=mode, shape=shape, dtype=dtype, voxel_size=tuple(reversed(zooms)),
                         offset=nifti_offset(img.affine), unit=unit,
                         attrs={"task": {"kind": "semantic"}} if classes else {}, affine=img.affine)
        self.header = img.header
        self._five_d = len(img.shape) == 5
        self._h_img = None

    def _read(self, key):
        import nibabel as nib

        if self._h_img is None:
            self._h_img = nib.load(str(self.spec_obj.path))
        if self.channels is None:
            sz, sy, sx = key
            data = np.asarray(self._h_img.dataobj[sx, sy, sz])
            return data.transpose(2, 1, 0)
        sc, sz, sy, sx = key
        index = (sx, sy, sz, 0, sc) if self._five_d else (sx, sy, sz, sc)
        return np.asarray(self._h_img.dataobj[index]).transpose(3, 2, 1, 0)


def _header_text(header, field: str) -> str:
    value = np.asarray(header[field]).item()
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class TiffVolume(Volume):
    """A TIFF stack ``(z, y, x)``: memory-mapped when uncompressed, else read once."""

    format = "tiff"

    def __init__(self, spec: VolumeSpec, *, mode: str = "r") -> None:
        import tifffile

        if not spec.path.is_file():
            raise UserError(f"{str(spec.path)!r} does not exist; check the path of the TIFF stack")
        try:
            with tifffile.TiffFile(str(spec.path)) as tif:
                series = tif.series[0]
                shape, dtype = series.shape, series.dtype
        except Exception as exc:
            raise UserError(f"{str(spec.path)!r} is not a readable TIFF file ({_one_line(exc)})") from None
        super().__init__(spec, mode=mode, shape=shape, dtype=dtype)
        self._h_data = None

    def _read(self, key):
        import tifffile

        if self._h_data is None:
            try:
                self._h_data = tifffile.memmap(str(self.spec_obj.path), mode="r")
            except ValueError:  # compressed or not contiguous: small stacks only
                self._h_data = tifffile.imread(str(self.spec_obj.path))
        return self._h_data[key]


class NpyVolume(Volume):
    """A ``.npy`` file, memory-mapped."""

    format = "npy"

    def __init__(self, spec: VolumeSpec, *, mode: str = "r") -> None:
        if not spec.path.is_file():
            raise UserError(f"{str(spec.path)!r} does not exist; check the path of the .npy file")
        try:
            data = np.load(str(spec.path), mmap_mode="r")
        except Exception as exc:
            raise UserError(f"{str(spec.path)!r} is not a readable .npy file ({_one_line(exc)})") from None
        super().__init__(spec, mode=mode, shape=data.shape, dtype=data.dtype)
        self._h_data = None

    def _read(self, key):
        if self._h_data is None:
            self._h_data = np.load(str(self.spec_obj.path), mmap_mode="r")
        return self._h_data[key]


# ====================================================================== buffered outputs
def partial_path(path: Path) -> Path:
    """``<name>.partial.npy`` beside ``path``: where a NIfTI / TIFF / npy output is assembled."""
    return path.with_name(path.name + ".partial.npy")


def _partial_meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial.json")


class BufferedVolume(Volume):
    """A NIfTI, TIFF or ``.npy`` output under construction: a memory-mapped ``.partial.npy``
    beside the target (safe for concurrent writes of disjoint regions from several processes);
    :meth:`finalize` writes the target file atomically and removes the partial files."""

    def __init__(self, spec: VolumeSpec, *, mode: str = "r+") -> None:
        part, meta_path = partial_path(spec.path), _partial_meta_path(spec.path)
        if not part.is_file() or not meta_path.is_file():
            raise UserError(f"no unfinished output for {str(spec.path)!r} (missing {part.name}); run without {{resume}}",
                            options=("resume",))
        meta = json.loads(meta_path.read_text())
        data = np.load(str(part), mmap_mode="r")
        self.format = spec.format
        super().__init__(spec, mode=mode, shape=data.shape, dtype=data.dtype, voxel_size=meta["voxel_size"],
                         offset=meta["offset"], unit=meta.get("unit"), attrs=meta.get("attrs", {}),
                         affine=meta.get("affine"))
        self._header_block = meta.get("header")
        self._h_data = None

    @property
    def header(self):
        if self._header_block is None:
            return None
        import nibabel as nib

        return nib.Nifti1Header(binaryblock=base64.b64decode(self._header_block))

    def _data(self):
        if self._h_data is None:
            self._h_data = np.load(str(partial_path(self.spec_obj.path)), mmap_mode="r+" if self.mode != "r" else "r")
        return self._h_data

    def _read(self, key):
        return self._data()[key]

    def _write(self, key, data):
        self._data()[key] = data

    def _store_attrs(self) -> None:
        meta_path = _partial_meta_path(self.spec_obj.path)
        meta = json.loads(meta_path.read_text())
        meta["attrs"] = self._attrs
        meta_path.write_text(json.dumps(meta))

    @property
    def complete(self) -> bool:
        return False

    def finalize(self) -> None:
        target = self.spec_obj.path
        data = self._data()
        data.flush()
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}{''.join(target.suffixes)}")
        try:
            with self._writing(f"finish output {self.spec!r}"):
                if self.format == "nifti":
                    _write_nifti(tmp, data, affine=self.affine, header=self.header, voxel_size=self.voxel_size,
                                 offset=self.offset,
                                 unit=self.unit, kind=nifti_kind(data.dtype, self._attrs))
                elif self.format == "tiff":
                    import tifffile

                    tifffile.imwrite(str(tmp), np.asarray(data), photometric="minisblack",
                                     metadata={"axes": "CZYX" if self.channels else "ZYX"})
                else:
                    np.save(str(tmp), np.asarray(data))
                    tmp = tmp if tmp.exists() else tmp.with_name(tmp.name + ".npy")
        except BaseException:
            tmp.unlink(missing_ok=True)  # the partial file stays: a rerun finishes it
            raise
        os.replace(tmp, target)
        self._h_data = None
        partial_path(target).unlink(missing_ok=True)
        _partial_meta_path(target).unlink(missing_ok=True)

    def close(self) -> None:
        self._h_data = None


# what a psc-seg NIfTI output holds: (descrip, intent code, intent_name). An output keeps its
# reference's affine and header, but not the reference's description of itself ("T1 MPRAGE"):
# label maps get NIFTI_INTENT_LABEL, and intent_name says which kind (read back by NiftiVolume)
NIFTI_KINDS = {
    "classes": ("psc-seg class labels", "label", "psc-seg classes"),
    "segments": ("psc-seg segmentation", "label", "psc-seg segments"),
    "probabilities": ("psc-seg class probabilities", "none", ""),
    "values": ("psc-seg output", "none", ""),
}


def nifti_kind(dtype, attrs: dict) -> str:
    """The :data:`NIFTI_KINDS` entry of an output of ``dtype`` with metadata ``attrs``."""
    task = attrs.get("task") if isinstance(attrs.get("task"), dict) else {}
    semantic = task.get("kind") == "semantic"
    if np.issubdtype(np.dtype(dtype), np.integer):
        return "classes" if semantic else "segments"
    return "probabilities" if semantic else "values"


def _write_nifti(path: Path, data: np.ndarray, *, affine, header, voxel_size, offset=(0.0, 0.0, 0.0),
                 unit: str | None = None, kind: str = "values") -> None:
    """Write ``(z, y, x)`` / ``(c, z, y, x)`` ``data`` as NIfTI (x, y, z[, c]), described as
    :data:`NIFTI_KINDS` ``[kind]``."""
    import nibabel as nib

    array = np.asarray(data)
    array = array.transpose(2, 1, 0) if array.ndim == 3 else array.transpose(3, 2, 1, 0)
    if affine is None:  # axis-aligned, voxel 0 at the offset
        affine = np.diag([*reversed(voxel_size), 1.0])
        affine[:3, 3] = list(reversed(offset))
    header = header.copy() if header is not None else None
    img = nib.Nifti1Image(array, affine, header=header, dtype=array.dtype)  # uint64 labels too
    img.set_data_dtype(array.dtype)
    if header is not None:  # keep the reference's qform/sform codes
        img.set_qform(affine, code=int(header["qform_code"]) or 1)
        img.set_sform(affine, code=int(header["sform_code"]) or 1)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    nifti_unit = {name: code for code, name in NIFTI_UNITS.items()}.get(unit)
    if nifti_unit is not None:  # the header's spatial unit, as read back by NiftiVolume
        img.header.set_xyzt_units(xyz=nifti_unit)
    descrip, intent, intent_name = NIFTI_KINDS[kind]
    img.header["descrip"] = descrip
    img.header.set_intent(intent, name=intent_name)
    nib.save(img, str(path))


def check_affine(spec: VolumeSpec, reference: Volume | None) -> None:
    """UserError if the output ``spec`` is NIfTI and would copy an unusable affine from
    ``reference`` (:func:`affine_problem`): said when the output is created, not when it is
    written at the end of the run."""
    problem = affine_problem(reference.affine) if getattr(reference, "affine", None) is not None else None
    if problem and spec.format == "nifti":
        raise UserError(f"NIfTI {reference.spec!r} has {problem}, which the NIfTI output {str(spec)!r} would "
                        "copy; repair its sform / qform, or write a zarr output, which needs no affine")


def affine_problem(affine: np.ndarray) -> str | None:
    """What makes a NIfTI ``affine`` (4 x 4, voxels to world) unusable: ``"a non-finite
    affine (...)"`` or ``"a singular affine (...)"`` (its voxel axes do not span 3D space);
    None for a good one."""
    matrix = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(matrix).all():
        return f"a non-finite affine ({_rows(matrix)})"
    axes = matrix[:3, :3]
    if abs(np.linalg.det(axes)) <= 1e-9 * np.prod(np.linalg.norm(axes, axis=0)):
        return f"a singular affine ({_rows(matrix)}: its voxel axes do not span 3D space)"
    return None


def _rows(matrix: np.ndarray) -> str:
    return "rows " + "; ".join(" ".join(f"{v:g}" for v in row) for row in matrix[:3])


def new_buffered(spec: VolumeSpec, *, shape, dtype, voxel_size, offset, unit, attrs, reference,
                 affine=None) -> BufferedVolume:
    """Start a buffered output (see :class:`BufferedVolume`) with the NIfTI ``affine`` (4 x 4,
    or None) and ``reference``'s NIfTI header, if it has one."""
    affine = None if affine is None else np.asarray(affine, dtype=np.float64).tolist()
    header = None
    if getattr(reference, "header", None) is not None:
        header = base64.b64encode(reference.header.binaryblock).decode()
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(spec.path)
    np.lib.format.open_memmap(str(part), mode="w+", dtype=np.dtype(dtype), shape=tuple(shape))
    try:
        _allocate(part)
    except OSError:
        part.unlink()  # ours, just made: a rerun starts afresh
        raise
    meta = {"voxel_size": list(voxel_size), "offset": list(offset), "unit": unit, "attrs": attrs,
            "affine": affine, "header": header}
    _partial_meta_path(spec.path).write_text(json.dumps(meta))
    return BufferedVolume(spec, mode="r+")


def replace_output(new: VolumeSpec, target: VolumeSpec) -> None:
    """Put the finished output ``new`` (a :func:`~psc_seg.io.spec.staged_spec` of ``target``)
    in the place of ``target``, replacing the old output there, if any, with its bookkeeping
    folders (:func:`sidecar_beside`; a zarr node holds its own).

    zarr: the old node is renamed aside, the new one renamed into place, then the old one
    deleted, so that no moment shows a partly deleted output under ``target``. HDF5: the old
    dataset is deleted and the new one moved in (one file; HDF5 does not give the old one's
    space back to the file system until the file is repacked). NIfTI, TIFF, npy: one atomic
    rename.
    """
    import h5py

    if new.format == "zarr":  # object stores: copied, then deleted (no rename there)
        source, destination = new.url or new.path, target.url or target.path
        source, destination = stores.join(source, new.inner), stores.join(destination, target.inner)
        aside = stores.join(stores.parent(destination), str(destination).rstrip("/").rsplit("/", 1)[-1] + ".psc-seg-old")
        stores.remove(aside)
        if stores.exists(destination):
            stores.move(destination, aside)
        stores.move(source, destination)
        stores.remove(aside)
        return
    if new.format == "hdf5":
        with _file_lock(new.path), h5py.File(new.path, "r+") as f:
            if target.inner in f:
                del f[target.inner]
            f.move(new.inner, target.inner)
    else:
        os.replace(new.path, target.path)
    prefix = sidecar_beside(new, "").name
    for folder in sorted(new.path.parent.glob(glob.escape(prefix) + "*")):
        destination = sidecar_beside(target, folder.name[len(prefix):])
        if destination.is_dir():
            shutil.rmtree(destination)
        os.replace(folder, destination)


def _allocate(path: Path) -> None:
    """Give the (sparse) file ``path`` its disk blocks now: a write through a memory map into
    a file the disk has no room for kills the process (SIGBUS); this raises ENOSPC instead."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if os_fault(exc) is not None:
                raise
            # a file system that cannot allocate ahead (EOPNOTSUPP, EINVAL): as before


def remove_output(spec: VolumeSpec) -> None:
    """Delete an existing output (and its partial files); zarr: only the named node."""
    import h5py

    if spec.format == "zarr":
        stores.remove(stores.join(spec.url or spec.path, spec.inner))
    elif spec.format == "hdf5" and spec.inner and spec.path.is_file():
        with _file_lock(spec.path), h5py.File(spec.path, "r+") as f:
            if spec.inner in f:
                del f[spec.inner]
    else:
        spec.path.unlink(missing_ok=True)
        partial_path(spec.path).unlink(missing_ok=True)
        _partial_meta_path(spec.path).unlink(missing_ok=True)
