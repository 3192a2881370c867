"""Orthogonal-slice previews: a quick look at a volume without napari.

Three slices through one point ``(z, y, x)`` (default: the centre), laid out as in
orthogonal viewers so that the axes line up::

    +-----------+-----+
    |  xy at z  | zy  |     xy: rows y, columns x
    |           | at x|     zy: rows y, columns z   (the yz slice, transposed)
    +-----------+-----+     xz: rows z, columns x
    |  xz at y  |
    +-----------+

The raw is shown in grey (1st-99th percentile of the three slices); labels as a
random-colour overlay (the same id has the same colour in every panel and every preview, 0
is transparent); affinities as RGB (channels 0, 1, 2 = red, green, blue; with the default
offsets that is z, y, x) instead of the raw. Panels are scaled by the voxel size, so
anisotropic volumes keep their proportions. Only the three slices are read from a volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from psc_seg.errors import UserError

LABEL_ALPHA = 0.45


def orthogonal_slices(volume: Any, center: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``xy`` (at z), ``xz`` (at y) and ``yz`` (at x) slices of ``volume`` through ``center``.

    Args:
        volume: ``(Z, Y, X)`` or ``(C, Z, Y, X)``; a numpy array or a :class:`psc_seg.io.Volume`
            (then only the three slices are read).
        center: ``(z, y, x)`` voxel indices.

    Returns:
        ``(xy (.., Y, X), xz (.., Z, X), yz (.., Z, Y))``, channels first where there are some.
    """
    z, y, x = (int(c) for c in center)
    full = slice(None)
    regions = ((slice(z, z + 1), full, full), (full, slice(y, y + 1), full), (full, full, slice(x, x + 1)))
    slices = []
    for axis, region in enumerate(regions):
        if hasattr(volume, "read"):
            block = np.asarray(volume.read(region))
        else:
            block = np.asarray(volume[(Ellipsis, *region)])
        slices.append(np.take(block, 0, axis=block.ndim - 3 + axis))
    return slices[0], slices[1], slices[2]


#: Distinct colours for the small ids of semantic labels (1 CSF, 2 GM, 3 WM, ...).
PALETTE = np.array([
    [0.12, 0.47, 0.71], [1.0, 0.5, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16], [0.58, 0.4, 0.74],
    [0.55, 0.34, 0.29], [0.89, 0.47, 0.76], [0.74, 0.74, 0.13], [0.09, 0.75, 0.81],
], dtype=np.float32)


def label_colors(ids: np.ndarray) -> np.ndarray:
    """A fixed RGB colour for each id, ``(..., 3)`` float32: ids 1-9 from a palette of distinct
    colours (semantic classes), larger ids pseudo-random in [0.2, 1] (instances)."""
    ids = np.asarray(ids).astype(np.uint64)
    channels = []
    with np.errstate(over="ignore"):
        for salt in (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)):
            h = (ids + np.uint64(1)) * salt
            h ^= h >> np.uint64(29)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(32)
            channels.append((h & np.uint64(0xFF)).astype(np.float32) / 255.0)
    colors = 0.2 + 0.8 * np.stack(channels, axis=-1)
    small = (ids >= 1) & (ids <= len(PALETTE))
    colors[small] = PALETTE[ids[small].astype(np.int64) - 1]
    return colors


def write_preview(
    raw: Any = None,
    *,
    labels: Any = None,
    affinities: Any = None,
    out: str | Path,
    title: str | None = None,
    center: Sequence[int] | None = None,
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    size: int = 1000,
) -> Path:
    """Write a PNG of three orthogonal slices (see the module docstring), with a scale bar in
    world units on the xy panel.

    Args:
        raw: ``(Z, Y, X)`` (or ``(C, Z, Y, X)``, channel 0 shown) array or Volume, or None when
            ``affinities`` are given.
        labels: ``(Z, Y, X)`` integer ids (0 = none) to overlay, or None.
        affinities: ``(C >= 3, Z, Y, X)`` affinities in [0, 1] (or uint8 0-255) shown as RGB
            from their first three channels, or None.
        out: the PNG to write (parent directories are created).
        title: a title above the panels (default: none).
        center: ``(z, y, x)`` voxel the slices go through; default the centre.
        voxel_size: ``(z, y, x)`` voxel size for the panel proportions and the scale bar;
            default ``raw.voxel_size`` for a Volume, else isotropic.
        unit: the voxel size's unit ("nanometer", ...) for the scale bar; default ``raw.unit``
            for a Volume (none: the bar counts voxel sizes).
        size: the PNG's longer side in pixels.

    Returns:
        The path written. UserError for mismatched shapes or a centre outside the volume.
    """
    if raw is None and affinities is None:
        raise UserError("nothing to preview: give a raw volume or affinities")
    shapes = {name: tuple(v.shape[-3:]) for name, v in (("raw", raw), ("labels", labels), ("affinities", affinities))
              if v is not None}
    shape = next(iter(shapes.values()))
    for name, other in shapes.items():
        if other != shape:
            raise UserError(f"preview: {name} has shape {other} but {next(iter(shapes))} has {shape} (z, y, x); "
                            "give volumes of one shape")
    if affinities is not None and (len(affinities.shape) != 4 or affinities.shape[0] < 3):
        raise UserError(f"preview: affinities must be (C >= 3, Z, Y, X), got shape {tuple(affinities.shape)}")
    if labels is not None and len(labels.shape) != 3:
        raise UserError(f"preview: labels must be (Z, Y, X), got shape {tuple(labels.shape)}")
    center = tuple(s // 2 for s in shape) if center is None else tuple(int(c) for c in center)
    for axis, c, n in zip("zyx", center, shape):
        if not 0 <= c < n:
            raise UserError(f"preview: {axis} = {c} is outside the volume (0..{n - 1} along {axis})")
    if voxel_size is None:
        source = raw if raw is not None else affinities
        voxel_size = getattr(source, "voxel_size", None) or (1.0, 1.0, 1.0)
    voxel_size = tuple(float(v) for v in voxel_size)
    if unit is None:
        unit = getattr(raw if raw is not None else affinities, "unit", None)

    panels = _panels(raw, labels, affinities, center)
    return _draw(panels, shape=shape, center=center, voxel_size=voxel_size, unit=unit, out=Path(out), title=title,
                 size=size)


def scale_bar(width: float, unit: str | None) -> tuple[float, str]:
    """``(length, label)`` of a scale bar for a panel ``width`` world units wide: the largest
    1, 2 or 5 times a power of ten that is at most a fifth of the width, e.g. ``(50.0, "50 nm")``
    for 384 nm."""
    target = width / 5
    power = 10.0 ** np.floor(np.log10(target)) if target > 0 else 1.0
    length = max(m * power for m in (1, 2, 5) if m * power <= target) if target >= power else power
    from psc_seg.io.geometry import unit_symbol

    return length, f"{length:g} {unit_symbol(unit)}".strip()


def _panels(raw, labels, affinities, center) -> list[np.ndarray]:
    """The three RGB images ``xy (Y, X, 3)``, ``zy (Y, Z, 3)``, ``xz (Z, X, 3)``."""
    if affinities is not None:
        scale = 255.0 if np.issubdtype(np.dtype(affinities.dtype), np.integer) else 1.0
        rgb = [np.clip(np.moveaxis(np.asarray(p[:3], dtype=np.float32) / scale, 0, -1), 0, 1)
               for p in orthogonal_slices(affinities, center)]
    else:
        planes = [np.asarray(p, dtype=np.float32) for p in orthogonal_slices(raw, center)]
        planes = [p[0] if p.ndim == 3 else p for p in planes]
        values = np.concatenate([p.ravel() for p in planes])
        finite = values[np.isfinite(values)]
        lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
        scale = (hi - lo) if hi > lo else 1.0
        rgb = [np.repeat(np.clip((np.nan_to_num(p) - lo) / scale, 0, 1)[..., None], 3, axis=-1) for p in planes]
    if labels is not None:
        for image, ids in zip(rgb, orthogonal_slices(labels, center)):
            ids = np.asarray(ids)
            colors = label_colors(ids)
            alpha = np.where(ids != 0, LABEL_ALPHA, 0.0)[..., None]
            image *= 1 - alpha
            image += alpha * colors
    xy, xz, yz = rgb
    return [xy, np.transpose(yz, (1, 0, 2)), xz]


def figure_pixels(
    shape: Sequence[int], *, voxel_size: Sequence[float] = (1.0, 1.0, 1.0), size: int = 1000
) -> tuple[int, int]:
    """``(width, height)`` of the PNG in pixels: ``size`` on the longer side, proportioned
    like the panels, ``(X + Z) : (Y + Z)`` in physical units."""
    z, y, x = (n * v for n, v in zip(shape, voxel_size))
    aspect = (x + z) / (y + z)
    return (size, max(1, round(size / aspect))) if aspect >= 1 else (max(1, round(size * aspect)), size)


def _draw(panels, *, shape, center, voxel_size, unit, out: Path, title, size: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    z, y, x = (n * v for n, v in zip(shape, voxel_size))  # physical extents
    margin = 0.06  # of the figure, around and between the panels, for their titles
    fig_w, fig_h = figure_pixels(shape, voxel_size=voxel_size, size=size)
    dpi = 100
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi, facecolor="black")
    grid = fig.add_gridspec(2, 2, width_ratios=[x, z], height_ratios=[y, z], left=margin, right=1 - margin,
                            bottom=margin, top=1 - margin - (0.06 if title else 0), wspace=margin,
                            hspace=margin)
    cz, cy, cx = center
    names = (f"xy at z={cz}", f"zy at x={cx}", f"xz at y={cy}")
    places = (grid[0, 0], grid[0, 1], grid[1, 0])
    extents = ((0, x, y, 0), (0, z, y, 0), (0, x, z, 0))
    for image, name, place, extent in zip(panels, names, places, extents):
        ax = fig.add_subplot(place)
        ax.imshow(image, extent=extent, interpolation="nearest")
        ax.set_title(name, color="white", fontsize=9)
        ax.set_axis_off()
        if name.startswith("xy"):  # the scale bar, bottom left, in world units
            length, label = scale_bar(x, unit)
            x0, y0 = 0.05 * x, 0.93 * y
            ax.plot([x0, x0 + length], [y0, y0], color="white", linewidth=3, solid_capstyle="butt")
            ax.text(x0, y0 - 0.03 * y, label, color="white", fontsize=8, va="bottom")
            ax.set_xlim(0, x)
            ax.set_ylim(y, 0)
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor="black")
    return out
