"""Reads with context through a small cache of decoded storage chunks.

A block the size of the storage chunks, grown by a context of a few voxels, touches 27
chunks (3 x 3 x 3), and a compressed chunk is decoded whole: a read with context decodes
about 20 times the voxels it returns. Neighbouring blocks read the same chunks, so keeping
the most recently decoded ones makes each chunk be decoded about once per row of blocks
instead of up to 27 times. Blockwise segment reads affinities and fragments through it, and
predict reads its input through it (:func:`psc_seg.engine.read_mirrored` accepts it in place
of a volume).
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict

import numpy as np

from psc_seg.engine.roi import Roi

DEFAULT_CACHE_BYTES = 128 * 2**20


class ChunkCache:
    """Reads of a volume's ROIs through an LRU cache of its whole decoded chunks.

    Picklable (for dask workers): the cache itself is not sent, each process fills its own.
    Thread-safe (a worker of a user's cluster may run several tasks at once). Volumes without storage chunks, or with chunks too large for the budget, are read
    directly.

    Args:
        volume: an open :class:`psc_seg.io.Volume`, ``(Z, Y, X)`` or ``(C, Z, Y, X)``
            (chunks may split channels; a cached chunk holds every channel).
        max_bytes: most bytes of decoded chunks kept.
    """

    def __init__(self, volume, *, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.volume = volume
        self.max_bytes = max_bytes
        self._chunks: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_chunks": OrderedDict(), "_bytes": 0, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @property
    def spec(self) -> str:
        return self.volume.spec

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return self.volume.spatial_shape

    def _chunk_shape(self) -> tuple[int, ...] | None:
        chunks = self.volume.chunks
        if chunks is None:
            return None
        shape = tuple(int(c) for c in chunks[-3:])
        lead = int(np.prod(self.volume.shape[:-3], dtype=np.int64))
        # at least 8 chunks fit, or caching is no use
        fits = 8 * lead * int(np.prod(shape)) * self.volume.dtype.itemsize <= self.max_bytes
        return shape if fits else None

    def read(self, roi: Roi | tuple[slice, ...]) -> np.ndarray:
        """The values in ``roi`` (inside the volume; a Roi or ``(z, y, x)`` slices with
        bounds, as :meth:`Roi.to_slices` gives): ``(Z, Y, X)`` or ``(C, Z, Y, X)``."""
        if not isinstance(roi, Roi):
            roi = Roi([s.start for s in roi], [s.stop - s.start for s in roi])
        chunk = self._chunk_shape()
        if chunk is None:
            return self.volume.read(roi.to_slices())
        begin, end = roi.begin, roi.end
        out = np.empty(self.volume.shape[:-3] + tuple(e - b for b, e in zip(begin, end)), dtype=self.volume.dtype)
        ranges = [range(b // c, (e - 1) // c + 1) for b, e, c in zip(begin, end, chunk)]
        for index in itertools.product(*ranges):
            data = self._get(index, chunk)
            start = [i * c for i, c in zip(index, chunk)]
            low = [max(b, s) for b, s in zip(begin, start)]
            high = [min(e, s + n) for e, s, n in zip(end, start, data.shape[-3:])]
            target = tuple(slice(lo - b, hi - b) for lo, hi, b in zip(low, high, begin))
            source = tuple(slice(lo - s, hi - s) for lo, hi, s in zip(low, high, start))
            out[(..., *target)] = data[(..., *source)]
        return out

    def _get(self, index: tuple[int, ...], chunk: tuple[int, ...]) -> np.ndarray:
        with self._lock:
            data = self._chunks.get(index)
            if data is not None:
                self._chunks.move_to_end(index)
                return data
        region = Roi([i * c for i, c in zip(index, chunk)], chunk).intersect(Roi((0, 0, 0), self.volume.spatial_shape))
        data = self.volume.read(region.to_slices())  # decoded outside the lock
        with self._lock:
            if index not in self._chunks:
                self._chunks[index] = data
                self._bytes += data.nbytes
            while self._bytes > self.max_bytes and len(self._chunks) > 1:
                _, old = self._chunks.popitem(last=False)
                self._bytes -= old.nbytes
        return data
