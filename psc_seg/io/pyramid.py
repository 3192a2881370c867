"""OME-Zarr multiscale pyramids of zarr outputs: which levels, where they lie, and how a
level is computed from the one above it.

A pyramid is the arrays ``"1"``, ``"2"``, ... beside level ``"0"`` in an output's OME-Zarr
image group, listed in order in its ``multiscales`` ``datasets``. Each level halves the
spatial axes whose voxel size is the smallest (within 1e-6 relative), so an anisotropic EM
volume (40, 4, 4) first loses resolution in y and x until it is isotropic, then in all three;
levels are added while the smallest spatial axis of the last level has at least
:data:`MIN_SIZE` voxels (a 50 x 100 x 200 volume has none; 256^3 gets 128^3, 64^3 and 32^3).
Level shapes are ``ceil(previous / 2)`` on the halved axes; a channel axis is never
downsampled. Each level's ``coordinateTransformations`` hold its voxel size (``scale``) and
the centre of its voxel 0 (``translation``): a 2x level's voxel 0 covers two voxels of the
level above, so its centre moves by half a voxel of that level, ``(f - 1) / 2 * voxel``.

Values: :func:`downsample` by ``"mean"`` (images, affinities, probabilities; integer data
rounded to the nearest integer) or ``"mode"`` (label volumes: the most frequent id of the 2^k
voxels, ties to the smallest id), so every level's ids are ids of level 0, never an
interpolated mix. The method is kept in the multiscales entry (``"type"``). Beyond an odd
edge the last voxel counts for its missing neighbour (the mean is that of the voxels inside).
"""

from __future__ import annotations

from collections.abc import Sequence
import itertools
from dataclasses import dataclass

import numpy as np

MIN_SIZE = 64  # levels are added while the smallest spatial axis of the last one has at least this many voxels
METHODS = ("mean", "mode")


@dataclass(frozen=True)
class Level:
    """One pyramid level: ``factors`` (z, y, x) from the level above, its spatial ``shape``,
    ``voxel_size`` and ``translation`` (the world centre of its voxel 0; level 0's is the
    output's offset)."""

    factors: tuple[int, int, int]
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    translation: tuple[float, float, float]


def pyramid_levels(shape: Sequence[int], voxel_size: Sequence[float], offset: Sequence[float] = (0.0, 0.0, 0.0),
                   *, min_size: int = MIN_SIZE) -> list[Level]:
    """The levels below level 0 of a volume of spatial ``shape`` (z, y, x), ``voxel_size`` and
    ``offset`` (see the module docstring); empty where the smallest axis is under ``min_size``."""
    shape = tuple(int(s) for s in shape[-3:])
    size = tuple(float(v) for v in voxel_size)
    where = tuple(float(v) for v in offset)
    levels: list[Level] = []
    while min(shape) >= min_size:
        smallest = min(size)
        factors = tuple(2 if v <= smallest * (1 + 1e-6) else 1 for v in size)
        where = tuple(t + (f - 1) / 2 * v for t, f, v in zip(where, factors, size))
        shape = tuple(-(-s // f) for s, f in zip(shape, factors))
        size = tuple(v * f for v, f in zip(size, factors))
        levels.append(Level(factors, shape, size, where))  # type: ignore[arg-type]
    return levels


def downsample(data: np.ndarray, factors: Sequence[int], method: str) -> np.ndarray:
    """``data`` ``(..., Z, Y, X)`` reduced by ``factors`` (z, y, x) on its last three axes by
    ``method`` (see the module docstring); shape ``ceil(size / factor)``, dtype kept."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    factors = tuple(int(f) for f in factors)
    lead = data.shape[:-3]
    pad = [(0, (-s) % f) for s, f in zip(data.shape[-3:], factors)]
    if any(p for _, p in pad):  # a factor of 2 pads at most one slice: each voxel inside counts equally
        data = np.pad(data, [(0, 0)] * len(lead) + pad, mode="edge")
    corners = list(itertools.product(*(range(f) for f in factors)))
    if method == "mean":  # a sum of strided views: no transposed copy of the data
        total = np.zeros(data[(..., *(slice(0, None, f) for f in factors))].shape,
                         dtype=np.float64 if data.dtype == np.float64 else np.float32)
        for corner in corners:
            total += data[(..., *(slice(c, None, f) for c, f in zip(corner, factors)))]
        total /= len(corners)
        if np.issubdtype(data.dtype, np.integer):
            np.rint(total, out=total)
        return total.astype(data.dtype, copy=False)
    # mode: for each of the k voxels of a group, how many of the k hold its id (k(k-1)/2 comparisons
    # of whole views, no sort); the smallest id among the most frequent
    values = [np.ascontiguousarray(data[(..., *(slice(c, None, f) for c, f in zip(corner, factors)))])
              for corner in corners]
    counts = [np.ones(values[0].shape, dtype=np.uint8) for _ in values]
    for i, j in itertools.combinations(range(len(values)), 2):
        same = values[i] == values[j]
        counts[i] += same
        counts[j] += same
    best = np.max(counts, axis=0)
    largest = np.iinfo(data.dtype).max if np.issubdtype(data.dtype, np.integer) else np.inf
    result = np.full(best.shape, largest, dtype=data.dtype)
    for value, count in zip(values, counts):
        np.minimum(result, np.where(count == best, value, largest), out=result)
    return result


@dataclass(frozen=True)
class PyramidStep:
    """How level ``level`` of a zarr output's pyramid is made from the level above: the arrays
    ``source`` (level ``level - 1``) and ``target`` (locations: paths or URLs), the ``factors``
    (z, y, x), the ``method``, the target's spatial ``shape`` and ``chunks``. Picklable (for
    dask workers): it holds locations, and opens the arrays where it runs."""

    level: int
    source: str
    target: str
    factors: tuple[int, int, int]
    method: str
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]

    def compute(self, region: Sequence[slice]) -> None:
        """Fill ``region`` (three slices, target voxels) of the target from the source."""
        import zarr

        from psc_seg.io import stores

        source = zarr.open_array(stores.zarr_store(self.source), mode="r")
        wanted = tuple(slice(k.start * f, min(k.stop * f, n)) for k, f, n in zip(region, self.factors, source.shape[-3:]))
        lead = (slice(None),) * (source.ndim - 3)
        values = downsample(np.asarray(source[(*lead, *wanted)]), self.factors, self.method)
        target = zarr.open_array(stores.zarr_store(self.target, mode="r+"), mode="r+")
        target[(*lead, *region)] = values


def pyramid_steps(volume) -> list[PyramidStep]:
    """The steps that fill the pyramid of the zarr output ``volume`` (a
    :class:`~psc_seg.io.volume.ZarrVolume` made by ``create_volume(..., pyramid=True)``), in
    order, from its multiscales metadata; empty for other volumes and single-level images."""
    if getattr(volume, "format", None) != "zarr":
        return []
    import zarr

    from psc_seg.io import stores
    from psc_seg.io.volume import _ome_multiscales, _transforms

    group = zarr.open(stores.zarr_store(volume.meta_path), mode="r")
    if not isinstance(group, zarr.Group):
        return []
    multiscales, _ = _ome_multiscales(dict(group.attrs))
    if not multiscales or len(multiscales[0].get("datasets", [])) < 2:
        return []
    entry = multiscales[0]
    method = entry.get("type") if entry.get("type") in METHODS else "mean"
    n = len(entry.get("axes") or []) or volume.ndim
    scales = [_transforms(d.get("coordinateTransformations"), n)[0][-3:] for d in entry["datasets"]]
    paths = [stores.join(volume.meta_path, *str(d["path"]).strip("/").split("/")) for d in entry["datasets"]]
    steps = []
    for level in range(1, len(paths)):
        array = zarr.open_array(stores.zarr_store(paths[level]), mode="r")
        factors = tuple(int(round(b / a)) for a, b in zip(scales[level - 1], scales[level]))
        steps.append(PyramidStep(level=level, source=str(paths[level - 1]), target=str(paths[level]),
                                 factors=factors, method=method, shape=tuple(array.shape[-3:]),
                                 chunks=tuple(array.chunks[-3:])))
    return steps
