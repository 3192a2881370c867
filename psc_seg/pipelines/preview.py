"""``psc-seg preview``: orthogonal slices of a volume on disk as a PNG (three slices read)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from psc_seg.engine.resume import check_finished
from psc_seg.files import check_png_output
from psc_seg.errors import UserError, note
from psc_seg.io import open_volume
from psc_seg.preview import write_preview


def preview_volume(
    volume: str,
    *,
    out: str | Path,
    labels: str | None = None,
    affinities: str | None = None,
    center: Sequence[int | None] = (None, None, None),
    title: str | None = None,
    size: int = 1000,
    overwrite: bool = False,
    allow_incomplete: bool = False,
    roi: str | None = None,
    roi_voxels: str | None = None,
) -> Path:
    """Write a PNG of the slices of ``volume`` through ``center`` (see :mod:`psc_seg.preview`).

    Args:
        volume: spec of the raw volume (``(Z, Y, X)``); a ``(C >= 3, Z, Y, X)`` volume (e.g. a
            ``predict`` output) is shown as affinities in RGB.
        out: the PNG.
        labels: spec of ``(Z, Y, X)`` ids to overlay in random colours.
        affinities: spec of ``(C >= 3, Z, Y, X)`` affinities shown in RGB instead of the raw.
        center: ``(z, y, x)``; a None coordinate is the middle of that axis.
        title: a title; default the volume spec.
        size: the PNG's longer side in pixels.
        overwrite: replace an existing PNG; without it an existing one is a UserError.
        allow_incomplete: show volumes psc-seg marked unfinished (a note says so); without it
            they are refused (:func:`~psc_seg.engine.resume.check_finished`).
        roi, roi_voxels: show only this region of ``volume``, ``"z0:z1,y0:y1,x0:x1"`` in its world
            units or in voxels (:func:`~psc_seg.engine.region.resolve_roi`); the other volumes
            are cropped to the same voxels, and ``center`` counts from the region's first voxel.
    """
    from psc_seg.engine.region import resolve_roi
    from psc_seg.io.crop import CroppedVolume

    out = Path(out)
    check_png_output(out, "preview output", inputs=[v for v in (volume, labels, affinities) if v],
                     overwrite=overwrite)
    raw = open_volume(volume)
    label_volume = open_volume(labels) if labels else None
    affinity_volume = open_volume(affinities) if affinities else None
    for role, shown in (("volume", raw), ("labels", label_volume), ("affinities", affinity_volume)):
        if shown is not None:
            note(check_finished(shown, role, allow_incomplete=allow_incomplete))
    if affinity_volume is None and raw.channels is not None:
        if raw.channels < 3:
            raise UserError(f"{volume!r} has {raw.channels} channels; preview shows a 3D volume or >= 3 affinities")
        raw, affinity_volume = None, raw
    region = resolve_roi(raw or affinity_volume, roi=roi, roi_voxels=roi_voxels)
    if region is not None:
        raw, label_volume, affinity_volume = (
            None if v is None else CroppedVolume(v, region.begin, region.shape)
            for v in (raw, label_volume, affinity_volume))
    shape = (raw or affinity_volume).spatial_shape
    full_center = tuple(s // 2 if c is None else int(c) for c, s in zip(center, shape))
    return write_preview(
        raw,
        labels=label_volume,
        affinities=affinity_volume,
        out=out,
        title=volume if title is None else title,
        center=full_center,
        voxel_size=(raw or affinity_volume).voxel_size,
        unit=(raw or affinity_volume).unit,
        size=size,
    )
