"""The no-learning baseline: affinities from the raw intensity alone.

Membranes are dark in EM, so the smoothed raw, scaled to [0, 1] between its 1st and 99th
percentiles, is a boundary map; the affinity of a pair of voxels is the darker of the two::

    s = clip((gaussian(raw, sigma) - p1) / (p99 - p1), 0, 1)
    aff[c, p] = min(s[p], s[p + o_c])          (0 where p + o_c is outside the volume)

Fed through the same segment step as a network's affinities, it tells what the learning adds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from psc_seg.affinities import DEFAULT_OFFSETS, pair_slices


def intensity_affinities(
    raw: np.ndarray, *, sigma: float = 1.0, offsets: Sequence[Sequence[int]] = DEFAULT_OFFSETS
) -> np.ndarray:
    """``(C, Z, Y, X)`` float32 affinities from a ``(Z, Y, X)`` raw volume (dark = boundary),
    Gaussian-smoothed with ``sigma`` voxels; see the module docstring."""
    smooth = ndimage.gaussian_filter(np.asarray(raw, dtype=np.float32), sigma)
    low, high = np.percentile(smooth, [1, 99])
    scaled = np.clip((smooth - low) / max(float(high - low), 1e-6), 0, 1)
    affinities = np.zeros((len(offsets), *raw.shape), dtype=np.float32)
    for channel, offset in enumerate(offsets):
        here, there = pair_slices(offset, raw.shape)
        affinities[channel][here] = np.minimum(scaled[here], scaled[there])
    return affinities
