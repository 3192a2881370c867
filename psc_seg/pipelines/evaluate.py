"""``psc-seg evaluate``: score predictions against ground truth, block by block.

Volumes are aligned by their world ROIs (:mod:`psc_seg.io.geometry`): each prediction is
scored on the intersection of its ROI, the ground truth's and the mask's, as in CREMI, where
the labels cover a crop of the raw placed by an offset in nanometres::

    prediction  +-----------------------------+  offset 0
                |      +------------+         |
    ground truth|      |  scored    |         |  offset (400, 800, 800)
                |      +------------+         |
                +-----------------------------+

Volumes of one shape at one offset are scored whole, as they are; volumes of different shapes
without any geometry in their metadata (offset 0, no voxel size) are refused, since nothing
says how they line up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from psc_seg.engine.resume import check_finished
from psc_seg.errors import UserError, note
from psc_seg.evaluate import CONVENTIONS, contingency_tables_blockwise, dice_scores, instance_scores
from psc_seg.io.geometry import number_list


def _open_labels(spec: str, role: str, *, allow_incomplete: bool = False):
    from psc_seg.io import open_volume

    volume = open_volume(spec)
    note(check_finished(volume, role, allow_incomplete=allow_incomplete))
    if volume.channels is not None:
        raise UserError(f"{role} {spec!r} has shape {volume.shape}; labels must be 3D (z, y, x)")
    if not (np.issubdtype(volume.dtype, np.integer) or volume.dtype == bool):
        hint = "store the mask as 0/1 integers" if role == "mask" else "segment affinities first with `psc-seg segment`"
        raise UserError(f"{role} {spec!r} holds {volume.dtype} values; it must hold integers ({hint})")
    return volume


class _Crop:
    """The voxels ``key`` (``(z, y, x)`` slices) of a volume as an array-like cut in z slabs
    (what :func:`~psc_seg.evaluate.contingency_tables_blockwise` reads)."""

    def __init__(self, volume, key: tuple[slice, ...]) -> None:
        self.volume, self.key = volume, key
        self.shape = tuple(k.stop - k.start for k in key)

    def __getitem__(self, window: slice) -> np.ndarray:
        z = self.key[0]
        return self.volume.read((slice(z.start + window.start, z.start + window.stop), *self.key[1:]))


def _geometry_known(volume) -> bool:
    return volume.has_voxel_size or any(volume.offset)


def _same_size(a, b) -> bool:
    return all(abs(u / v - 1) <= 1e-6 for u, v in zip(a.voxel_size, b.voxel_size))


def scored_region(gt, others: Sequence[tuple[str, Any]]):
    """Where a prediction is scored against ground truth ``gt``: ``(roi, crops)``, the
    :class:`~psc_seg.io.geometry.WorldRoi` common to ``gt`` and ``others`` (``(role, volume)``:
    the prediction, the mask) and, for ``gt`` then each of ``others``, the voxels of it there
    (a :class:`_Crop`, or the volume itself when it is all of it). UserError for volumes of
    different voxel sizes, volumes that do not overlap or do not share a voxel grid, and
    volumes of different shapes without geometry."""
    from psc_seg.io.geometry import voxel_slices

    volumes = [("ground truth", gt), *others]
    same_place = all(v.spatial_shape == gt.spatial_shape and v.offset == gt.offset for _, v in volumes)
    for role, volume in others:
        if not same_place and not (_geometry_known(volume) or _geometry_known(gt)):
            raise UserError(
                f"{role} {volume.spec!r} has shape {volume.shape} but the ground truth {gt.spec!r} has {gt.shape}, and "
                "neither has a voxel size or offset that places it; score volumes of the same shape (crop one of "
                "them), or give them an offset in their metadata")
        if not _same_size(volume, gt) and (not same_place or (volume.has_voxel_size and gt.has_voxel_size)):
            raise UserError(
                f"{role} {volume.spec!r} (ROI {volume.roi}, voxel size {number_list(volume.voxel_size)}) and the ground "
                f"truth {gt.spec!r} (ROI {gt.roi}, voxel size {number_list(gt.voxel_size)}) differ in voxel size; score "
                "volumes of one voxel size (resample one of them)")
    if same_place:
        return gt.roi, [v for _, v in volumes]
    roi = gt.roi
    for role, volume in others:
        roi = roi.intersect(volume.roi)
        if roi.empty:
            raise UserError(f"{role} {volume.spec!r} (ROI {volume.roi}) and the ground truth {gt.spec!r} (ROI {gt.roi})"
                            + (" and the other volumes" if len(others) > 1 else "")
                            + " do not overlap; nothing to score: check their offsets")
    crops = []
    for role, volume in volumes:
        key = voxel_slices(roi, volume.offset, volume.voxel_size)
        if key is None:
            raise UserError(f"{role} {volume.spec!r} (ROI {volume.roi}) and the ground truth {gt.spec!r} "
                            f"(ROI {gt.roi}) do not share a voxel grid: their offsets differ by a fraction of a "
                            "voxel; fix the offset in the metadata of one of them")
        crops.append(volume if key == tuple(slice(0, n) for n in volume.spatial_shape) else _Crop(volume, key))
    return roi, crops


def _check_report_path(path: Path, inputs: Sequence[str]) -> None:
    """UserError, before any scoring, for a JSON report path that would destroy something: inside
    an input's file or container, an existing file that is not an earlier report, a folder, or in
    a folder that does not exist."""
    from psc_seg.io import parse_spec

    where = path.resolve()
    problem = None
    for spec in inputs:
        if parse_spec(spec).url:  # in an object store: no local report lies inside it
            continue
        home = parse_spec(spec).path.resolve()
        if where == home or home in where.parents:
            problem = f"lies in the input {spec!r}; write the report elsewhere"
    if where.is_dir():
        problem = f"is a folder; give a file name, e.g. {path / 'scores.json'}"
    elif not where.parent.is_dir():
        problem = f"is in a folder that does not exist ({str(where.parent)!r}); create it first"
    elif where.exists() and problem is None:
        try:
            earlier = json.loads(where.read_text())
        except (ValueError, UnicodeDecodeError):
            earlier = None
        if not (isinstance(earlier, dict) and "conventions" in earlier and "rows" in earlier):
            problem = "exists and is not an evaluate report; choose another file name"
    if problem is not None:
        raise UserError(f"{{json_path}} {str(path)!r} {problem}", options=("json_path",))


def is_class_map(volume) -> bool:
    """Whether ``volume``'s metadata says it holds classes (a semantic prediction, e.g. a
    DenseNet's ``labels``), which VI and ARAND would score as if they were objects."""
    task = volume.attrs.get("task")
    return isinstance(task, dict) and task.get("kind") == "semantic"


def evaluate(
    predictions: Sequence[str],
    ground_truth: str,
    *,
    semantic: bool = False,
    mask: str | None = None,
    json_path: str | Path | None = None,
    max_voxels: int = 2**25,
    progress: bool = False,
    allow_incomplete: bool = False,
) -> list[dict[str, Any]]:
    """Score each prediction against the ground truth.

    Args:
        predictions: volume specs of ``(Z, Y, X)`` integer labels.
        ground_truth: volume spec of the ``(Z, Y, X)`` ground truth (0 = unlabelled).
        semantic: class labels: Dice per class (0 = background, excluded) and the mean,
            instead of VI / ARAND.
        mask: optional volume spec; only voxels where it is non-zero are scored.
        json_path: write ``{"rows": [...], "conventions": {...}, ...}`` there.
        max_voxels: the most voxels of one volume read at once (volumes are read in z slabs).
        progress: show a progress bar.
        allow_incomplete: score volumes psc-seg marked unfinished (a note says so); without
            it they are refused (:func:`~psc_seg.engine.resume.check_finished`).

    Returns:
        One row per prediction: ``{"prediction", "voi_split", "voi_merge", "voi", "arand",
        "arand_precision", "arand_recall", "n_segments", "roi"}`` or, semantic,
        ``{"prediction", "dice": {class: dice}, "mean_dice", "roi"}``; ``roi``: the world ROI
        scored (:func:`scored_region`), ``{"begin", "end", "shape", "unit"}`` ``(z, y, x)``.
    """
    if not predictions:
        raise UserError("give at least one prediction to score")
    if json_path is not None:
        _check_report_path(Path(json_path), [*predictions, ground_truth, *([mask] if mask else [])])
    gt = _open_labels(ground_truth, "ground truth", allow_incomplete=allow_incomplete)
    preds = [_open_labels(spec, "prediction", allow_incomplete=allow_incomplete) for spec in predictions]
    if not semantic:
        for spec, volume in zip(predictions, preds):
            if is_class_map(volume):
                raise UserError(f"prediction {spec!r} is a class map (its metadata says semantic task); score it with "
                                "{semantic} (Dice per class), or give an instance segmentation", options=("semantic",))
    mask_volume = _open_labels(mask, "mask", allow_incomplete=allow_incomplete) if mask else None
    extra = [("mask", mask_volume)] if mask_volume else []
    scored = [scored_region(gt, [("prediction", volume), *extra]) for volume in preds]
    regions = [roi for roi, _ in scored]
    tables: list = [None] * len(preds)
    for roi in dict.fromkeys(regions):  # predictions scored on one region share one pass over the ground truth
        group = [i for i, r in enumerate(regions) if r == roi]
        gt_part, _, *mask_part = scored[group[0]][1]
        found = contingency_tables_blockwise(gt_part, [scored[i][1][1] for i in group],
                                             mask=mask_part[0] if mask_part else None,
                                             max_voxels=max_voxels, progress=progress)
        for i, table in zip(group, found):
            tables[i] = table
    rows = []
    for spec, table, roi in zip(predictions, tables, regions):
        if semantic:
            if table.n_voxels == 0:
                raise UserError(f"nothing to score: the mask {mask!r} selects no voxel")
            dice, mean = dice_scores(table=table)
            rows.append({"prediction": spec, "dice": {str(k): v for k, v in dice.items()}, "mean_dice": mean,
                         "roi": roi.as_dict()})
            continue
        if table.drop_gt([0]).n_voxels == 0:
            raise UserError(
                f"the ground truth {ground_truth!r} has no labelled voxels"
                + (" inside the mask" if mask else "")
                + " (all 0); nothing to score"
            )
        rows.append({"prediction": spec, **instance_scores(table), "roi": roi.as_dict()})
    if json_path is not None:
        report = {
            "ground_truth": ground_truth,
            "mask": mask,
            "mode": "semantic" if semantic else "instance",
            "rows": rows,
            "conventions": CONVENTIONS,
        }
        Path(json_path).write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    return rows


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a text table (instance or semantic columns, by the first row)."""
    if not rows:
        return ""
    width = max(len("prediction"), *(len(r["prediction"]) for r in rows))
    lines = []
    if "dice" in rows[0]:
        classes = sorted({k for r in rows for k in r["dice"]}, key=int)
        lines.append(f"{'prediction':<{width}}  {'mean_dice':>9}" + "".join(f"  {'dice_' + k:>8}" for k in classes))
        for r in rows:
            cells = "".join(f"  {r['dice'].get(k, math.nan):>8.4f}" for k in classes)
            lines.append(f"{r['prediction']:<{width}}  {r['mean_dice']:>9.4f}" + cells)
        return "\n".join(lines)
    names = ("voi_split", "voi_merge", "voi", "arand")
    lines.append(f"{'prediction':<{width}}" + "".join(f"  {n:>9}" for n in names) + f"  {'n_segments':>10}")
    for r in rows:
        lines.append(f"{r['prediction']:<{width}}" + "".join(f"  {r[n]:>9.4f}" for n in names) + f"  {r['n_segments']:>10}")
    return "\n".join(lines)


def format_regions(rows: Sequence[dict[str, Any]]) -> str:
    """Where the rows were scored, in world units: one line ``scored on [z 400:592, ...]
    nanometer`` when they share the region, else one line per prediction."""
    from psc_seg.io.geometry import WorldRoi

    regions = [str(WorldRoi.from_dict(r["roi"])) for r in rows if "roi" in r]
    if len(set(regions)) == 1:
        return f"scored on {regions[0]}"
    return "\n".join(f"scored {r['prediction']} on {region}" for r, region in zip(rows, regions))
