"""N5 datasets, read only: zarr 3 has no N5 support, and the format is small enough to read here.

An N5 dataset is a folder (local, or under an fsspec URL) holding ``attributes.json``
(``dimensions``, ``blockSize``, ``dataType``, ``compression``) and one file per block at
``<i>/<j>/<k>``. N5 lists axes fastest first (x, y, z); psc-seg exposes ``(z, y, x)``, so
every list is reversed, and so are funlib / daisy's ``resolution`` and ``offset`` attributes,
which N5 containers store in x, y, z order (as does ``pixelResolution``). A block file is a
big-endian header (mode, number of dimensions, the block's own size, which is smaller at the
volume's far edges) followed by the compressed big-endian values; a missing block reads as
zeros. Compression: raw, gzip, bzip2, xz, blosc.
"""

from __future__ import annotations

import bz2
import json
import lzma
import struct
import zlib

import numpy as np

from psc_seg.errors import UserError
from psc_seg.io import stores
from psc_seg.io.spec import VolumeSpec
from psc_seg.io.volume import Volume

N5_TYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64")


def _decompress(data: bytes, compression: dict) -> bytes:
    kind = compression.get("type", "raw")
    if kind == "raw":
        return data
    if kind == "gzip":
        return zlib.decompress(data, 47)  # gzip or zlib header
    if kind == "bzip2":
        return bz2.decompress(data)
    if kind == "xz":
        return lzma.decompress(data)
    if kind == "blosc":
        import numcodecs

        return numcodecs.Blosc().decode(data)
    raise ValueError(f"N5 compression {kind!r} is not supported (raw, gzip, bzip2, xz, blosc)")


def _reversed(value, n: int = 3):
    if isinstance(value, dict):
        value = value.get("dimensions")
    if not isinstance(value, (list, tuple)) or len(value) < n:
        return None
    return [float(v) for v in reversed(value)][-n:]


class N5Volume(Volume):
    """A dataset in an N5 container (``vol.n5/group/dataset``), read only."""

    format = "n5"

    def __init__(self, spec: VolumeSpec, *, mode: str = "r") -> None:
        if mode != "r":
            raise UserError(f"{str(spec)!r}: psc-seg reads N5 but does not write it; write a zarr output instead")
        root = spec.url or spec.path
        if not stores.exists(root):
            raise UserError(f"{str(root)!r} does not exist; check the {'URL' if spec.url else 'path'} of the N5 container")
        self.location = stores.join(root, spec.inner)
        raw = stores.read_bytes(stores.join(self.location, "attributes.json"))
        try:
            attrs = json.loads(raw) if raw is not None else None
        except ValueError as exc:
            raise UserError(f"{str(spec)!r}: attributes.json is not JSON ({exc})") from None
        if not isinstance(attrs, dict) or "dimensions" not in attrs:
            names = [n for n in stores.list_names(self.location) if not n.startswith(".") and n != "attributes.json"]
            raise UserError(f"{str(spec)!r} is not an N5 dataset (no dimensions in attributes.json); name a dataset "
                            f"inside it: {', '.join(names[:20]) or 'it holds nothing'}")
        dtype = attrs.get("dataType")
        if dtype not in N5_TYPES:
            raise UserError(f"N5 dataset {str(spec)!r} has data type {dtype!r}; psc-seg reads {', '.join(N5_TYPES)}")
        self._compression = attrs.get("compression") or {"type": attrs.get("compressionType", "raw")}
        self._block = tuple(int(b) for b in reversed(attrs["blockSize"]))
        shape = tuple(int(d) for d in reversed(attrs["dimensions"]))
        pixel = attrs.get("pixelResolution")
        unit = attrs.get("unit") or attrs.get("units") or (pixel.get("unit") if isinstance(pixel, dict) else None)
        if isinstance(unit, list):
            unit = unit[0] if unit else None
        unit = {"nm": "nanometer", "um": "micrometer", "mm": "millimeter"}.get(unit, unit)
        super().__init__(spec, mode=mode, shape=shape, dtype=np.dtype(dtype),
                         voxel_size=_reversed(attrs.get("resolution") or attrs.get("voxel_size") or pixel),
                         offset=_reversed(attrs.get("offset")), chunks=self._block, unit=unit,
                         attrs={k: v for k, v in attrs.items()
                                if k not in ("dimensions", "blockSize", "dataType", "compression")})

    def _read_block(self, grid: tuple[int, ...]) -> np.ndarray | None:
        """The block at grid position ``grid`` (in our axis order), None if it is not stored."""
        data = stores.read_bytes(stores.join(self.location, *(str(g) for g in reversed(grid))))
        if data is None:
            return None
        mode, ndim = struct.unpack(">HH", data[:4])
        size = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        start = 4 + 4 * ndim + (4 if mode == 1 else 0)
        if mode == 2:
            raise ValueError("N5 object blocks (mode 2) hold no array data")
        shape = tuple(reversed(size))
        values = np.frombuffer(_decompress(data[start:], self._compression), dtype=self.dtype.newbyteorder(">"))
        return values[:int(np.prod(shape))].reshape(shape).astype(self.dtype)

    def _read(self, key):
        out = np.zeros(tuple(k.stop - k.start for k in key), dtype=self.dtype)
        ranges = [range(k.start // b, -(-k.stop // b)) for k, b in zip(key, self._block)]
        for grid in np.ndindex(*(len(r) for r in ranges)):
            position = tuple(r[g] for r, g in zip(ranges, grid))
            block = self._read_block(position)
            if block is None:
                continue
            origin = [p * b for p, b in zip(position, self._block)]
            src, dst = [], []
            for k, o, n in zip(key, origin, block.shape):
                lo, hi = max(k.start, o), min(k.stop, o + n)
                src.append(slice(lo - o, hi - o))
                dst.append(slice(lo - k.start, hi - k.start))
            out[tuple(dst)] = block[tuple(src)]
        return out
