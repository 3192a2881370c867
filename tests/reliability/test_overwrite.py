"""``--overwrite`` never loses the old output (issue 13, case 4): the replacement is written
beside it and takes its place only once complete, so a rerun that fails or is killed leaves
the old output as it was, and ``--resume`` continues the replacement."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.engine.inference import BlockPredictor
from psc_seg.io import META_KEY, create_volume, open_volume, staged_spec, volume_exists
from psc_seg.pipelines.predict import predict
from psc_seg.pipelines.segment import segment

runner = CliRunner()


def _psc_seg() -> str:
    exe = Path(sys.executable).with_name("psc-seg")
    return str(exe if exe.exists() else "psc-seg")


def _fail_at_block(monkeypatch, n: int) -> None:
    """The next predict stops with an error at its ``n``-th block (a fault found while running)."""
    original, calls = BlockPredictor.__call__, itertools.count()

    def failing(self, task):
        if next(calls) == n:
            raise RuntimeError("fault at a block")
        return original(self, task)

    monkeypatch.setattr(BlockPredictor, "__call__", failing)


@pytest.mark.parametrize("output", ["affs.zarr", "d.zarr/affs", "d.h5:/affs", "affs.npy"])
def test_a_failed_overwrite_keeps_the_old_output_and_resume_finishes_the_new_one(tmp_path, raw_zarr, checkpoint,
                                                                                 monkeypatch, output):
    out = str(tmp_path / output)
    predict(checkpoint, raw_zarr, out, block_shape=(16, 16, 16), progress=False)
    old = open_volume(out).read()
    _fail_at_block(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="fault at a block"):
        predict(checkpoint, raw_zarr, out, block_shape=(16, 16, 16), dtype="uint8", overwrite=True, progress=False)
    monkeypatch.undo()
    kept = open_volume(out)
    assert kept.complete and kept.dtype == np.float32
    np.testing.assert_array_equal(kept.read(), old)
    assert volume_exists(str(staged_spec(out)))  # the replacement, unfinished, beside it

    summary = predict(checkpoint, raw_zarr, out, block_shape=(16, 16, 16), dtype="uint8", resume=True,
                      progress=False)
    assert (summary["skipped"], summary["computed"]) == (3, 5)
    new = open_volume(out)
    assert new.complete and new.dtype == np.uint8
    np.testing.assert_array_equal(new.read(), np.round(np.clip(old, 0, 1) * 255).astype(np.uint8))
    assert not volume_exists(str(staged_spec(out)))
    assert predict(checkpoint, raw_zarr, out, block_shape=(16, 16, 16), dtype="uint8", resume=True,
                   progress=False)["computed"] == 0


def test_a_killed_overwrite_keeps_the_old_output_bit_for_bit(tmp_path, raw_zarr, checkpoint, kill_after):
    """A real SIGKILL of ``psc-seg predict --overwrite`` half-way: the old output is still
    there, complete and unchanged; ``--resume`` puts the new one in its place."""
    out = tmp_path / "affs.zarr"
    predict(checkpoint, raw_zarr, str(out), block_shape=(8, 8, 8), progress=False)
    old = open_volume(str(out)).read()
    cmd = [_psc_seg(), "predict", str(checkpoint), raw_zarr, str(out), "--block-shape", "8", "8", "8",
           "--dtype", "uint8", "--overwrite", "--quiet"]
    staged = Path(str(staged_spec(str(out))))
    kill_after(cmd, staged / "0" / ".psc-seg-blocks" / "done.log", 3, env={**os.environ, "OMP_NUM_THREADS": "1"})
    kept = open_volume(str(out))
    assert kept.complete
    np.testing.assert_array_equal(kept.read(), old)
    result = runner.invoke(app, ["predict", str(checkpoint), raw_zarr, str(out), "--block-shape", "8", "8", "8",
                                 "--dtype", "uint8", "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    assert open_volume(str(out)).dtype == np.uint8 and open_volume(str(out)).complete
    assert not staged.exists()


def test_a_new_overwrite_clears_an_abandoned_replacement(tmp_path, raw_zarr, checkpoint, monkeypatch):
    out = str(tmp_path / "affs.zarr")
    predict(checkpoint, raw_zarr, out, block_shape=(16, 16, 16), progress=False)
    _fail_at_block(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        predict(checkpoint, raw_zarr, out, block_shape=(16, 16, 16), dtype="uint8", overwrite=True, progress=False)
    monkeypatch.undo()
    summary = predict(checkpoint, raw_zarr, out, block_shape=(32, 32, 32), overwrite=True, progress=False)
    assert summary["computed"] == summary["blocks"] == 1
    assert open_volume(out).complete and open_volume(out).chunks[1:] == (32, 32, 32)
    assert not volume_exists(str(staged_spec(out)))


def _affinities(path, *, nan: bool = False) -> str:
    rng = np.random.default_rng(0)
    data = rng.random((3, 16, 16, 16)).astype(np.float32)
    if nan:
        data[0, 9, 9, 9] = np.nan
    volume = create_volume(path, shape=data.shape, dtype=np.float32, attrs={"task": {"kind": "affinities", "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]}})
    volume.write(None, data)
    volume.finalize()
    return str(path)


@pytest.mark.parametrize("blockwise", [False, True])
def test_segment_overwrite_that_fails_keeps_the_old_segmentation(tmp_path, blockwise):
    good, bad = _affinities(tmp_path / "good.zarr"), _affinities(tmp_path / "bad.zarr", nan=True)
    seg = str(tmp_path / "seg.zarr")
    extra = {"block_shape": (8, 8, 8)} if blockwise else {}
    segment(good, seg, thresholds=[0.5], progress=False, **extra)
    old = open_volume(seg).read()
    with pytest.raises(Exception, match="NaN"):
        segment(bad, seg, thresholds=[0.5], progress=False, overwrite=True, **extra)
    assert open_volume(seg).complete
    np.testing.assert_array_equal(open_volume(seg).read(), old)
    (done,) = segment(good, seg, thresholds=[0.3], progress=False, overwrite=True, **extra)
    assert open_volume(done).complete and open_volume(done).attrs[META_KEY]["provenance"]["config"]["threshold"] == 0.3
    assert not volume_exists(str(staged_spec(seg)))


def test_a_nifti_segmentation_is_replaced_in_one_rename(tmp_path):
    good = _affinities(tmp_path / "good.zarr")
    seg = tmp_path / "seg.nii.gz"
    segment(good, str(seg), thresholds=[0.5], progress=False)
    before = seg.read_bytes()
    with pytest.raises(Exception, match="NaN"):
        segment(_affinities(tmp_path / "bad.zarr", nan=True), str(seg), thresholds=[0.5], progress=False,
                overwrite=True)
    assert seg.read_bytes() == before
    segment(good, str(seg), thresholds=[0.2], progress=False, overwrite=True)
    assert seg.read_bytes() != before and open_volume(str(seg)).complete
    left = sorted(p.name for p in tmp_path.iterdir() if "seg." in p.name)
    assert left == [".seg.nii.gz.psc-seg-blocks", "seg.nii.gz"]  # its record; no replacement, no owner left


def test_ctrl_c_during_an_overwrite_says_the_old_output_is_unchanged(tmp_path, raw_zarr, checkpoint, monkeypatch):
    out = str(tmp_path / "affs.zarr")
    predict(checkpoint, raw_zarr, out, block_shape=(16, 16, 16), progress=False)
    original, calls = BlockPredictor.__call__, itertools.count()

    def ctrl_c_at_the_third_block(self, task):
        if next(calls) == 2:
            raise KeyboardInterrupt
        return original(self, task)

    monkeypatch.setattr(BlockPredictor, "__call__", ctrl_c_at_the_third_block)
    args = ["predict", str(checkpoint), raw_zarr, out, "--block-shape", "16", "16", "16", "--dtype", "uint8",
            "--overwrite", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 130
    (line,) = result.stderr.strip().splitlines()
    assert line == (f"interrupted: 2 of 8 blocks written to {staged_spec(out)} (beside the old output, which is "
                    f"unchanged) are kept; continue with `psc-seg {' '.join(args[:-2])} -q --resume`")
    assert open_volume(out).complete and open_volume(out).dtype == np.float32


def test_resume_after_a_kill_between_the_swaps_of_several_outputs(tmp_path, monkeypatch):
    """Killed after the first of two replacements was swapped in: ``--resume`` counts that one
    as in place and swaps the other in (it was a dead end: "no 'threshold_0.30.psc-seg-new'")."""
    import psc_seg.io as io

    affs = _affinities(tmp_path / "affs.zarr")
    seg = str(tmp_path / "seg.zarr")
    segment(affs, seg, thresholds=[0.3, 0.6], progress=False)
    original, calls = io.replace_output, itertools.count()

    def killed_at_the_second(new, target):
        if next(calls) == 1:
            raise KeyboardInterrupt  # as a kill would stop it
        return original(new, target)

    monkeypatch.setattr(io, "replace_output", killed_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        segment(affs, seg, thresholds=[0.3, 0.6], min_size=5, progress=False, overwrite=True)
    monkeypatch.undo()
    outputs = segment(affs, seg, thresholds=[0.3, 0.6], min_size=5, progress=False, resume=True)
    for spec in outputs:
        volume = open_volume(spec)
        assert volume.complete and volume.attrs[META_KEY]["provenance"]["config"]["min_size"] == 5
        assert not volume_exists(str(staged_spec(spec)))
