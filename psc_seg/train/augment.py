"""Augmentations of a training patch, as plain functions of numpy arrays and a Generator.

Geometric ones (flips, axis transposes, elastic deformation) move ``raw``, ``labels`` and the
``known`` mask together, before targets are computed, so affinities stay correct. Intensity
ones (scale and shift, Gaussian noise, missing and low-contrast sections) change ``raw`` only.
All arrays are ``(Z, Y, X)``; ``raw`` is the normalised float32 input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from psc_seg.train.config import AugmentConfig


def flip(arrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Mirror every axis with probability 1/2 (the same axes for all ``arrays``)."""
    axes = tuple(axis for axis in range(3) if rng.random() < 0.5)
    return [np.flip(a, axis=axes) if axes else a for a in arrays]


def transposable_axes(
    voxel_size: Sequence[float], input_shape: Sequence[int], output_shape: Sequence[int]
) -> list[tuple[int, ...]]:
    """Groups of axes that may be permuted: equal voxel size and equal patch sizes."""
    groups: list[list[int]] = []
    for axis in range(3):
        key = (float(voxel_size[axis]), int(input_shape[axis]), int(output_shape[axis]))
        for group in groups:
            first = group[0]
            if (float(voxel_size[first]), int(input_shape[first]), int(output_shape[first])) == key:
                group.append(axis)
                break
        else:
            groups.append([axis])
    return [tuple(g) for g in groups if len(g) > 1]


def transpose(arrays: Sequence[np.ndarray], groups: Sequence[Sequence[int]], rng: np.random.Generator) -> list[np.ndarray]:
    """Permute the axes within each group of :func:`transposable_axes` at random."""
    order = list(range(3))
    for group in groups:
        permuted = rng.permutation(group)
        for axis, new in zip(group, permuted):
            order[axis] = int(new)
    if order == [0, 1, 2]:
        return list(arrays)
    return [np.transpose(a, order) for a in arrays]


def elastic(
    arrays: Sequence[np.ndarray], rng: np.random.Generator, *, alpha: float, sigma: float, linear: int = 1
) -> list[np.ndarray]:
    """Smooth random deformation: a displacement field of white noise smoothed with a Gaussian
    of ``sigma`` voxels, scaled so its largest value is ``alpha`` voxels. The first ``linear``
    arrays (raw channels) are interpolated linearly, the others (labels, masks) by nearest
    neighbour."""
    shape = arrays[0].shape
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    coords = []
    for axis in range(3):
        field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
        peak = float(np.abs(field).max()) or 1.0
        coords.append(grid[axis] + field * (alpha / peak))
    result = []
    for index, a in enumerate(arrays):
        source = a.view(np.uint8) if a.dtype == bool else a
        moved = ndimage.map_coordinates(source, coords, order=1 if index < linear else 0, mode="mirror")
        result.append(moved.astype(a.dtype, copy=False))
    return result


def intensity(raw: np.ndarray, rng: np.random.Generator, *, scale: Sequence[float], shift: Sequence[float]) -> np.ndarray:
    """``raw * s + t`` with ``s`` and ``t`` uniform in the given ``[low, high]`` ranges."""
    return raw * np.float32(rng.uniform(*scale)) + np.float32(rng.uniform(*shift))


def gaussian_noise(raw: np.ndarray, rng: np.random.Generator, *, max_sigma: float) -> np.ndarray:
    """Add zero-mean Gaussian noise whose standard deviation is uniform in ``[0, max_sigma]``."""
    sigma = rng.uniform(0.0, max_sigma)
    return raw + rng.normal(0.0, sigma, size=raw.shape).astype(np.float32)


def section_defects(
    raw: np.ndarray, rng: np.random.Generator, *, missing: float, low_contrast: float, contrast: float = 0.2
) -> np.ndarray:
    """EM section defects along z (axis -3): each section is blanked (set to 0) with probability
    ``missing``, or else has its contrast around its mean cut to ``contrast`` with
    probability ``low_contrast``."""
    raw = raw.copy()
    for z in range(raw.shape[-3]):
        section = (Ellipsis, z, slice(None), slice(None))
        draw = rng.random()
        if draw < missing:
            raw[section] = 0.0
        elif draw < missing + low_contrast:
            mean = raw[section].mean()
            raw[section] = mean + (raw[section] - mean) * contrast
    return raw


def augment(
    raw: np.ndarray, labels: np.ndarray, known: np.ndarray, rng: np.random.Generator, config: AugmentConfig, *,
    transpose_groups: Sequence[Sequence[int]] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the augmentations enabled in ``config`` to one patch.

    Args:
        raw: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` float32 normalised intensities (all channels
            get the same geometry and intensity change).
        labels: ``(Z, Y, X)`` integer labels.
        known: ``(Z, Y, X)`` bool, where labels may be trusted.
        rng: the patch's random generator.
        config: the ``augment`` section.
        transpose_groups: axes that may be permuted (:func:`transposable_axes`).

    Returns:
        ``(raw, labels, known)`` of the same shapes, contiguous.
    """
    channels = [raw] if raw.ndim == 3 else list(raw)
    arrays = [*channels, labels, known]
    if config.elastic.enabled and config.elastic.alpha > 0:
        arrays = elastic(arrays, rng, alpha=config.elastic.alpha, sigma=config.elastic.sigma, linear=len(channels))
    if config.flip:
        arrays = flip(arrays, rng)
    if config.transpose and transpose_groups:
        arrays = transpose(arrays, transpose_groups, rng)
    arrays = [np.ascontiguousarray(a) for a in arrays]
    raw = arrays[0] if raw.ndim == 3 else np.stack(arrays[: len(channels)])
    labels, known = arrays[-2], arrays[-1]
    raw = intensity(raw, rng, scale=config.intensity_scale, shift=config.intensity_shift)
    if config.noise_sigma > 0:
        raw = gaussian_noise(raw, rng, max_sigma=config.noise_sigma)
    if config.missing_section > 0 or config.low_contrast > 0:
        raw = section_defects(raw, rng, missing=config.missing_section, low_contrast=config.low_contrast)
    return raw.astype(np.float32, copy=False), labels, known
