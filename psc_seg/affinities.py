"""The affinity convention of DESIGN.md section 1, for every stage: offsets, affinities of a
labelling, and the voxel pairs an offset links.

One implementation, used by training (targets and loss masks), by prediction (the default
offsets of a checkpoint without task metadata), by segmentation (which voxel pairs an
affinity channel joins) and by the tests (labels -> affinities -> labels)::

    aff[i, p] = 1  iff  label[p] == label[p + offsets[i]] != 0,   0 where p + offsets[i]
                                                                  lies outside the volume

With the default offsets ``[[-1, 0, 0], [0, -1, 0], [0, 0, -1]]`` (waterz order) channel 0
links each voxel to its neighbour one step back along z, channel 1 along y, channel 2 along x.

Segmentation reads these three nearest-neighbour channels, found by their offsets wherever
they sit among the channels (:func:`nearest_neighbour_channels`); other (long-range) channels
are left out. A ``+1`` offset such as ``(1, 0, 0)`` pairs the same voxels the other way round
(``aff[p]`` links p and p + 1, not p - 1); it is refused rather than shifted by one voxel, so
what is segmented is what was stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from psc_seg.errors import UserError

DEFAULT_OFFSETS: tuple[tuple[int, int, int], ...] = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))
EXAMPLE_OFFSETS = "[[-1, 0, 0], [0, -1, 0], [0, 0, -1]]"  # the form messages show (YAML, as in a config)


def check_offsets(offsets: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    checked = [tuple(int(v) for v in offset) for offset in offsets]
    if not checked or any(len(offset) != 3 for offset in checked):
        raise ValueError(f"offsets must be a non-empty list of (z, y, x) triples, got {offsets!r}")
    return checked  # type: ignore[return-value]


AXES = "zyx"


def nearest_neighbour_channels(offsets: Sequence[Sequence[int]]) -> tuple[tuple[int, int, int], str | None]:
    """The channels of the nearest-neighbour offsets ``(-1, 0, 0), (0, -1, 0), (0, 0, -1)`` (in
    that order, waterz's) among ``offsets``, and a one-line note naming the other offsets,
    which segmentation leaves out (None when there are none).

    Raises:
        UserError: a nearest-neighbour offset is missing (the message names the offsets
            present; a ``+1`` offset in its place is named as the opposite pairing).
    """
    checked = check_offsets(offsets)
    channels = []
    for axis, wanted in enumerate(DEFAULT_OFFSETS):
        if wanted in checked:
            channels.append(checked.index(wanted))
            continue
        opposite = tuple(-v for v in wanted)
        if opposite in checked:
            raise UserError(
                f"the affinities have offset {opposite} but not {wanted}: {opposite} links p to the next voxel "
                f"along {AXES[axis]}, the opposite pairing of the convention segmentation reads (aff[p] links p and "
                f"p + offset with offsets {_listed(DEFAULT_OFFSETS)}); predict with those offsets, or shift that "
                f"channel by one voxel along {AXES[axis]}")
        raise UserError(
            f"the affinities have no channel for the nearest-neighbour offset {wanted} (along {AXES[axis]}); their "
            f"offsets are {_listed(checked)}, segmentation needs {_listed(DEFAULT_OFFSETS)}")
    others = [o for i, o in enumerate(checked) if i not in channels]
    note = None
    if others:
        note = (f"affinity channels of offsets {_listed(others)} ignored: segmentation uses the nearest-neighbour "
                f"channels {_listed(DEFAULT_OFFSETS)} (channels {', '.join(map(str, channels))})")
    return tuple(channels), note  # type: ignore[return-value]


def _listed(offsets: Sequence[Sequence[int]]) -> str:
    return ", ".join(str(tuple(o)) for o in offsets)


def pair_slices(offset: tuple[int, int, int], shape: tuple[int, ...]) -> tuple[tuple, tuple] | None:
    """Slices ``(here, there)`` such that ``here`` indexes p and ``there`` indexes p + offset.

    None when the offset reaches outside the volume from every voxel.
    """
    here, there = [], []
    for step, size in zip(offset, shape):
        if abs(step) >= size:
            return None
        if step >= 0:
            here.append(slice(0, size - step))
            there.append(slice(step, size))
        else:
            here.append(slice(-step, size))
            there.append(slice(0, size + step))
    return tuple(here), tuple(there)


def seg_to_affinities(
    labels: np.ndarray, offsets: Sequence[Sequence[int]] = DEFAULT_OFFSETS
) -> np.ndarray:
    """Affinities of an instance labelling.

    Args:
        labels: ``(Z, Y, X)`` integer labels; 0 is background / unlabelled.
        offsets: one ``(dz, dy, dx)`` per channel, in voxels.

    Returns:
        ``(C, Z, Y, X)`` float32 with ``aff[i, p] = 1`` iff
        ``labels[p] == labels[p + offsets[i]] != 0``, else 0 (also where ``p + offsets[i]``
        is outside the volume).
    """
    return affinities_and_mask(labels, offsets)[0]


def affinities_and_mask(
    labels: np.ndarray, offsets: Sequence[Sequence[int]] = DEFAULT_OFFSETS
) -> tuple[np.ndarray, np.ndarray]:
    """Affinities of a labelling and the mask of where they are known, for training.

    Args:
        labels: ``(Z, Y, X)`` integer labels; 0 is background / unlabelled.
        offsets: one ``(dz, dy, dx)`` per channel, in voxels.

    Returns:
        ``(affinities, mask)``, both ``(C, Z, Y, X)`` float32: the affinities of
        :func:`seg_to_affinities`, and ``mask[i, p] = 1`` iff both ``labels[p]`` and
        ``labels[p + offsets[i]]`` are non-zero (so a loss can skip pairs touching
        unlabelled voxels or the outside of the volume).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (Z, Y, X), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    offsets = check_offsets(offsets)
    affinities = np.zeros((len(offsets),) + labels.shape, dtype=np.float32)
    mask = np.zeros_like(affinities)
    for channel, offset in enumerate(offsets):
        pair = pair_slices(offset, labels.shape)
        if pair is None:
            continue
        here, there = pair
        a, b = labels[here], labels[there]
        labelled = (a != 0) & (b != 0)
        mask[channel][here] = labelled
        affinities[channel][here] = labelled & (a == b)
    return affinities, mask
