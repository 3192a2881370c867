"""Blockwise segmentation: same answer as whole-volume, resumable, on the engine's executors."""

import numpy as np
import pytest
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.errors import UserError
from psc_seg.evaluate import variation_of_information
from psc_seg.io import open_volume
from psc_seg.pipelines.segment import segment
from psc_seg.segment import blockwise, segment_affinities
from psc_seg.affinities import DEFAULT_OFFSETS, seg_to_affinities


def _voi(a, b, **kw):
    return sum(variation_of_information(a, b, **kw))


@pytest.fixture
def small(tmp_path, make_labels):
    labels = make_labels((32, 48, 48), 25, seed=7, background=0.1)
    path = tmp_path / "affs.npy"
    np.save(path, seg_to_affinities(labels))
    return labels, str(path)


@pytest.mark.parametrize("decoder, fragments", [("waterz", "waterz"), ("waterz", "distance"), ("cc", "waterz")])
def test_affinities_of_labels_segment_back_blockwise(tmp_path, small, decoder, fragments):
    labels, affs = small
    (out,) = segment(affs, str(tmp_path / "seg.zarr"), decoder=decoder, fragments=fragments,
                     block_shape=(16, 24, 24), progress=False, offsets=DEFAULT_OFFSETS)
    seg = open_volume(out)
    assert seg.complete and seg.dtype == np.uint64
    assert _voi(labels, seg.read()) <= 0.05
    assert not list(tmp_path.glob(".*psc-seg-segment"))  # bookkeeping removed


@pytest.mark.parametrize("decoder, fragments, scoring", [("waterz", "waterz", "hist_quant_50"), ("cc", "waterz", "mean")])
def test_blockwise_matches_whole_volume_on_noisy_128(tmp_path, make_labels, make_noisy, decoder, fragments, scoring):
    labels = make_labels((128, 128, 128), 150, seed=4, background=0.1)
    affs = make_noisy(seg_to_affinities(labels), sigma=0.1, seed=4, smooth=1.0)
    np.save(tmp_path / "affs.npy", affs)
    (whole,) = segment_affinities(affs, thresholds=[0.5], decoder=decoder, fragments=fragments, scoring=scoring)
    (out,) = segment(str(tmp_path / "affs.npy"), str(tmp_path / "seg.zarr"), thresholds=[0.5], decoder=decoder,
                     fragments=fragments, scoring=scoring, block_shape=(48, 48, 48), progress=False,
                     offsets=DEFAULT_OFFSETS)
    assert _voi(whole, open_volume(out).read(), ignore_labels=()) <= 0.1
    if decoder == "waterz":  # the noise is mild enough for waterz to find the cells again
        assert _voi(labels, whole) <= 0.05



def test_cc_blockwise_joins_across_blocks_at_threshold_one(tmp_path, make_labels, make_noisy):
    # at threshold 1 every positive affinity links; blocks must join like the whole volume
    labels = make_labels((24, 40, 40), 15, seed=3)
    affs = make_noisy(seg_to_affinities(labels), sigma=0.1, seed=3)
    np.save(tmp_path / "affs.npy", affs)
    (whole,) = segment_affinities(affs, thresholds=[1.0], decoder="cc")
    (out,) = segment(str(tmp_path / "affs.npy"), str(tmp_path / "seg.zarr"), thresholds=[1.0], decoder="cc",
                     block_shape=(12, 20, 20), progress=False, offsets=DEFAULT_OFFSETS)
    assert _voi(whole, open_volume(out).read(), ignore_labels=()) <= 1e-6

def test_several_thresholds_on_a_local_cluster_match_whole(tmp_path, make_labels, make_noisy):
    labels = make_labels((24, 40, 40), 15, seed=9)
    affs = make_noisy(seg_to_affinities(labels), sigma=0.1, seed=9)
    np.save(tmp_path / "affs.npy", affs)
    outs = segment(str(tmp_path / "affs.npy"), str(tmp_path / "seg.zarr"), thresholds=[0.3, 0.6],
                   fragments="distance", scoring="mean", block_shape=(12, 20, 20), workers=2, progress=False,
                   offsets=DEFAULT_OFFSETS)
    assert outs == [str(tmp_path / "seg.zarr/threshold_0.30"), str(tmp_path / "seg.zarr/threshold_0.60")]
    wholes = segment_affinities(affs, thresholds=[0.3, 0.6], fragments="distance", scoring="mean")
    for out, whole in zip(outs, wholes):
        assert _voi(whole, open_volume(out).read(), ignore_labels=()) <= 0.1


def test_min_size_drops_small_segments_across_blocks(tmp_path):
    labels = np.zeros((8, 16, 16), dtype=np.uint64)
    labels[:, :, :10] = 1  # 1280 voxels, spans blocks
    labels[2:4, 2:4, 12:14] = 2  # 8 voxels
    np.save(tmp_path / "affs.npy", seg_to_affinities(labels))
    (out,) = segment(str(tmp_path / "affs.npy"), str(tmp_path / "seg.zarr"), min_size=9, block_shape=(4, 8, 8),
                     progress=False, offsets=DEFAULT_OFFSETS)
    seg = open_volume(out).read()
    assert len(np.unique(seg[labels == 1])) == 1 and seg[labels == 1].all()
    assert not seg[labels == 2].any()


def test_interrupted_run_resumes_without_redoing_finished_steps(tmp_path, small, monkeypatch):
    labels, affs = small
    target = str(tmp_path / "seg.zarr")
    calls = {"n": 0}
    original = blockwise._RelabelStep.__call__

    def failing(self, block):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return original(self, block)

    monkeypatch.setattr(blockwise._RelabelStep, "__call__", failing)
    with pytest.raises(RuntimeError, match="killed"):
        segment(affs, target, block_shape=(16, 24, 24), progress=False, offsets=DEFAULT_OFFSETS)
    assert not open_volume(target).complete
    with pytest.raises(UserError, match="pass resume"):
        segment(affs, target, block_shape=(16, 24, 24), progress=False, offsets=DEFAULT_OFFSETS)
    with pytest.raises(UserError, match="other settings"):
        segment(affs, target, block_shape=(16, 24, 24), scoring="mean", resume=True, progress=False,
                offsets=DEFAULT_OFFSETS)

    def must_not_run(self, block):
        raise AssertionError("finished step ran again")

    monkeypatch.setattr(blockwise._RelabelStep, "__call__", original)
    monkeypatch.setattr(blockwise._FragmentStep, "__call__", must_not_run)
    monkeypatch.setattr(blockwise._EdgeStep, "__call__", must_not_run)
    segment(affs, target, block_shape=(16, 24, 24), resume=True, progress=False, offsets=DEFAULT_OFFSETS)
    seg = open_volume(target)
    assert seg.complete and _voi(labels, seg.read()) <= 0.05


def test_segment_cli(tmp_path, small):
    labels, affs = small
    runner = CliRunner()
    result = runner.invoke(app, ["segment", affs, str(tmp_path / "seg.zarr"), "-t", "0.5", "-t", "0.9", "--quiet",
                                 "--offsets", "[[-1,0,0],[0,-1,0],[0,0,-1]]"])
    assert result.exit_code == 0, result.output
    for name in ("threshold_0.50", "threshold_0.90"):
        assert _voi(labels, open_volume(str(tmp_path / "seg.zarr" / name)).read()) <= 0.05
    result = runner.invoke(app, ["segment", affs, str(tmp_path / "seg.zarr"), "-t", "0.5", "-t", "0.9", "--quiet",
                                 "--offsets", "[[-1,0,0],[0,-1,0],[0,0,-1]]"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = runner.invoke(app, ["segment", affs, str(tmp_path / "one.zarr"), "--block-shape", "16", "24", "24",
                                 "--decoder", "cc", "--quiet", "--offsets", "[[-1,0,0],[0,-1,0],[0,0,-1]]"])
    assert result.exit_code == 0, result.output
    assert _voi(labels, open_volume(str(tmp_path / "one.zarr")).read()) <= 0.05
    np.save(tmp_path / "labels.npy", labels)
    for args, message in [
        ([str(tmp_path / "labels.npy"), str(tmp_path / "x.zarr")], "expected (C, Z, Y, X)"),
        ([affs, str(tmp_path / "x.zarr"), "--scoring", "median"], "unknown --scoring"),
        ([affs, str(tmp_path / "x.zarr"), "--resume", "--overwrite"], "exclude each other"),
    ]:
        result = runner.invoke(app, ["segment", *args, "--quiet"])
        assert result.exit_code == 2 and message in result.output, result.output


def test_hdf5_outputs_per_threshold_and_nan_affinities(tmp_path, small):
    labels, affs = small
    target = f"{tmp_path / 'seg.h5'}:/seg"
    outs = segment(affs, target, thresholds=[0.4, 0.6], block_shape=(16, 24, 24), progress=False,
                   offsets=DEFAULT_OFFSETS)
    assert outs == [f"{tmp_path / 'seg.h5'}:/seg/threshold_0.40", f"{tmp_path / 'seg.h5'}:/seg/threshold_0.60"]
    for out in outs:
        assert _voi(labels, open_volume(out).read()) <= 0.05
    bad = np.load(affs)
    bad[0, 3, 3, 3] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    for block_shape in (None, (16, 24, 24)):
        with pytest.raises(UserError, match="NaN"):
            segment(str(tmp_path / "bad.npy"), str(tmp_path / f"nan{block_shape is None}.zarr"),
                    block_shape=block_shape, progress=False, offsets=DEFAULT_OFFSETS)
