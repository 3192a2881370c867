"""Augmentations of a training patch, as plain functions of arrays and a Generator.

Geometry. Every geometric change of a patch is one map from voxels of the (augmented) input
patch to source positions in the volume, drawn per sample by :func:`warp_coordinates` and
applied in one resampling pass: raw by trilinear interpolation (torch ``grid_sample``),
labels and the ``known`` mask by nearest neighbour (exact gathers, ids never interpolated)::

    source = centre + M (p - centre) + elastic(p) + misalign(p_z)
    M = rotation . transpose . flip / scale

Rotation is about z by any angle, and about y and x only where the two axes it turns have
equal voxel sizes; transposes permute axes of equal voxel size and patch size; the elastic
displacement is random on a coarse control grid and trilinear in between; a misalignment
shifts whole z sections in y and x. With ``sections`` (EM) each z section of the patch is one
whole source section, warped in y and x only (scale and elastic in y and x, no transpose of
z), and the raw is resampled section by section with the vectorised 2D ``grid_sample``. The
whole map is evaluated on the control grid and upsampled once, by separable matrix products
(trilinear interpolation reproduces the affine part exactly). The source
voxels are read from the volume around the patch (:meth:`Warp.box`), so no padding enters
the patch where the volume has data: raw is mirrored only beyond the raw (as predict reads
it), labels beyond the labelled region are unknown (mask 0), never invented. Without
rotation, scale, elastic or misalignment (:attr:`AugmentConfig.resamples` false), flips and
transposes are exact axis reversals and permutations (:func:`flip`, :func:`transpose`).

Intensity (raw only, after the geometry): contrast, gamma, scale and shift, out-of-focus
sections, Gaussian noise (in the training loader a scaled window of a per-dataset bank of
normals, :class:`NoiseBank`), missing and low-contrast sections. All arrays are ``(Z, Y, X)``
(raw may be ``(C, Z, Y, X)``); ``raw`` is the normalised float32 input.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from psc_seg.train.config import AugmentConfig


def flip(arrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Mirror every axis with probability 1/2 (the same axes for all ``arrays``)."""
    axes = tuple(axis for axis in range(3) if rng.random() < 0.5)
    return [np.flip(a, axis=tuple(a.ndim - 3 + x for x in axes)) if axes else a for a in arrays]


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


def _axis_order(groups: Sequence[Sequence[int]], rng: np.random.Generator) -> list[int]:
    order = list(range(3))
    for group in groups:
        permuted = rng.permutation(group)
        for axis, new in zip(group, permuted):
            order[axis] = int(new)
    return order


def transpose(arrays: Sequence[np.ndarray], groups: Sequence[Sequence[int]], rng: np.random.Generator) -> list[np.ndarray]:
    """Permute the axes within each group of :func:`transposable_axes` at random."""
    order = _axis_order(groups, rng)
    if order == [0, 1, 2]:
        return list(arrays)
    return [np.transpose(a, [*range(a.ndim - 3), *(a.ndim - 3 + o for o in order)]) for a in arrays]


def flip_and_transpose(arrays: Sequence[np.ndarray], rng: np.random.Generator, config: AugmentConfig,
                       transpose_groups: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The geometry of a sample without resampling (:attr:`AugmentConfig.resamples` false):
    exact axis reversals (``config.flip``) then permutations (``config.transpose``, within
    ``transpose_groups``) of all ``arrays`` alike; views where possible."""
    arrays = list(arrays)
    if config.flip:
        arrays = flip(arrays, rng)
    if config.transpose and transpose_groups:
        arrays = transpose(arrays, transpose_groups, rng)
    return arrays


ROTATION_PLANES = ((1, 2), (0, 2), (0, 1))
"""The planes turned by a rotation about z, about y and about x."""


def rotation_planes(voxel_size: Sequence[float], config: AugmentConfig) -> list[tuple[tuple[int, int], float]]:
    """The rotations a volume allows, as ``(plane, largest angle in degrees)``: about z with
    ``config.rotate``, about y and x with ``config.rotate_out_of_plane``, each only where the
    two axes of its plane have equal voxel sizes (a rotation in voxels is then one in space)."""
    planes = []
    for plane, angle in zip(ROTATION_PLANES, (config.rotate, config.rotate_out_of_plane, config.rotate_out_of_plane)):
        a, b = (float(voxel_size[axis]) for axis in plane)
        if angle > 0 and math.isclose(a, b, rel_tol=1e-6):
            planes.append((plane, float(angle)))
    return planes


def _linear_part(
    rng: np.random.Generator, config: AugmentConfig, planes: Sequence[tuple[tuple[int, int], float]],
    transpose_groups: Sequence[Sequence[int]],
) -> np.ndarray:
    """The matrix ``M`` (output offset from the centre -> source offset) of one sample."""
    matrix = np.eye(3)
    if config.flip:
        matrix = matrix @ np.diag([-1.0 if rng.random() < 0.5 else 1.0 for _ in range(3)])
    if config.transpose and transpose_groups:
        order = _axis_order(transpose_groups, rng)
        permutation = np.zeros((3, 3))
        for axis, source in enumerate(order):
            permutation[source, axis] = 1.0
        matrix = permutation @ matrix
    for plane, largest in planes:
        angle = math.radians(rng.uniform(-largest, largest))
        turn = np.eye(3)
        a, b = plane
        turn[a, a] = turn[b, b] = math.cos(angle)
        turn[a, b], turn[b, a] = -math.sin(angle), math.sin(angle)
        matrix = turn @ matrix
    low, high = config.scale
    if (low, high) != (1.0, 1.0):
        factor = 1.0 / rng.uniform(low, high)
        matrix = np.diag([1.0 if config.sections else factor, factor, factor]) @ matrix
    return matrix


FULL = (slice(None),) * 3


@dataclass
class Warp:
    """One sample's geometric transform of a patch of ``shape``, as drawn by
    :func:`warp_coordinates`: ``control`` (``(3, a, b, c)`` float64) holds the source
    ``(z, y, x)`` position (voxels, relative to the first voxel of the patch as read without
    augmentation) of control points spread evenly over the patch, first and last on its first
    and last voxel; between them the map is trilinear. ``shifts`` (``(Z, 2)`` or None) adds a
    misalignment in y and x to each z slice of the patch. ``planar`` is the patch axis along
    which the source z is constant per slice (None when it is not): then each slice is a 2D
    warp of one interpolated source section, the fast path of :func:`resample_linear`."""

    control: np.ndarray
    shape: tuple[int, int, int]
    shifts: np.ndarray | None = None
    planar: int | None = None

    def _weights(self, region: tuple[slice, ...] = FULL) -> list[torch.Tensor]:
        return [_interpolation_matrix(n, s)[r] for n, s, r in zip(self.control.shape[1:], self.shape, region)]

    def box(self, region: tuple[slice, ...] = FULL) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(begin, shape)`` of the source voxels (relative to the patch) that sampling the
        ``region`` of the patch reads, linearly or by nearest neighbour: the bounds of the
        control points whose cells meet the region, and of its misalignment shifts."""
        used = [torch.nonzero(w.abs().sum(0) > 0)[:, 0].numpy() for w in self._weights(region)]
        points = self.control[np.ix_(range(3), *used)].reshape(3, -1)
        low, high = points.min(1), points.max(1)
        if self.shifts is not None:
            shifts = self.shifts[region[0]]
            low[1:] += np.minimum(shifts.min(0), 0)
            high[1:] += np.maximum(shifts.max(0), 0)
        begin = np.floor(low - 1e-3).astype(np.int64)
        end = np.floor(high + 1e-3).astype(np.int64) + 2
        return tuple(int(b) for b in begin), tuple(int(e - b) for b, e in zip(begin, end))

    def coords(self, region: tuple[slice, ...] = FULL) -> torch.Tensor:
        """``(3, *region shape)`` float64 source ``(z, y, x)`` of each voxel of ``region``."""
        out = _separable(torch.from_numpy(self.control), self._weights(region), (0, 1, 2))
        if self.shifts is not None:
            out[..., 1:] += torch.from_numpy(self.shifts[region[0]])[:, None, None, :]
        return out.permute(3, 0, 1, 2)

    @property
    def order(self) -> tuple[int, int, int]:
        """The patch axes in the order :meth:`grid` lays them out (the planar axis first)."""
        if self.planar is None:
            return (0, 1, 2)
        return (self.planar, *(a for a in range(3) if a != self.planar))

    def grid(self, begin: Sequence[int], size: Sequence[int], *, reverse: bool = False,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """grid_sample's grid into a source box at ``begin`` (relative to the patch) of ``size``:
        ``(Z, Y, X, 3)`` source ``(x, y, z)`` scaled to [-1, 1]; for a planar warp ``(slices,
        a, b, 2)`` with the patch axes in :attr:`order`, source ``(x, y)`` only. ``reverse``
        lays the slices out last to first (a mirror along :attr:`planar`, for free: the rows
        of one small interpolation matrix reversed); ``out`` (float32, contiguous, the grid's
        shape) receives the grid instead of a new tensor."""
        scale = np.array([2.0 / max(s - 1, 1) for s in size])
        normal = (self.control - np.asarray(begin, dtype=np.float64)[:, None, None, None]) * scale[:, None, None, None] - 1
        channels = [2, 1] if self.planar is not None else [2, 1, 0]
        order = self.order
        shifts = None
        if self.shifts is not None:  # per z slice: (x, y) added to channels 0 and 1
            shifts = torch.from_numpy((self.shifts[:, ::-1] * scale[[2, 1]]).astype(np.float32))
        weights = [w.to(torch.float32) for w in self._weights()]
        if reverse:
            weights[order[0]] = weights[order[0]].flip(0)
            if shifts is not None and order[0] == 0:
                shifts = shifts.flip(0)
        out = _separable(torch.from_numpy(normal[channels].astype(np.float32)), weights, order,
                         shifts=shifts if order[0] == 0 else None, out=out)
        if shifts is not None and order[0] != 0:
            shape = [1, 1, 1, 2]
            shape[order.index(0)] = self.shape[0]
            out[..., :2] += shifts.reshape(shape)
        return out

    def depth(self, begin: int) -> np.ndarray:
        """For a planar warp, the source z (relative to a box starting at ``begin``) of each
        slice along the planar axis."""
        values = np.moveaxis(self.control[0], self.planar, 0).reshape(self.control.shape[1 + self.planar], -1)[:, 0]
        weights = _interpolation_matrix(len(values), self.shape[self.planar]).numpy()
        return weights @ values - begin


def warp_coordinates(
    rng: np.random.Generator, config: AugmentConfig, shape: Sequence[int], *, voxel_size: Sequence[float],
    transpose_groups: Sequence[Sequence[int]] = (),
) -> Warp:
    """Draw one sample's geometric transform for a patch of ``shape``: the composed map of the
    module docstring, on the elastic control grid (or the patch corners without elastic)."""
    shape = tuple(int(s) for s in shape)
    centre = (np.array(shape, dtype=np.float64) - 1) / 2
    if config.sections:  # z stays z: sections are not turned into rows or columns
        transpose_groups = [g for g in ([a for a in group if a != 0] for group in transpose_groups) if len(g) > 1]
    matrix = _linear_part(rng, config, rotation_planes(voxel_size, config), transpose_groups)
    finest = min(float(v) for v in voxel_size)
    relative = [finest / float(v) for v in voxel_size]  # voxels of each axis per voxel of the finest
    elastic = config.elastic.enabled and config.elastic.alpha > 0
    if elastic:
        counts = [max(2, math.ceil((s - 1) / max(1.0, config.elastic.sigma * r)) + 1) for s, r in zip(shape, relative)]
    else:
        counts = [2, 2, 2]  # the corners: trilinear interpolation of an affine map is exact
    counts = [min(c, s) if s > 1 else 2 for c, s in zip(counts, shape)]
    points = np.meshgrid(*[np.linspace(0, s - 1, c) - m for s, c, m in zip(shape, counts, centre)], indexing="ij")
    control = np.einsum("ij,j...->i...", matrix, np.stack(points)) + centre[:, None, None, None]
    if elastic:
        field = rng.standard_normal(control.shape)
        if config.sections:
            field[0] = 0.0
        for axis in range(3):
            peak = float(np.abs(field[axis]).max()) or 1.0
            field[axis] *= config.elastic.alpha * relative[axis] / peak
        control = control + field
    shifts = None
    if config.misalign.probability > 0 and config.misalign.max_shift > 0:
        shifts = np.zeros((shape[0], 2))
        current = np.zeros(2)
        for z in range(shape[0]):
            if z > 0 and rng.random() < config.misalign.probability:
                current = rng.uniform(-config.misalign.max_shift, config.misalign.max_shift, size=2)
            shifts[z] = current
    planar = None
    if not elastic or config.sections:
        along = np.flatnonzero(np.abs(matrix[0]) > 1e-9)
        planar = int(along[0]) if along.size == 1 else None
    return Warp(control, shape, shifts, planar)


@functools.lru_cache(maxsize=64)
def _interpolation_matrix(count: int, size: int) -> torch.Tensor:
    """``(size, count)`` float64 weights of linear interpolation from ``count`` points spread
    evenly over ``size`` voxels (first and last on the first and last voxel). Cached (the
    same few shapes recur every sample): callers must not modify it."""
    position = torch.linspace(0, count - 1, size, dtype=torch.float64) if size > 1 else torch.zeros(1, dtype=torch.float64)
    low = torch.clamp(torch.floor(position), max=count - 2).to(torch.int64)
    weight = position - low
    matrix = torch.zeros((size, count), dtype=torch.float64)
    matrix[torch.arange(size), low] = 1 - weight
    matrix[torch.arange(size), low + 1] = weight
    return matrix


def _separable(
    values: torch.Tensor, weights: Sequence[torch.Tensor], order: Sequence[int], shifts: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Trilinear interpolation of control ``values`` (``(k, a, b, c)``) by per-axis weight
    matrices (``(size, count)``), as small matrix products, channels last and the output axes
    in ``order``: ``(size[order[0]], size[order[1]], size[order[2]], k)``. The same values as
    ``F.interpolate(..., align_corners=True)``, several times faster on one core.
    ``shifts`` (``(size[order[0]], 2)``) are added to channels 0 and 1 of each slice along the
    first output axis, in the same (last) matrix product. ``out`` (contiguous, the output's
    shape and dtype) receives the result instead of a new tensor."""
    first, second, third = (weights[o] for o in order)
    v = values.permute(1 + order[0], 1 + order[1], 1 + order[2], 0)
    inner = torch.einsum("abck,yb,xc->ayxk", v, second, third)
    rows = inner.reshape(inner.shape[0], -1)
    if shifts is not None:
        pattern = torch.zeros((2, *inner.shape[1:]), dtype=rows.dtype)
        pattern[0, ..., 0] = pattern[1, ..., 1] = 1.0
        first, rows = torch.cat([first, shifts.to(first.dtype)], dim=1), torch.cat([rows, pattern.reshape(2, -1)])
    shape = (first.shape[0], second.shape[0], third.shape[0], values.shape[0])
    if out is None:
        return torch.matmul(first, rows).reshape(shape)
    torch.matmul(first, rows, out=out.view(first.shape[0], -1))
    return out


_SCRATCH = threading.local()


def _scratch(shape: Sequence[int]) -> torch.Tensor:
    """A float32 tensor of ``shape`` that this thread reuses from call to call (for the grid of
    :func:`resample_linear`, which does not outlive the call): fresh memory costs a page fault
    per 4 KiB, ~4 ms a sample for the 18 MB grid of a 132^3 patch."""
    shape = tuple(int(n) for n in shape)
    buffer = getattr(_SCRATCH, "grid", None)
    if buffer is None or tuple(buffer.shape) != shape:
        buffer = _SCRATCH.grid = torch.empty(shape, dtype=torch.float32)
    return buffer


def resample_linear(source: np.ndarray, warp: Warp, begin: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """``source`` (``(Z, Y, X)`` or ``(C, Z, Y, X)`` float32, a box at ``begin`` relative to the
    patch, see :meth:`Warp.box`) sampled trilinearly by the warp (nearest border value where
    it reaches outside the box). A planar warp interpolates one source section per slice, then
    warps all slices in one batched 2D ``grid_sample`` (its vectorised kernel; several times
    faster than the 3D one); otherwise one 3D pass. Returns the patch, ``source``'s channels;
    where the slices read whole source sections in reverse order (a mirror along the planar
    axis), a view with that axis reversed: the sections are read in order and the grid's
    slices reversed instead of copying the box reversed (:meth:`Warp.grid`)."""
    data = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))
    data = data[None] if data.ndim == 3 else data  # (C, Z, Y, X)
    channels = 2 if warp.planar is not None else 3
    scratch = _scratch((*(warp.shape[axis] for axis in warp.order), channels))
    reverse = False
    if warp.planar is None:
        grid = warp.grid(begin, data.shape[1:], out=scratch)
        out = F.grid_sample(data[None], grid[None], mode="bilinear", padding_mode="border", align_corners=True)[0]
    else:
        depth = warp.depth(begin[0])
        sections = data.transpose(0, 1)  # (Z, C, Y, X)
        nearest = np.clip(np.round(depth), 0, data.shape[1] - 1).astype(np.int64)
        if np.allclose(depth, nearest, atol=1e-4):  # whole sections (augment.sections): no blending
            step = np.diff(nearest)
            if nearest.size > 1 and (np.all(step == 1) or np.all(step == -1)):
                sections = sections[nearest.min():nearest.max() + 1]  # a view, no copy
                reverse = bool(step[0] == -1)
            else:
                sections = sections.index_select(0, torch.from_numpy(nearest))
        else:
            low = np.clip(np.floor(depth), 0, data.shape[1] - 1).astype(np.int64)
            high = np.minimum(low + 1, data.shape[1] - 1)
            weight = torch.from_numpy(np.clip(depth - low, 0, 1).astype(np.float32))[:, None, None, None]
            low, high = torch.from_numpy(low), torch.from_numpy(high)
            sections = torch.lerp(sections.index_select(0, low), sections.index_select(0, high), weight)
        grid = warp.grid(begin, data.shape[1:], reverse=reverse, out=scratch)
        out = F.grid_sample(sections, grid, mode="bilinear", padding_mode="border", align_corners=True)
        out = out.transpose(0, 1)  # (C, slices, a, b): the patch axes in warp.order
        out = out.permute(0, *(1 + warp.order.index(axis) for axis in range(3)))
    out = out.contiguous().numpy()
    if reverse:
        out = np.flip(out, axis=1 + warp.planar)
    return out[0] if source.ndim == 3 else out


def resample_nearest(sources: Sequence[np.ndarray], warp: Warp, begin: Sequence[int] = (0, 0, 0),
                     region: tuple[slice, ...] = FULL) -> list[np.ndarray]:
    """``(Z, Y, X)`` arrays (labels, masks) of one shape, a box at ``begin`` relative to the
    patch (:meth:`Warp.box` of ``region``), each sampled by nearest neighbour on ``region`` of
    the patch (the nearest box voxel where the warp reaches outside the box): values are
    copied, never mixed, so label ids survive exactly."""
    shape = sources[0].shape
    index = torch.round(warp.coords(region)).to(torch.int64)
    for axis in range(3):
        index[axis].sub_(int(begin[axis])).clamp_(0, shape[axis] - 1)
    flat = ((index[0] * shape[1] + index[1]) * shape[2] + index[2]).numpy()
    return [np.ascontiguousarray(a).reshape(-1)[flat] for a in sources]


GAMMA_LEVELS = 4096


def tone(
    raw: np.ndarray, rng: np.random.Generator, *, contrast: Sequence[float] = (1.0, 1.0),
    gamma: Sequence[float] = (1.0, 1.0), scale: Sequence[float] = (1.0, 1.0), shift: Sequence[float] = (0.0, 0.0),
) -> np.ndarray:
    """Contrast, gamma, then scale and shift, each with its factor uniform in its range:

    * contrast ``c``: the deviation from the patch mean times ``c`` (skipped for ``(1, 1)``);
    * gamma ``g``: ``u ** g`` on the patch rescaled from its [min, max] to ``u`` in [0, 1] and
      back (the range is kept; skipped for ``(1, 1)``);
    * ``raw * s + t``.

    Computed in one pass: contrast, scale and shift are affine, and the gamma of an affine
    image is the gamma of the original rescaled, so the three are one table of
    :data:`GAMMA_LEVELS` levels over the patch's range (error below 1/4000 of the range), or
    one affine map without gamma."""
    factor = rng.uniform(*contrast) if tuple(contrast) != (1.0, 1.0) else 1.0
    exponent = rng.uniform(*gamma) if tuple(gamma) != (1.0, 1.0) else None
    s, t = rng.uniform(*scale), rng.uniform(*shift)
    mean = float(raw.mean(dtype=np.float64)) if factor != 1.0 else 0.0
    a, b = factor * s, mean * (1.0 - factor) * s + t  # contrast, then scale and shift
    low, high = (float(raw.min()), float(raw.max())) if exponent is not None else (0.0, 0.0)
    if exponent is None or high <= low:
        out = raw * np.float32(a)
        out += np.float32(b)
        return out
    table = ((np.linspace(0.0, 1.0, GAMMA_LEVELS) ** exponent * (high - low) + low) * a + b).astype(np.float32)
    out = np.subtract(raw, np.float32(low), dtype=np.float32)  # the level of each voxel, then its value
    out *= np.float32((GAMMA_LEVELS - 1) / (high - low))
    out += np.float32(0.5)
    index = out.astype(np.uint16)  # 0 .. GAMMA_LEVELS - 1: a quarter of intp's memory traffic
    return table.take(index, out=out, mode="clip")


class NoiseBank:
    """Standard normal draws shared by the samples of one dataset, ``2 * size`` float32 drawn
    once from ``seed``: each sample's Gaussian noise is a window of ``size`` consecutive draws at
    a random offset (a view, no copy) times its standard deviation (:func:`gaussian_noise`).

    Trade-off: within a sample the noise is exactly i.i.d. normal (distinct draws); across
    samples it is not independent, since the windows of two samples are shifted copies of
    overlapping parts of the bank (the offset is uniform over ``size + 1`` positions, so the
    shift relative to the image content is random and a pattern is rarely seen twice at the
    same place). It saves drawing ``size`` normals per sample, the largest intensity cost of
    a 132^3 patch (16 of 19 ms on one core)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = int(size)
        generator = torch.Generator().manual_seed(int(np.random.default_rng([int(seed), 0x4E015E]).integers(2**62)))
        self.values = torch.empty(2 * self.size, dtype=torch.float32).normal_(generator=generator)

    def window(self, shape: Sequence[int], rng: np.random.Generator) -> torch.Tensor:
        """``shape`` standard normals at a random offset of the bank: a view, not to be written."""
        count = int(np.prod(shape))
        if count > self.size:
            raise ValueError(f"noise bank of {self.size} values cannot fill {count}")
        offset = int(rng.integers(0, self.values.numel() - count + 1))
        return self.values[offset:offset + count].view(tuple(int(n) for n in shape))


def gaussian_noise(raw: np.ndarray, rng: np.random.Generator, *, max_sigma: float, bank: NoiseBank | None = None,
                   out: np.ndarray | None = None) -> np.ndarray:
    """Add zero-mean Gaussian noise whose standard deviation is uniform in ``[0, max_sigma]``:
    fresh draws, or a window of ``bank`` (:class:`NoiseBank`, see its trade-off) scaled in the
    same pass as the addition. ``out`` (float32, ``raw``'s shape, may be ``raw``) receives the
    result instead of a new array."""
    sigma = float(rng.uniform(0.0, max_sigma))
    if bank is None:
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))  # torch's sampler: faster than numpy's
        noise = torch.empty(raw.shape, dtype=torch.float32).normal_(generator=generator)
    else:
        noise = bank.window(raw.shape, rng)
    if out is None:
        out = np.empty(raw.shape, dtype=np.float32)
    torch.add(torch.from_numpy(np.asarray(raw, dtype=np.float32)), noise, alpha=sigma, out=torch.from_numpy(out))
    return out


def blur_sections(raw: np.ndarray, rng: np.random.Generator, *, probability: float, max_sigma: float) -> np.ndarray:
    """Out-of-focus EM sections: each z section (axis -3), with probability ``probability``, is
    blurred in y and x by a Gaussian of standard deviation uniform in ``[0, max_sigma]``."""
    draws = rng.random(raw.shape[-3])
    sigmas = rng.uniform(0.0, max_sigma, size=raw.shape[-3])
    if not (draws < probability).any():
        return raw
    raw = raw.copy()
    for z in np.flatnonzero(draws < probability):
        section = (Ellipsis, z, slice(None), slice(None))
        raw[section] = ndimage.gaussian_filter(raw[section], sigma=[0] * (raw.ndim - 3) + [sigmas[z]] * 2, mode="reflect")
    return raw


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


def augment_intensity(raw: np.ndarray, rng: np.random.Generator, config: AugmentConfig, *,
                      noise: NoiseBank | None = None) -> np.ndarray:
    """The intensity augmentations enabled in ``config``, in order: contrast, gamma, scale and
    shift (:func:`tone`), blur, noise (drawn from ``noise`` where given, added in place),
    missing and low-contrast sections. Returns float32."""
    raw = tone(raw, rng, contrast=config.contrast, gamma=config.gamma, scale=config.intensity_scale,
               shift=config.intensity_shift)  # a new array: the steps below may write into it
    if config.blur.probability > 0:
        raw = blur_sections(raw, rng, probability=config.blur.probability, max_sigma=config.blur.max_sigma)
    if config.noise_sigma > 0:
        raw = gaussian_noise(raw, rng, max_sigma=config.noise_sigma, bank=noise,
                             out=raw if raw.dtype == np.float32 and raw.flags.writeable else None)
    if config.missing_section > 0 or config.low_contrast > 0:
        raw = section_defects(raw, rng, missing=config.missing_section, low_contrast=config.low_contrast)
    return raw.astype(np.float32, copy=False)


def augment(
    raw: np.ndarray, labels: np.ndarray, known: np.ndarray, rng: np.random.Generator, config: AugmentConfig, *,
    transpose_groups: Sequence[Sequence[int]] = (), voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the augmentations enabled in ``config`` to one patch held whole in memory (the
    training loader reads the source region of the warp from the volume instead, see
    :class:`psc_seg.train.data.PatchDataset`). Where the warp reaches outside the patch, raw is
    the nearest border value and labels are unknown.

    Args:
        raw: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` float32 normalised intensities (all channels
            get the same geometry and intensity change).
        labels: ``(Z, Y, X)`` integer labels.
        known: ``(Z, Y, X)`` bool, where labels may be trusted.
        rng: the patch's random generator.
        config: the ``augment`` section.
        transpose_groups: axes that may be permuted (:func:`transposable_axes`).
        voxel_size: of the patch, for the allowed rotations.

    Returns:
        ``(raw, labels, known)`` of the same shapes, contiguous.
    """
    shape = labels.shape
    if config.resamples:
        warp = warp_coordinates(rng, config, shape, voxel_size=voxel_size, transpose_groups=transpose_groups)
        raw = resample_linear(raw, warp)
        coords = warp.coords()
        inside = torch.ones(shape, dtype=torch.bool)
        for axis in range(3):
            inside &= (coords[axis] > -0.5) & (coords[axis] < shape[axis] - 0.5)
        labels, known = resample_nearest([labels, known], warp)
        known = known & inside.numpy()
    else:
        raw, labels, known = (np.ascontiguousarray(a) for a in flip_and_transpose([raw, labels, known], rng, config,
                                                                                   transpose_groups))
    return augment_intensity(raw, rng, config), labels, known
