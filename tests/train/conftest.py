"""Tiny labelled volumes written to real files (HDF5 for EM, NIfTI for MRI), and configs."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

GALA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gala"


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: threads only add contention on a busy 2-core machine
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def blob_labels(shape=(16, 32, 32), n=12, seed=0) -> np.ndarray:
    """Voronoi cells of ``n`` random seeds, ids 1..n, with 0 on the voxels next to another cell."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, dtype=np.int32)
    for i, p in enumerate(rng.integers(0, shape, size=(n, 3)), start=1):
        seeds[tuple(p)] = i
    _, (iz, iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[iz, iy, ix].astype(np.uint64)
    boundary = np.zeros(shape, dtype=bool)
    for axis in range(3):
        step = np.diff(labels.astype(np.int64), axis=axis) != 0
        lo = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        boundary[tuple(lo)] |= step
    labels[boundary] = 0
    return labels


@pytest.fixture
def em_volume(tmp_path) -> dict[str, str]:
    """``tmp_path/em.h5`` with ``/raw`` (uint8, dark boundaries + noise) and ``/gt``."""
    labels = blob_labels()
    rng = np.random.default_rng(1)
    raw = np.where(labels == 0, 60.0, 180.0) + rng.normal(0, 15, labels.shape)
    path = tmp_path / "em.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = raw.clip(0, 255).astype(np.uint8)
        f["gt"] = labels
    return {"raw": f"{path}:/raw", "labels": f"{path}:/gt", "gt": labels}


@pytest.fixture
def mri_volume(tmp_path) -> dict[str, str]:
    """``tmp_path/t1.nii.gz`` (float32) and ``tmp_path/seg.nii.gz`` with classes 0..3 as
    nested spheres."""
    shape = (32, 32, 32)
    grid = np.stack(np.meshgrid(*[np.arange(s) - s / 2 for s in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    classes = np.select([r < 6, r < 10, r < 14], [1, 2, 3], 0).astype(np.uint8)
    rng = np.random.default_rng(2)
    t1 = np.array([0.0, 300.0, 600.0, 900.0])[classes] + rng.normal(0, 40, shape)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(t1.astype(np.float32), affine), tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(classes, affine), tmp_path / "seg.nii.gz")
    return {"raw": str(tmp_path / "t1.nii.gz"), "labels": str(tmp_path / "seg.nii.gz"), "classes": classes}


def em_config(volume: dict, **train) -> dict:
    """A tiny affinity config on ``volume`` (validated on the same volume)."""
    pair = {"raw": volume["raw"], "labels": volume["labels"]}
    return {
        "model": {"name": "unet", "conv": "psc(2,2)", "num_fmaps": 2, "fmap_inc_factor": 2,
                  "downsample_factors": [[1, 2, 2]]},
        "task": {"kind": "affinities"},
        "data": {"train": [pair], "validation": [pair], "zero_label": "boundary"},
        "train": {"iterations": 4, "batch_size": 2, "patch_shape": [4, 8, 8], "validate_every": 2,
                  "num_workers": 0, "lr": 1.0e-3, **train},
        "augment": {"noise_sigma": 0.05, "missing_section": 0.1, "low_contrast": 0.1},
        "validation": {"thresholds": [0.3, 0.6]},
    }


def mri_config(volume: dict, **train) -> dict:
    """A tiny semantic config (DenseNet, 4 classes) on ``volume``."""
    pair = {"raw": volume["raw"], "labels": volume["labels"]}
    return {
        "model": {"name": "densenet", "conv": "psc(2,2)", "stem_channels": 4, "growth_rate": 2,
                  "block_layers": [1, 1, 1, 1], "dropout": 0.1},
        "task": {"kind": "semantic", "num_classes": 4},
        "data": {"train": [pair], "validation": [pair], "normalize": {"kind": "zscore"}},
        "train": {"iterations": 3, "batch_size": 2, "patch_shape": [16, 16, 16], "validate_every": 3,
                  "num_workers": 0, "lr": 1.0e-3, "loss": "ce+dice", "min_labelled": 0.1, **train},
    }
