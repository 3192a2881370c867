"""psc_seg.engine: ROIs, block grids, mirrored reads, executor (serial and LocalCluster), records."""

from __future__ import annotations

import sys

import cloudpickle
import numpy as np
import pytest

from psc_seg.engine import BlockRecord, Roi, block_grid, mirror_indices, prepare_outputs, read_mirrored, run_blockwise
from psc_seg.engine.resume import check_finished
from psc_seg.errors import UserError
from psc_seg.io import create_volume, open_volume


def test_roi_arithmetic():
    roi = Roi((2, 3, 4), (10, 10, 10))
    assert roi.end == (12, 13, 14) and roi.size == 1000
    assert roi.grow(2) == Roi((0, 1, 2), (14, 14, 14))
    assert roi.grow((1, 0, 0), (0, 0, 3)) == Roi((1, 3, 4), (11, 10, 13))
    assert roi.intersect(Roi((0, 0, 0), (5, 5, 5))) == Roi((2, 3, 4), (3, 2, 1))
    assert roi.intersect(Roi((20, 0, 0), (5, 5, 5))).empty
    assert roi.snap(4) == Roi((0, 0, 4), (12, 16, 12))
    assert roi.snap(4, mode="shrink") == Roi((4, 4, 4), (8, 8, 8))
    assert roi.to_slices() == (slice(2, 12), slice(3, 13), slice(4, 14))
    assert Roi((5, 5, 5), (2, 2, 2)).relative_to(roi) == Roi((3, 2, 1), (2, 2, 2))
    assert roi.contains(Roi((3, 3, 4), (1, 1, 1))) and not roi.contains(roi.grow(1))


def test_block_grid_covers_once_with_clipped_edges():
    total = Roi((0, 0, 0), (10, 7, 8))
    blocks = block_grid(total, write_shape=(4, 4, 4), context=(2, 1, 0))
    assert len(blocks) == 3 * 2 * 2
    assert [b.block_id for b in blocks] == list(range(12))
    cover = np.zeros(total.shape, int)
    for b in blocks:
        cover[b.write_roi.to_slices()] += 1
        assert b.read_roi.shape == (8, 6, 4)
        assert b.read_roi.begin == tuple(w - c for w, c in zip(b.write_roi.begin, (2, 1, 0)))
    assert (cover == 1).all()
    assert blocks[-1].write_roi == Roi((8, 4, 4), (2, 3, 4))
    assert block_grid(total, write_shape=4, context=1, read_shape=9)[0].read_roi == Roi((-1, -1, -1), (9, 9, 9))


def test_mirror_matches_numpy_reflect(tmp_path):
    assert mirror_indices(-3, 8, 5).tolist() == [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]
    assert mirror_indices(-2, 2, 1).tolist() == [0, 0, 0, 0]
    data = np.random.default_rng(1).random((6, 7, 8)).astype(np.float32)
    vol = create_volume(tmp_path / "m.zarr", shape=data.shape, dtype="float32")
    vol.write(None, data)
    padded = np.pad(data, 4, mode="reflect")
    for roi in (Roi((-4, -4, -4), (14, 15, 16)), Roi((-2, 3, 5), (3, 3, 7)), Roi((1, 1, 1), (2, 2, 2))):
        want = padded[roi.shift((4, 4, 4)).to_slices()]
        np.testing.assert_array_equal(read_mirrored(vol, roi), want)
    # a read ROI far larger than the volume folds back and forth
    far = read_mirrored(vol, Roi((-10, 0, 0), (30, 1, 1)))[:, 0, 0]
    np.testing.assert_array_equal(far, data[mirror_indices(-10, 20, 6), 0, 0])


class PlusOne:
    """The "+1 model": output = input + 1, computed from the mirrored read ROI."""

    def __init__(self, source, target):
        self.source, self.target = source, target

    def __call__(self, blocks):
        for block in blocks if isinstance(blocks, list) else [blocks]:
            data = read_mirrored(self.source, block.read_roi)
            inner = block.write_roi.relative_to(block.read_roi)
            self.target.write(block.write_roi, data[(Ellipsis, *inner.to_slices())] + 1)
        return sum(b.write_roi.size for b in (blocks if isinstance(blocks, list) else [blocks]))


# dask workers cannot import this module under pytest's importlib mode: send PlusOne by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.mark.parametrize("write_shape", [(4, 4, 4), (5, 3, 7), (16, 16, 16)])
def test_plus_one_through_the_engine_serial(tmp_path, write_shape):
    data = np.random.default_rng(2).random((9, 10, 11)).astype(np.float32)
    src = create_volume(tmp_path / "in.zarr", shape=data.shape, dtype="float32")
    src.write(None, data)
    out = create_volume(tmp_path / "out.zarr", shape=data.shape, dtype="float32", chunks=write_shape)
    blocks = block_grid(Roi((0, 0, 0), data.shape), write_shape=write_shape, context=3)
    seen = []
    stats = run_blockwise(blocks, PlusOne(src, out), progress=False, on_result=lambda ids, r: seen.append(r))
    assert stats.computed == len(blocks) and stats.skipped == 0 and sum(seen) == data.size
    np.testing.assert_array_equal(open_volume(tmp_path / "out.zarr").read(), data + 1)


def test_plus_one_on_a_local_cluster_with_record_and_batches(tmp_path):
    data = np.random.default_rng(3).random((2, 12, 13, 14)).astype(np.float32)
    src = create_volume(tmp_path / "in.zarr", shape=data.shape, dtype="float32")
    src.write(None, data)
    out = create_volume(tmp_path / "out.h5:/plus1", shape=data.shape, dtype="float32", chunks=(6, 6, 6))
    blocks = block_grid(Roi((0, 0, 0), data.shape[1:]), write_shape=6, context=2)
    record = BlockRecord.create(out.sidecar_dir("blocks"), {"test": 1})
    record.mark_done([0, 5])  # pretend two blocks were finished by an earlier run
    record.close()
    stats = run_blockwise(blocks, PlusOne(src, out), workers=2, batch_size=2, record=record, progress=False)
    assert (stats.total, stats.skipped, stats.computed) == (len(blocks), 2, len(blocks) - 2)
    result = open_volume(f"{tmp_path}/out.h5:/plus1").read()
    for b in blocks:
        want = 0 if b.block_id in (0, 5) else data[(slice(None), *b.write_roi.to_slices())] + 1
        np.testing.assert_array_equal(result[(slice(None), *b.write_roi.to_slices())], want)
    assert BlockRecord(record.directory).done_ids() == set(range(len(blocks)))


def test_block_record_settings_and_torn_lines(tmp_path):
    record = BlockRecord.create(tmp_path / "r", {"a": 1, "b": [1, 2]})
    record.mark_done([3, 1])
    record.close()
    with open(record.log_file, "a") as f:
        f.write("12")  # torn last line of a killed run
    again = BlockRecord.open(tmp_path / "r", {"b": [1, 2], "a": 1})
    assert again.done_ids() == {1, 3}
    with pytest.raises(UserError, match=r"other settings \(a differ\); pass overwrite"):
        BlockRecord.open(tmp_path / "r", {"a": 2, "b": [1, 2]})
    with pytest.raises(UserError, match="no block record"):
        BlockRecord.open(tmp_path / "none", {"a": 1})
    with pytest.raises(UserError, match="workers and scheduler exclude each other"):
        run_blockwise([], print, workers=2, scheduler="tcp://127.0.0.1:1")


def test_check_finished_names_the_fraction_and_the_command_for_every_output_of_a_run(tmp_path, monkeypatch):
    """The rule for inputs: how much is written comes from the run's record, kept with its first
    output; a later output of the run finds it too. Without a record the command is rerun with
    --overwrite; without a command the message says what to do."""
    monkeypatch.setattr(sys, "argv", ["psc-seg", "predict", "m.pt", "raw.zarr", "out.zarr", "--overwrite"])
    specs = {"probabilities": f"{tmp_path}/out.zarr/probabilities", "labels": f"{tmp_path}/out.zarr/labels"}
    prepared = prepare_outputs(specs, {"run": 1}, create=lambda where: {
        name: create_volume(spec, shape=(6, 6, 6), dtype="uint8", chunks=(3, 3, 3)) for name, spec in where.items()})
    blocks = block_grid(Roi((0, 0, 0), (6, 6, 6)), write_shape=3)

    def stopped_at_the_fourth(block):
        if block.block_id == 3:
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        run_blockwise(blocks, stopped_at_the_fourth, record=prepared.record, progress=False)
    for role, spec in (("probabilities", specs["probabilities"]), ("prediction", specs["labels"])):
        with pytest.raises(UserError, match=fr"^{role} .* unfinished: 3 of 8 blocks \(37%\) written; finish (them|it) "
                                            r"with `psc-seg predict m.pt raw.zarr out.zarr --resume`, or pass "
                                            r"allow_incomplete"):
            check_finished(open_volume(spec), role)
        assert "unfinished: 3 of 8" in check_finished(open_volume(spec), role, allow_incomplete=True)
    synth = create_volume(tmp_path / "synth.zarr", shape=(4, 4, 4), dtype="uint8")  # no record: not resumable
    with pytest.raises(UserError, match=r"^raw .* is unfinished; write it again with `psc-seg predict m.pt raw.zarr "
                                        r"out.zarr --overwrite`"):
        check_finished(synth, "raw")
    synth.update_attrs({"psc_seg": {"complete": False}})
    with pytest.raises(UserError, match="rerun the command that wrote it with --overwrite"):
        check_finished(open_volume(tmp_path / "synth.zarr"), "raw")
    synth.finalize()
    assert check_finished(open_volume(tmp_path / "synth.zarr"), "raw") is None


def test_existing_scheduler_address(tmp_path, monkeypatch):
    from distributed import LocalCluster

    from psc_seg.engine import executor

    data = np.random.default_rng(4).random((10, 11, 12)).astype(np.float32)
    src = create_volume(tmp_path / "in.zarr", shape=data.shape, dtype="float32")
    src.write(None, data)
    out = create_volume(tmp_path / "out.zarr", shape=data.shape, dtype="float32", chunks=(5, 5, 5))
    blocks = block_grid(Roi((0, 0, 0), data.shape), write_shape=5, context=1)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        stats = run_blockwise(blocks, PlusOne(src, out), scheduler=cluster.scheduler_address, progress=False)
    assert stats.computed == len(blocks) == 2 * 3 * 3
    np.testing.assert_array_equal(open_volume(tmp_path / "out.zarr").read(), data + 1)
    monkeypatch.setattr(executor, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(UserError, match="cannot reach the dask scheduler"):
        run_blockwise(blocks, PlusOne(src, out), scheduler="tcp://127.0.0.1:9", progress=False)
