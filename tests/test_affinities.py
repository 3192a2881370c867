"""Affinities of labels follow DESIGN.md: aff[i, p] = 1 iff label[p] == label[p + o_i] != 0."""

import numpy as np
import pytest

from psc_seg.affinities import DEFAULT_OFFSETS, affinities_and_mask, seg_to_affinities


def test_default_offsets_are_waterz_order():
    assert [list(o) for o in DEFAULT_OFFSETS] == [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]


def test_hand_made_line_along_x():
    labels = np.array([[[1, 1, 2, 0, 0, 3]]], dtype=np.uint64)  # (1, 1, 6)
    affs = seg_to_affinities(labels)
    assert affs.shape == (3, 1, 1, 6) and affs.dtype == np.float32
    # x channel: pair (x-1, x); first voxel has no neighbour (outside -> 0)
    np.testing.assert_array_equal(affs[2, 0, 0], [0, 1, 0, 0, 0, 0])
    # z and y neighbours are all outside the volume
    assert not affs[:2].any()


def test_matches_brute_force_definition_with_long_range_offsets():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(4, 5, 6)).astype(np.uint64)
    offsets = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, 2, -3], [3, 0, 0]]
    affs, mask = affinities_and_mask(labels, offsets)
    for c, (dz, dy, dx) in enumerate(offsets):
        for z, y, x in np.ndindex(labels.shape):
            q = (z + dz, y + dy, x + dx)
            inside = all(0 <= q[a] < labels.shape[a] for a in range(3))
            both = inside and labels[z, y, x] != 0 and labels[q] != 0
            assert mask[c, z, y, x] == float(both)
            assert affs[c, z, y, x] == float(both and labels[z, y, x] == labels[q])


def test_offset_longer_than_volume_gives_zeros():
    labels = np.ones((2, 2, 2), dtype=np.int32)
    affs, mask = affinities_and_mask(labels, [[0, 0, -5]])
    assert not affs.any() and not mask.any()


@pytest.mark.parametrize("bad", [np.ones((2, 2)), np.ones((2, 2, 2), dtype=np.float32)])
def test_rejects_bad_labels(bad):
    with pytest.raises(ValueError):
        seg_to_affinities(bad)
