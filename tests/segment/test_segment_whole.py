"""Whole-volume segmentation: labels -> affinities -> labels, decoders, fragments, min size."""

import os
import sys

import numpy as np
import pytest

from psc_seg.evaluate import variation_of_information
from psc_seg.segment import agglomerate, affinity_components, make_fragments, remove_small_segments, segment_affinities
from psc_seg.segment.quiet import quiet_stdout
from psc_seg.affinities import DEFAULT_OFFSETS, seg_to_affinities


def _voi(gt, pred):
    return sum(variation_of_information(gt, pred))


@pytest.mark.parametrize(
    "decoder, fragments, scoring",
    [
        ("waterz", "waterz", "hist_quant_50"),
        ("waterz", "distance", "hist_quant_75"),
        ("waterz", "waterz", "mean"),
        ("cc", "waterz", "hist_quant_50"),
    ],
)
def test_affinities_of_labels_segment_back(make_labels, decoder, fragments, scoring):
    labels = make_labels((24, 40, 40), 30, seed=1, background=0.2)
    affs = seg_to_affinities(labels)
    (seg,) = segment_affinities(affs, thresholds=[0.5], decoder=decoder, fragments=fragments, scoring=scoring)
    assert seg.dtype == np.uint64 and seg.shape == labels.shape
    assert _voi(labels, seg) <= 0.05
    if decoder == "cc":  # background voxels have no link: they stay 0
        assert not seg[labels == 0].any()


def test_several_thresholds_merge_more_as_the_threshold_rises(make_labels, make_noisy):
    labels = make_labels((16, 32, 32), 12, seed=2)
    affs = make_noisy(seg_to_affinities(labels), sigma=0.15)
    low, mid, high = agglomerate(affs, [0.1, 0.5, 0.95], fragments=make_fragments(affs))
    counts = [len(np.unique(s)) for s in (low, mid, high)]
    assert counts[0] >= counts[1] >= counts[2]
    assert counts[2] < counts[0]
    # thresholds given out of order come back in the order given
    again = agglomerate(affs, [0.95, 0.1], fragments=make_fragments(affs))
    np.testing.assert_array_equal(again[0], high)
    np.testing.assert_array_equal(again[1], low)


def test_agglomerate_keeps_large_fragment_ids(make_labels):
    labels = make_labels((8, 24, 24), 6, seed=3)
    affs = seg_to_affinities(labels)
    fragments = make_fragments(affs, method="distance")
    big = np.where(fragments > 0, fragments + np.uint64(2**62), np.uint64(0)).astype(np.uint64)
    (seg,) = agglomerate(affs, [0.5], fragments=big)
    assert set(np.unique(seg)) <= set(np.unique(big))
    assert _voi(labels, seg) <= 0.05


def test_cc_threshold_is_strict_and_lone_voxels_are_background():
    affs = np.zeros((3, 1, 1, 5), dtype=np.float32)
    affs[2, 0, 0, 1] = 0.9  # joins x=0 and x=1
    affs[2, 0, 0, 4] = 0.5  # not above 0.5: x=3, x=4 stay apart
    labels = affinity_components(affs, 0.5)
    assert labels[0, 0].tolist() == [1, 1, 0, 0, 0]


def test_remove_small_segments():
    labels = np.array([[[1, 1, 1, 2, 3, 3]]], dtype=np.uint64)
    np.testing.assert_array_equal(remove_small_segments(labels, 2), [[[1, 1, 1, 0, 3, 3]]])


def test_quiet_stdout_silences_file_descriptor_one(capfd):
    with quiet_stdout():
        os.write(1, b"from C\n")
        print("from python")
    os.write(1, b"after\n")
    print("python after")
    sys.stdout.flush()
    out = capfd.readouterr().out
    assert "from C" not in out and "from python" not in out
    assert "after" in out and "python after" in out


def test_unknown_names_raise():
    affs = np.zeros((3, 2, 2, 2), np.float32)
    with pytest.raises(ValueError, match="decoder"):
        segment_affinities(affs, decoder="magic")
    with pytest.raises(ValueError, match="fragments"):
        make_fragments(affs, method="magic")
    with pytest.raises(ValueError, match="scoring"):
        agglomerate(affs, [0.5], scoring="magic")


def test_scored_edges_reproduce_waterz_at_every_threshold(make_labels, make_noisy):
    from psc_seg.segment import merge_fragments, scored_edges

    labels = make_labels((16, 32, 32), 12, seed=5)
    affs = make_noisy(seg_to_affinities(labels), sigma=0.15, seed=5)
    fragments = make_fragments(affs)
    uv, scores = scored_edges(affs, fragments, max_threshold=0.9)
    assert uv.dtype == np.uint64 and (uv[:, 0] < uv[:, 1]).all()
    ids = np.unique(fragments[fragments > 0])
    for threshold in (0.2, 0.5, 0.9):
        (expected,) = agglomerate(affs, [threshold], fragments=fragments)
        segments = merge_fragments(ids, uv, scores, threshold)
        rebuilt = np.zeros_like(fragments)
        rebuilt[fragments > 0] = segments[np.searchsorted(ids, fragments[fragments > 0])]
        assert _voi(expected, rebuilt) == pytest.approx(0.0, abs=1e-12)


def test_join_scores_of_a_hand_made_merge_history():
    from psc_seg.segment.agglomerate import _join_scores

    # fragments 0..5; merges (a, b, score), a keeps its id: {1,2} 0.1, {3,4} 0.2, {1,2,3,4} 0.3, {5,1..4} 0.4
    merges = (np.array([1, 3, 1, 5]), np.array([2, 4, 3, 1]), np.array([0.1, 0.2, 0.3, 0.4]))
    pairs = np.array([[1, 2], [2, 4], [4, 3], [0, 1], [5, 2], [3, 1]])
    scores = _join_scores(pairs, merges, 6)
    np.testing.assert_array_equal(scores, [0.1, 0.3, 0.2, np.inf, 0.4, 0.3])


def test_whole_volume_resume_keeps_a_finished_run_and_refuses_other_settings(tmp_path, make_labels):
    from psc_seg.errors import UserError
    from psc_seg.io import open_volume
    from psc_seg.pipelines.segment import segment

    np.save(tmp_path / "affs.npy", seg_to_affinities(make_labels((16, 24, 24), 8, seed=2)))
    affs, out = str(tmp_path / "affs.npy"), str(tmp_path / "seg.zarr")
    (spec,) = segment(affs, out, progress=False, offsets=DEFAULT_OFFSETS)
    before = os.path.getmtime(tmp_path / "seg.zarr" / "zarr.json")
    assert segment(affs, out, resume=True, progress=False, offsets=DEFAULT_OFFSETS) == [spec]  # finished: nothing redone
    assert os.path.getmtime(tmp_path / "seg.zarr" / "zarr.json") == before
    with pytest.raises(UserError, match="other settings"):
        segment(affs, out, resume=True, min_size=10**6, progress=False, offsets=DEFAULT_OFFSETS)
    assert open_volume(spec).read().max() > 0  # left as it was


def test_overwrite_that_fails_leaves_the_previous_segmentation(tmp_path, make_labels):
    """NaN affinities found while segmenting: the segmentation the user had is still there, complete."""
    from psc_seg.errors import UserError
    from psc_seg.io import create_volume, open_volume
    from psc_seg.pipelines.segment import segment

    labels = make_labels((8, 24, 24), 6, seed=3)
    affs = seg_to_affinities(labels)
    specs = {}
    for name, data in [("good", affs), ("bad", np.where(np.arange(affs.size).reshape(affs.shape) == 7, np.nan, affs))]:
        volume = create_volume(str(tmp_path / f"{name}.zarr"), shape=affs.shape, dtype="float32",
                               attrs={"task": {"kind": "affinities", "offsets": [list(o) for o in DEFAULT_OFFSETS]}})
        volume.write(None, data.astype(np.float32))
        volume.finalize()
        specs[name] = str(tmp_path / f"{name}.zarr")
    (out,) = segment(specs["good"], str(tmp_path / "seg.zarr"), progress=False)
    before = open_volume(out).read()
    with pytest.raises(UserError, match="NaN"):
        segment(specs["bad"], out, overwrite=True, progress=False)
    assert open_volume(out).complete
    np.testing.assert_array_equal(open_volume(out).read(), before)
