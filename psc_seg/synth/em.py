"""Synthetic EM-like volumes of neuropil with ground-truth neuron ids.

The cells are a generalised Voronoi diagram of seeded line segments (neurites: long, thin,
running in all directions) and points (boutons: round, large, full of vesicles), each seed
with its own radius weight, computed in a smoothly warped space so boundaries curve. Between
cells a dark membrane of about ``membrane_width`` voxels; inside them a grainy cytoplasm of a
per-cell grey (dark in a few cells, like glia), optional mitochondria (dark, elongated along
their neurite, with a darker outer membrane and cristae) and vesicles (small dark spots, dense
in boutons). The image is then blurred (the microscope's point spread), multiplied by a slow
intensity drift (section to section and across the field) and given Gaussian noise.

What makes it harder than thresholding: mitochondria, vesicle clouds and dark cells are
nearly as dark as membranes (an intensity-only method splits cells at them), membranes fade
in places (it merges there), cells differ in grey level and the drift moves all levels
slowly. A network learns that membranes are thin dark sheets between cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage import measure, segmentation

from psc_seg.errors import UserError
from psc_seg.synth._fields import check_shape, smooth_field

#: Mean grey levels in [0, 1] before drift and noise.
CYTOPLASM_RANGE = (0.62, 0.82)
DARK_CYTOPLASM_RANGE = (0.38, 0.48)
MEMBRANE_LEVEL = 0.18
MITOCHONDRION_LEVEL = 0.40
MITOCHONDRION_MEMBRANE_LEVEL = 0.22


def em_volume(
    shape: Sequence[int] = (64, 128, 128),
    *,
    seed: int = 0,
    cell_size: float = 18.0,
    membrane_width: float = 3.0,
    mitochondria: bool = True,
    vesicles: bool = True,
    dark_cells: float = 0.1,
    noise: float = 0.07,
    blur: float = 0.8,
    drift: float = 0.12,
    zero_membranes: bool = False,
    voxel_size: Sequence[float] = (8.0, 8.0, 8.0),
) -> dict[str, np.ndarray]:
    """A synthetic EM-like volume of neuropil with its neuron ids.

    Args:
        shape: ``(z, y, x)`` in voxels, each >= 8.
        seed: the one seed of every random choice; the same seed gives the same volume.
        cell_size: typical neurite diameter in voxels (boutons are about twice as wide);
            sets the number of cells.
        membrane_width: width of the dark membrane between two cells in voxels (full width at
            half darkness); also the width of ``mask``.
        mitochondria: add mitochondria (about one per two cells).
        vesicles: add vesicles (dense in boutons, sparse elsewhere).
        dark_cells: fraction of cells with a dark cytoplasm (glia, dark axons), about as
            dark as mitochondria.
        noise: standard deviation of the Gaussian noise, in units of the full [0, 1] range
            (0.07 is about 18 grey levels).
        blur: sigma in voxels of the Gaussian point-spread blur (0 for none).
        drift: relative amplitude of the slow multiplicative intensity drift along z and
            across the field (0 for none).
        zero_membranes: set ``labels`` to 0 on ``mask``, the CREMI / gala convention in
            which boundary voxels belong to no neuron (and metrics ignore them).
        voxel_size: ``(z, y, x)`` in nm, returned as metadata; the generator works in voxels.

    Returns:
        ``{"raw": uint8 (Z, Y, X), "labels": uint64 (Z, Y, X), "mask": bool (Z, Y, X),
        "voxel_size": float64 (3,)}``. ``labels`` are neuron ids 1..N, one connected
        component each; space-filling: every voxel, membranes included, carries the id of the
        cell it lies in (a membrane is split between its two cells along their interface),
        unless ``zero_membranes``. ``mask`` is True on membrane voxels, the voxels within
        ``membrane_width / 2`` of an interface between two cells.
    """
    shape = check_shape(shape, minimum=8, name="em_volume")
    if cell_size < 4:
        raise UserError(f"em_volume: cell_size must be >= 4 voxels, got {cell_size}")
    if not 1 <= membrane_width <= cell_size / 2:
        raise UserError(f"em_volume: membrane_width must be in [1, cell_size / 2], got {membrane_width}")
    if noise < 0 or blur < 0 or drift < 0:
        raise UserError("em_volume: noise, blur and drift must be >= 0")
    if not 0 <= dark_cells <= 1:
        raise UserError(f"em_volume: dark_cells is a fraction in [0, 1], got {dark_cells}")
    # one independent stream per component, so switching one off leaves the others unchanged
    streams = np.random.SeedSequence(seed).spawn(7)
    rng_cells, rng_levels, rng_vesicles, rng_mito, rng_membranes, rng_drift, rng_noise = (
        np.random.default_rng(s) for s in streams
    )

    owner, seeds = _voronoi_cells(shape, cell_size, rng_cells)
    labels = _connected_ids(owner, min_size=max(8, int(0.02 * cell_size**3)))
    owner_of_label = _owner_of_label(labels, owner)

    interface_distance = _interface_distance(labels)
    mask = interface_distance < membrane_width / 2

    n_cells = int(labels.max())
    cell_level = rng_levels.uniform(*CYTOPLASM_RANGE, size=n_cells + 1).astype(np.float32)
    dark = rng_levels.random(n_cells + 1) < dark_cells
    cell_level[dark] = rng_levels.uniform(*DARK_CYTOPLASM_RANGE, size=int(dark.sum()))
    image = cell_level[labels]
    image += 0.035 * smooth_field(shape, 1.5, rng_levels)  # cytoplasm grain

    if vesicles:
        is_bouton = seeds["half_length"][owner_of_label] == 0
        density = np.where(is_bouton, 0.02, 0.001).astype(np.float32)[labels]
        image = _add_vesicles(image, density * (interface_distance > 2.5), rng_vesicles)
    if mitochondria:
        image = _add_mitochondria(image, labels, interface_distance, seeds, owner_of_label, cell_size, rng_mito)

    sigma = membrane_width / 2.355
    darkness = np.exp(-0.5 * (interface_distance / sigma) ** 2)
    # membranes fade in places (oblique cuts, poor staining): contrast 0.5..1
    contrast = np.clip(0.85 + 0.3 * smooth_field(shape, cell_size, rng_membranes), 0.5, 1.0)
    darkness *= contrast
    image = image * (1 - darkness) + MEMBRANE_LEVEL * darkness

    if blur > 0:
        image = ndimage.gaussian_filter(image, blur, truncate=3.0)
    if drift > 0:
        z = np.arange(shape[0], dtype=np.float32)[:, None, None]
        phase, period = rng_drift.uniform(0, 2 * np.pi), rng_drift.uniform(1.5, 3.0) * shape[0]
        along_z = np.sin(2 * np.pi * z / period + phase)
        gain = 1 + drift * (0.6 * along_z + 0.6 * smooth_field(shape, 4 * cell_size, rng_drift))
        image = image * gain
    if noise > 0:
        image += rng_noise.normal(0.0, noise, size=shape).astype(np.float32)
    raw = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)

    labels = labels.astype(np.uint64)
    if zero_membranes:
        labels[mask] = 0
    return {"raw": raw, "labels": labels, "mask": mask, "voxel_size": np.asarray(voxel_size, dtype=np.float64)}


def _voronoi_cells(shape: tuple[int, int, int], cell_size: float, rng: np.random.Generator):
    """Seed index of every voxel: the nearest seed segment in a warped space, distances divided
    by each seed's radius weight. Returns ``(owner int32 (Z, Y, X), seeds dict of arrays)``."""
    margin = cell_size
    low = -margin * np.ones(3)
    high = np.asarray(shape, dtype=float) + margin
    volume = float(np.prod(high - low))
    # a neurite of diameter c and mean length ~5c fills ~4 c^3; boutons are bigger but rarer
    n_seeds = max(4, int(round(volume / (4.0 * cell_size**3))))
    is_bouton = rng.random(n_seeds) < 0.15
    centers = rng.uniform(low, high, size=(n_seeds, 3))
    directions = rng.standard_normal((n_seeds, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    half_length = np.where(is_bouton, 0.0, rng.uniform(1.0, 4.0, n_seeds) * cell_size)
    weight = np.where(is_bouton, rng.uniform(1.5, 2.2, n_seeds), rng.uniform(0.7, 1.3, n_seeds))

    # warp space so straight segments become curved neurites
    warp = 0.3 * cell_size
    coords = [
        np.arange(n, dtype=np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        + warp * smooth_field(shape, 2.5 * cell_size, rng)
        for axis, n in enumerate(shape)
    ]
    best = np.full(shape, np.inf, dtype=np.float32)
    owner = np.zeros(shape, dtype=np.int32)
    v = np.empty((3, *shape), dtype=np.float32)
    along = np.empty(shape, dtype=np.float32)
    d2 = np.empty(shape, dtype=np.float32)
    closer = np.empty(shape, dtype=bool)
    for i in range(n_seeds):
        u = directions[i].astype(np.float32)
        for a in range(3):
            np.subtract(coords[a], np.float32(centers[i, a]), out=v[a])
        np.multiply(v[0], u[0], out=along)
        along += v[1] * u[1]
        along += v[2] * u[2]
        np.clip(along, -half_length[i], half_length[i], out=along)
        np.square(v[0] - along * u[0], out=d2)
        d2 += np.square(v[1] - along * u[1])
        d2 += np.square(v[2] - along * u[2])
        d2 *= np.float32(1.0 / weight[i] ** 2)
        np.less(d2, best, out=closer)
        np.minimum(best, d2, out=best)
        np.putmask(owner, closer, i)
    seeds = {"center": centers, "direction": directions, "half_length": half_length, "weight": weight}
    return owner, seeds


def _connected_ids(owner: np.ndarray, *, min_size: int) -> np.ndarray:
    """Ids 1..N, one per 6-connected component of equal ``owner``; components smaller than
    ``min_size`` voxels are absorbed by their neighbours. Returns int32 (Z, Y, X)."""
    labels = measure.label(owner + 1, connectivity=1).astype(np.int32)
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if small.any():
        labels[small[labels]] = 0
        labels = segmentation.expand_labels(labels, distance=float(np.max(labels.shape)))
        labels, _, _ = segmentation.relabel_sequential(labels)
    return labels.astype(np.int32)


def _owner_of_label(labels: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """For each id of ``labels`` (as index; 0 unused), the seed of one of its voxels (after
    small pieces are absorbed an id may hold voxels of a few seeds; any of them will do)."""
    result = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    result[labels.ravel()] = owner.ravel()
    return result


def _interface_distance(labels: np.ndarray) -> np.ndarray:
    """Distance in voxels from each voxel centre to the nearest interface between two ids
    (0.5 for the voxels on either side of it). float32 (Z, Y, X)."""
    on_interface = np.zeros(labels.shape, dtype=bool)
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        differs = labels[tuple(lo)] != labels[tuple(hi)]
        on_interface[tuple(lo)] |= differs
        on_interface[tuple(hi)] |= differs
    if not on_interface.any():
        return np.full(labels.shape, np.inf, dtype=np.float32)
    return (ndimage.distance_transform_edt(~on_interface) + 0.5).astype(np.float32)


def _add_vesicles(image: np.ndarray, density: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark round spots about 3 voxels wide at random places, ``density`` per voxel."""
    centers = rng.random(image.shape, dtype=np.float32) < density
    spots = ndimage.gaussian_filter(centers.astype(np.float32), 0.9, truncate=3.0)
    peak = 1.0 / ((2 * np.pi) ** 1.5 * 0.9**3)
    return image - 0.6 * np.minimum(spots / peak, 1.0).astype(np.float32) * image


def _add_mitochondria(image, labels, interface_distance, seeds, owner_of_label, cell_size, rng) -> np.ndarray:
    """Elongated ellipsoids (about one per two cells) inside cells, along their neurite, clipped to
    the cell and kept off its membrane; a dark rim and striped cristae inside."""
    n_cells = int(labels.max())
    radius_range = (0.17 * cell_size, 0.27 * cell_size)
    candidates = np.flatnonzero(interface_distance.ravel() > 0.8 * radius_range[0] + 2.0)
    if candidates.size == 0:
        return image
    n_mito = int(round(0.5 * n_cells))
    picks = rng.choice(candidates, size=min(n_mito, candidates.size), replace=False)
    for flat in picks:
        center = np.array(np.unravel_index(flat, labels.shape))
        host = labels[tuple(center)]
        seed = owner_of_label[host]
        axis = seeds["direction"][seed] if seeds["half_length"][seed] > 0 else rng.standard_normal(3)
        axis = axis / np.linalg.norm(axis)
        radius = rng.uniform(*radius_range)
        length = radius * rng.uniform(1.5, 3.5)
        reach = int(np.ceil(length)) + 1
        box = tuple(slice(max(c - reach, 0), min(c + reach + 1, n)) for c, n in zip(center, labels.shape))
        grids = np.ogrid[box]
        v = [g - c for g, c in zip(grids, center)]
        along = v[0] * axis[0] + v[1] * axis[1] + v[2] * axis[2]
        across2 = (v[0] - along * axis[0]) ** 2 + (v[1] - along * axis[1]) ** 2 + (v[2] - along * axis[2]) ** 2
        level = np.sqrt((along / length) ** 2 + across2 / radius**2)
        inside = (level <= 1.0) & (labels[box] == host) & (interface_distance[box] > 2.0)
        rim = level > 1.0 - 1.2 / radius
        cristae = 0.07 * np.cos(2 * np.pi * along / 2.5)
        value = np.where(rim, MITOCHONDRION_MEMBRANE_LEVEL, MITOCHONDRION_LEVEL + cristae).astype(np.float32)
        image[box] = np.where(inside, value, image[box])
    return image
