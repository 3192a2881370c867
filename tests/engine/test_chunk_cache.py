"""Reads through the chunk cache equal direct reads, stay within the byte budget, pickle empty."""

import pickle

import numpy as np

from psc_seg.engine import ChunkCache, Roi, read_mirrored
from psc_seg.io import create_volume, open_volume


def test_cached_reads_equal_direct_reads(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((3, 21, 30, 26)).astype(np.float32)  # edges cut chunks short
    vol = create_volume(tmp_path / "affs.zarr", shape=data.shape, dtype="float32", chunks=(8, 8, 8))
    vol.write((slice(None),) * 4, data)
    vol.finalize()
    vol = open_volume(str(tmp_path / "affs.zarr"))
    chunk_bytes = 3 * 8**3 * 4
    cache = ChunkCache(vol, max_bytes=10 * chunk_bytes)
    for _ in range(30):
        begin = [int(rng.integers(0, s)) for s in data.shape[1:]]
        shape = [int(rng.integers(1, s - b + 1)) for b, s in zip(begin, data.shape[1:])]
        roi = Roi(begin, shape)
        np.testing.assert_array_equal(cache.read(roi), data[(slice(None), *roi.to_slices())])
        assert cache._bytes <= 10 * chunk_bytes or len(cache._chunks) == 1
    assert cache._chunks  # it did cache
    again = pickle.loads(pickle.dumps(cache))
    assert not again._chunks and again._bytes == 0
    np.testing.assert_array_equal(again.read(Roi((0, 0, 0), (21, 30, 26))), data)


def test_unchunked_or_too_large_chunks_read_directly(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.uint64).reshape(4, 5, 6)
    np.save(tmp_path / "labels.npy", data)
    cache = ChunkCache(open_volume(str(tmp_path / "labels.npy")))
    np.testing.assert_array_equal(cache.read(Roi((1, 1, 1), (2, 3, 4))), data[1:3, 1:4, 1:5])
    vol = create_volume(tmp_path / "l.zarr", shape=data.shape, dtype="uint64", chunks=(4, 4, 4))
    vol.write((slice(None),) * 3, data)
    tiny = ChunkCache(vol, max_bytes=100)
    np.testing.assert_array_equal(tiny.read(Roi((1, 1, 1), (2, 3, 4))), data[1:3, 1:4, 1:5])
    assert not tiny._chunks


def test_mirrored_reads_through_the_cache_equal_direct_ones(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(20, 24, 28), dtype=np.uint8)
    vol = create_volume(tmp_path / "raw.zarr", shape=data.shape, dtype="uint8", chunks=(8, 8, 8))
    vol.write((slice(None),) * 3, data)
    vol.finalize()
    vol = open_volume(str(tmp_path / "raw.zarr"))
    cache = ChunkCache(vol, max_bytes=20 * 8**3)
    for begin in [(-5, -3, 0), (4, 8, 20), (15, 20, 25), (-2, 10, -9)]:
        roi = Roi(begin, (12, 10, 14))  # partly outside: mirrored
        np.testing.assert_array_equal(read_mirrored(cache, roi), read_mirrored(vol, roi))
    np.testing.assert_array_equal(cache.read((slice(2, 9), slice(0, 24), slice(5, 6))), data[2:9, :, 5:6])


def test_concurrent_reads_from_threads_stay_correct(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(2)
    data = rng.random((24, 24, 24)).astype(np.float32)
    vol = create_volume(tmp_path / "v.zarr", shape=data.shape, dtype="float32", chunks=(4, 4, 4))
    vol.write((slice(None),) * 3, data)
    vol.finalize()
    cache = ChunkCache(open_volume(str(tmp_path / "v.zarr")), max_bytes=12 * 4**3 * 4)  # constant eviction
    rois = [Roi([int(v) for v in rng.integers(0, 16, 3)], (8, 8, 8)) for _ in range(200)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(cache.read, rois))
    for roi, got in zip(rois, results):
        np.testing.assert_array_equal(got, data[roi.to_slices()])
    assert cache._bytes == sum(c.nbytes for c in cache._chunks.values()) <= 12 * 4**3 * 4
