"""Synthetic labels for segmentation tests: Voronoi cells of seeded random points."""

import numpy as np
import pytest
from scipy import ndimage


def voronoi_labels(shape, n_cells, *, seed=0, background=0.0):
    """``(Z, Y, X)`` uint64 labels 1..n_cells of the nearest random seed point.

    ``background``: fraction of cells set to 0 (unlabelled), so that labels also touch 0.
    """
    rng = np.random.default_rng(seed)
    points = np.stack([rng.integers(0, s, n_cells) for s in shape], axis=1)
    marker = np.ones(shape, dtype=bool)
    marker[tuple(points.T)] = False
    _, index = ndimage.distance_transform_edt(marker, return_indices=True)
    ids = np.zeros(shape, dtype=np.uint64)
    ids[tuple(points.T)] = np.arange(1, n_cells + 1, dtype=np.uint64)
    labels = ids[tuple(index)]
    n_background = int(round(background * n_cells))
    if n_background:
        labels[np.isin(labels, rng.choice(np.arange(1, n_cells + 1), n_background, replace=False))] = 0
    return labels


def noisy(affs, *, sigma, seed=0, smooth=0.0):
    """Affinities pulled towards 0.5 plus Gaussian noise of standard deviation ``sigma``,
    clipped to [0, 1]. ``smooth`` > 0 blurs the noise spatially (voxels), as a network's
    errors are: fewer, larger mistakes instead of independent ones per edge."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, affs.shape).astype(np.float32)
    if smooth:
        noise = ndimage.gaussian_filter(noise, sigma=(0, smooth, smooth, smooth))
        noise /= noise.std()
    out = 0.15 + 0.7 * affs + sigma * noise
    return np.clip(out, 0, 1).astype(np.float32)


@pytest.fixture
def make_labels():
    return voronoi_labels


@pytest.fixture
def make_noisy():
    return noisy
