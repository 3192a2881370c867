"""``psc-seg evaluate``: score predictions against ground truth, block by block."""

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


def _check_report_path(path: Path, inputs: Sequence[str]) -> None:
    """UserError, before any scoring, for a JSON report path that would destroy something: inside
    an input's file or container, an existing file that is not an earlier report, a folder, or in
    a folder that does not exist."""
    from psc_seg.io import parse_spec

    where = path.resolve()
    problem = None
    for spec in inputs:
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
        "arand_precision", "arand_recall", "n_segments"}`` or, semantic,
        ``{"prediction", "dice": {class: dice}, "mean_dice"}``.
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
    for spec, volume in [*zip(predictions, preds), *([(mask, mask_volume)] if mask_volume else [])]:
        if volume.shape != gt.shape:
            raise UserError(
                f"{spec!r} has shape {volume.shape} but the ground truth {ground_truth!r} has {gt.shape}; "
                "score volumes of the same shape (crop one of them)"
            )
    tables = contingency_tables_blockwise(gt, preds, mask=mask_volume, max_voxels=max_voxels, progress=progress)
    rows = []
    for spec, table in zip(predictions, tables):
        if semantic:
            if table.n_voxels == 0:
                raise UserError(f"nothing to score: the mask {mask!r} selects no voxel")
            dice, mean = dice_scores(table=table)
            rows.append({"prediction": spec, "dice": {str(k): v for k, v in dice.items()}, "mean_dice": mean})
            continue
        if table.drop_gt([0]).n_voxels == 0:
            raise UserError(
                f"the ground truth {ground_truth!r} has no labelled voxels"
                + (" inside the mask" if mask else "")
                + " (all 0); nothing to score"
            )
        rows.append({"prediction": spec, **instance_scores(table)})
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
