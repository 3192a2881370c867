"""Synthetic MRI head phantom: classes, contrast, anatomy, determinism."""

import numpy as np
import pytest
from scipy import ndimage

from psc_seg.errors import UserError
from psc_seg.synth import mri_volume


@pytest.fixture(scope="module")
def phantom():
    return mri_volume((48, 48, 48), seed=1)


def test_shapes_dtypes_affine(phantom):
    assert phantom["raw"].shape == (48, 48, 48) and phantom["raw"].dtype == np.float32
    assert phantom["labels"].shape == (48, 48, 48) and phantom["labels"].dtype == np.uint8
    np.testing.assert_array_equal(phantom["affine"], np.eye(4))
    assert phantom["voxel_size"].tolist() == [1.0, 1.0, 1.0]


def test_all_classes_present_in_plausible_fractions(phantom):
    labels = phantom["labels"]
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    fractions = np.bincount(labels.ravel(), minlength=4) / labels.size
    assert 0.6 < fractions[0] < 0.9  # air, scalp, skull
    for k in (1, 2, 3):
        assert 0.01 < fractions[k] < 0.2


def test_t1_contrast(phantom):
    raw, labels = phantom["raw"], phantom["labels"]
    csf, gm, wm = (raw[labels == k].mean() for k in (1, 2, 3))
    assert wm > gm > csf
    assert wm - gm > 0.2 and gm - csf > 0.2


def test_anatomy_csf_wraps_the_brain(phantom):
    labels = phantom["labels"]
    brain = labels > 0
    # the voxels of the brain that touch the outside are CSF, never GM or WM
    rim = brain & ~ndimage.binary_erosion(brain, border_value=0)
    assert (labels[rim] == 1).all()
    # the head has no holes: background is only outside it
    assert ndimage.binary_fill_holes(brain).sum() == brain.sum()
    # the cortex: most GM borders CSF or lies within the cortex thickness of it
    csf_near = ndimage.binary_dilation(labels == 1, iterations=4)
    gm = labels == 2
    assert (gm & csf_near).sum() > 0.8 * gm.sum()


def test_clean_phantom_is_piecewise_flat():
    clean = mri_volume((32, 32, 32), seed=0, noise=0, bias=0)
    raw, labels = clean["raw"], clean["labels"]
    interior = {k: ndimage.binary_erosion(labels == k, iterations=1) for k in (2, 3)}
    for k, inside in interior.items():
        if inside.sum() > 20:
            assert raw[inside].std() < 0.06


def test_bias_and_noise_change_raw_not_labels():
    a = mri_volume((32, 32, 32), seed=4, noise=0, bias=0)
    b = mri_volume((32, 32, 32), seed=4)
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert np.abs(a["raw"] - b["raw"]).mean() > 0.02


def test_deterministic_per_seed():
    a = mri_volume((32, 32, 32), seed=3)
    b = mri_volume((32, 32, 32), seed=3)
    c = mri_volume((32, 32, 32), seed=9)
    np.testing.assert_array_equal(a["raw"], b["raw"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert not np.array_equal(a["labels"], c["labels"])


def test_bad_arguments():
    with pytest.raises(UserError, match=">= 24"):
        mri_volume((16, 32, 32))
    with pytest.raises(UserError, match="cortex_thickness"):
        mri_volume((32, 32, 32), cortex_thickness=0)
