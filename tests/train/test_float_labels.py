"""MRI labels stored as float NIfTI (as nnU-Net users have them): whole numbers train, any
other value is refused naming the voxel."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from psc_seg.errors import UserError
from psc_seg.pipelines.train import check_whole, open_labelled, train
from psc_seg.train.config import load_config

from .conftest import mri_config


def _float_labels(tmp_path, classes: np.ndarray, name: str) -> str:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(classes.astype(np.float32), np.eye(4)), path)
    return str(path)


def test_float_nifti_labels_of_whole_numbers_train(tmp_path, mri_volume):
    labels = _float_labels(tmp_path, mri_volume["classes"], "seg-float.nii.gz")
    config = mri_config({**mri_volume, "labels": labels}, iterations=2, validate_every=2)
    cfg = load_config(config)
    for preload in (True, False):  # in memory, and read lazily (as validation volumes are)
        volume = open_labelled(cfg.data.train[0], cfg, preload=preload)
        read = np.asarray(volume.labels[0:32, 0:32, 0:32])
        assert read.dtype == np.int64
        np.testing.assert_array_equal(read, mri_volume["classes"].T)  # NIfTI's x, y, z as z, y, x
    summary = train(config, out=tmp_path / "run", quiet=True)
    assert summary["iteration"] == 2 and 0 <= summary["validation"]["val_dice"] <= 1


def test_float_labels_with_a_fraction_or_nan_are_refused(tmp_path, mri_volume):
    classes = mri_volume["classes"].astype(np.float32)
    classes[5, 6, 7] = 0.5  # NIfTI (i, j, k) = (x, y, z): psc-seg's (z, y, x) is (7, 6, 5)
    labels = _float_labels(tmp_path, classes, "seg-half.nii.gz")
    config = mri_config({**mri_volume, "labels": labels})
    with pytest.raises(UserError, match=r"hold 0\.5 at \(z, y, x\) = \(7, 6, 5\), not a whole number; .*round them") as info:
        train(config, out=tmp_path / "run", quiet=True)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
    nan = np.zeros((6, 4, 4), dtype=np.float64)
    nan[4, 1, 2] = np.nan
    with pytest.raises(UserError, match=r"hold nan at \(z, y, x\) = \(4, 1, 2\)"):
        check_whole(nan, "gt.h5:/labels", max_voxels=16)  # found in the fourth slab of one z plane
    check_whole(np.array([[[0.0, 3.0, -2.0]]]), "whole")
