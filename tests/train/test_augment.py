"""Augmentations keep raw, labels and mask aligned and change what they should."""

from __future__ import annotations

import numpy as np

from psc_seg.train.augment import augment, elastic, flip, section_defects, transpose, transposable_axes
from psc_seg.train.config import AugmentConfig


def _ramp(shape=(4, 6, 6)):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def test_flip_moves_all_arrays_alike():
    raw = _ramp()
    labels = raw.astype(np.uint64)
    for seed in range(8):
        out_raw, out_labels = flip([raw, labels], np.random.default_rng(seed))
        assert np.array_equal(out_raw.astype(np.uint64), out_labels)
        assert sorted(out_raw.ravel()) == sorted(raw.ravel())


def test_transposable_axes_need_equal_voxel_size_and_patch_size():
    assert transposable_axes((40, 4, 4), (8, 16, 16), (4, 8, 8)) == [(1, 2)]
    assert transposable_axes((10, 10, 10), (16, 16, 16), (8, 8, 8)) == [(0, 1, 2)]
    assert transposable_axes((10, 10, 10), (16, 20, 16), (8, 12, 8)) == [(0, 2)]
    assert transposable_axes((10, 5, 4), (8, 8, 8), (8, 8, 8)) == []


def test_transpose_swaps_only_the_allowed_axes():
    raw = _ramp((3, 5, 5))
    seen = set()
    for seed in range(10):
        (out,) = transpose([raw], [(1, 2)], np.random.default_rng(seed))
        assert out.shape == raw.shape
        seen.add(np.array_equal(out, raw.transpose(0, 2, 1)))
        assert np.array_equal(out, raw) or np.array_equal(out, raw.transpose(0, 2, 1))
    assert seen == {True, False}


def test_section_defects_blank_and_flatten_whole_sections():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, (50, 8, 8)).astype(np.float32)
    missing = section_defects(raw, np.random.default_rng(1), missing=1.0, low_contrast=0.0)
    assert np.all(missing == 0)
    low = section_defects(raw, np.random.default_rng(1), missing=0.0, low_contrast=1.0, contrast=0.2)
    np.testing.assert_allclose(low.std(axis=(1, 2)), 0.2 * raw.std(axis=(1, 2)), rtol=1e-4)
    np.testing.assert_allclose(low.mean(axis=(1, 2)), raw.mean(axis=(1, 2)), rtol=1e-4)
    some = section_defects(raw, np.random.default_rng(1), missing=0.3, low_contrast=0.0)
    blank = np.all(some == 0, axis=(1, 2))
    assert 0 < blank.sum() < 50
    assert np.array_equal(some[~blank], raw[~blank])


def test_elastic_keeps_labels_integral_and_raw_smooth():
    labels = np.zeros((12, 12, 12), dtype=np.uint64)
    labels[:, :, 6:] = 7
    raw = labels.astype(np.float32)
    known = np.ones(labels.shape, dtype=bool)
    out_raw, out_labels, out_known = elastic([raw, labels, known], np.random.default_rng(0), alpha=2.0, sigma=3.0)
    assert set(np.unique(out_labels)) <= {0, 7}
    assert out_known.dtype == bool and out_known.all()
    assert not np.array_equal(out_labels, labels)
    assert out_raw.min() >= 0 and out_raw.max() <= 7


def test_augment_intensity_ranges_and_determinism():
    raw = np.full((4, 8, 8), 0.5, dtype=np.float32)
    labels = np.ones(raw.shape, dtype=np.uint64)
    known = np.ones(raw.shape, dtype=bool)
    config = AugmentConfig(intensity_scale=(2.0, 2.0), intensity_shift=(0.1, 0.1), flip=False, transpose=False)
    out, _, _ = augment(raw, labels, known, np.random.default_rng(0), config)
    np.testing.assert_allclose(out, 1.1)
    config = AugmentConfig(noise_sigma=0.1, elastic={"enabled": True, "alpha": 1.0, "sigma": 2.0})
    a = augment(raw, labels, known, np.random.default_rng(5), config)
    b = augment(raw, labels, known, np.random.default_rng(5), config)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
