"""Synthetic EM volumes: shapes, label statistics, image statistics, determinism."""

import numpy as np
import pytest
from scipy import ndimage
from skimage import measure

from psc_seg.errors import UserError
from psc_seg.synth import em_volume

SHAPE = (24, 48, 48)


@pytest.fixture(scope="module")
def volume():
    return em_volume(SHAPE, seed=3, cell_size=12.0)


def test_shapes_and_dtypes(volume):
    assert volume["raw"].shape == SHAPE and volume["raw"].dtype == np.uint8
    assert volume["labels"].shape == SHAPE and volume["labels"].dtype == np.uint64
    assert volume["mask"].shape == SHAPE and volume["mask"].dtype == bool
    assert volume["voxel_size"].tolist() == [8.0, 8.0, 8.0]


def test_labels_fill_space_one_component_per_id(volume):
    labels = volume["labels"]
    assert labels.min() >= 1
    ids = np.unique(labels)
    assert ids.tolist() == list(range(1, ids.size + 1))
    # relabelling connected components of equal id gives exactly as many components as ids
    assert measure.label(labels.astype(np.int64), connectivity=1).max() == ids.size


def test_number_of_cells_follows_cell_size():
    # about one cell per cell_size^3 voxels (neurites ~5 diameters long, boutons bigger)
    for cell_size in (10.0, 16.0):
        labels = em_volume((32, 64, 64), seed=0, cell_size=cell_size)["labels"]
        expected = 32 * 64 * 64 / cell_size**3
        assert 0.4 * expected <= np.unique(labels).size <= 1.6 * expected


def test_mask_covers_every_interface_and_a_plausible_fraction(volume):
    labels, mask = volume["labels"], volume["mask"]
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        m = np.moveaxis(mask, axis, 0)
        differs = a[1:] != a[:-1]
        assert m[1:][differs].all() and m[:-1][differs].all()
    assert 0.08 <= mask.mean() <= 0.45
    # membranes are at most membrane_width thick: no mask voxel is 2 voxels from an interface
    interior = np.ones_like(mask)
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        i = np.moveaxis(interior, axis, 0)
        i[1:] &= a[1:] == a[:-1]
        i[:-1] &= a[1:] == a[:-1]
    assert not (mask & interior).any()  # with the default width 3 the mask is the interface voxels


def test_membranes_are_dark(volume):
    raw, mask = volume["raw"].astype(float), volume["mask"]
    assert raw[mask].mean() < raw[~mask].mean() - 30


def test_clean_image_levels():
    clean = em_volume(SHAPE, seed=1, noise=0, blur=0, drift=0, mitochondria=False, vesicles=False, dark_cells=0)
    raw, labels, mask = clean["raw"].astype(float), clean["labels"], clean["mask"]
    # away from membranes (whose dark profile reaches a little past the mask) every cell has
    # one grey, plus a faint grain, in the cytoplasm range
    from psc_seg.synth.em import CYTOPLASM_RANGE

    inside = ~ndimage.binary_dilation(mask, iterations=2)
    checked = 0
    for cell in np.unique(labels):
        values = raw[inside & (labels == cell)]
        if values.size > 50:
            assert CYTOPLASM_RANGE[0] * 255 - 3 <= np.median(values) <= CYTOPLASM_RANGE[1] * 255 + 3
            assert values.std() < 0.05 * 255  # the grain has a standard deviation of 0.035
            checked += 1
    assert checked >= 5


def test_dark_cells():
    from psc_seg.synth.em import DARK_CYTOPLASM_RANGE

    clean = em_volume(SHAPE, seed=1, noise=0, blur=0, drift=0, mitochondria=False, vesicles=False, dark_cells=1.0)
    raw, labels = clean["raw"].astype(float), clean["labels"]
    inside = ~ndimage.binary_dilation(clean["mask"], iterations=2)
    medians = [np.median(raw[inside & (labels == c)]) for c in np.unique(labels) if (inside & (labels == c)).sum() > 50]
    assert len(medians) >= 5
    assert all(DARK_CYTOPLASM_RANGE[0] * 255 - 3 <= m <= DARK_CYTOPLASM_RANGE[1] * 255 + 3 for m in medians)


def test_organelles_change_the_image_not_the_labels():
    plain = em_volume(SHAPE, seed=5, mitochondria=False, vesicles=False)
    rich = em_volume(SHAPE, seed=5)
    np.testing.assert_array_equal(plain["labels"], rich["labels"])
    np.testing.assert_array_equal(plain["mask"], rich["mask"])
    # every other component (levels, membranes, drift, noise) draws from its own stream, so the
    # organelles only darken: by up to 0.6 of the grey inside them, never brighten
    difference = rich["raw"].astype(int) - plain["raw"].astype(int)
    assert difference.max() <= 1  # rounding
    assert (difference < -40)[~rich["mask"]].sum() > 100


def test_zero_membranes():
    default = em_volume(SHAPE, seed=2)
    zeroed = em_volume(SHAPE, seed=2, zero_membranes=True)
    assert (zeroed["labels"][zeroed["mask"]] == 0).all()
    np.testing.assert_array_equal(zeroed["labels"][~zeroed["mask"]], default["labels"][~default["mask"]])
    np.testing.assert_array_equal(zeroed["raw"], default["raw"])


def test_deterministic_per_seed():
    a = em_volume((16, 32, 32), seed=7)
    b = em_volume((16, 32, 32), seed=7)
    c = em_volume((16, 32, 32), seed=8)
    for key in ("raw", "labels", "mask"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["raw"], c["raw"])
    assert not np.array_equal(a["labels"], c["labels"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shape": (16, 32)}, "three integers"),
        ({"shape": (4, 32, 32)}, ">= 8"),
        ({"cell_size": 2.0}, "cell_size"),
        ({"membrane_width": 20.0}, "membrane_width"),
        ({"noise": -1.0}, ">= 0"),
        ({"dark_cells": 1.5}, "dark_cells"),
    ],
)
def test_bad_arguments(kwargs, match):
    kwargs = {"shape": (16, 32, 32), **kwargs}
    with pytest.raises(UserError, match=match):
        em_volume(**kwargs)
