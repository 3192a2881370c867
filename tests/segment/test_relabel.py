"""Fast label bookkeeping: equal to np.unique on small and large ids, empty and signed input."""

import numpy as np
import pytest

from psc_seg.segment.relabel import unique_inverse, unique_pairs


def _arrays():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 40, (6, 7, 8)).astype(np.uint64)  # lookup-table path
    blocky = np.repeat(rng.integers(0, 5, (6, 7, 2)), 4, axis=2).astype(np.uint64)
    large = np.where(blocky > 0, blocky * np.uint64(10**12) + np.uint64(2**62), 0).astype(np.uint64)  # runs path
    return [small, blocky, large, large[:, ::2], rng.integers(-3, 3, (5, 5)), np.array([7], np.uint8)]


@pytest.mark.parametrize("labels", _arrays())
def test_unique_inverse_equals_numpy(labels):
    ids, inverse, counts = unique_inverse(labels)
    expected_ids, expected_inverse, expected_counts = np.unique(labels, return_inverse=True, return_counts=True)
    assert ids.dtype == labels.dtype and inverse.shape == labels.shape
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(inverse, expected_inverse.reshape(labels.shape))
    np.testing.assert_array_equal(counts, expected_counts)
    np.testing.assert_array_equal(ids[inverse], labels)


def test_unique_inverse_of_nothing_and_of_floats():
    ids, inverse, counts = unique_inverse(np.zeros((0, 4), np.uint64))
    assert ids.size == 0 and inverse.shape == (0, 4) and counts.size == 0
    with pytest.raises(TypeError, match="integer"):
        unique_inverse(np.zeros(3, np.float32))


def test_unique_pairs():
    uv = np.array([[3, 9], [1, 2], [3, 9], [1, 5], [1, 2]], dtype=np.uint64)
    assert unique_pairs(uv).tolist() == [[1, 2], [1, 5], [3, 9]]
    assert unique_pairs(np.zeros((0, 2), np.uint64)).shape == (0, 2)
