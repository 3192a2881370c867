"""``psc-seg evaluate``: VI / adapted Rand error (or Dice) of predictions against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def evaluate_command(
    predictions: Annotated[
        list[str],
        typer.Argument(
            metavar="PRED...",
            help="Prediction volumes (label maps), one row each, e.g. seg.zarr/threshold_0.50 seg.zarr/threshold_0.70.",
        ),
    ],
    gt: Annotated[
        str | None,
        typer.Option("--gt", metavar="GT", help="Ground-truth labels (0 = unlabelled, ignored), e.g. gt.h5:/labels. Required."),
    ] = None,
    semantic: Annotated[bool, typer.Option("--semantic", help="Class labels: Dice per class and mean Dice.")] = False,
    mask: Annotated[str | None, typer.Option("--mask", help="Score only where this volume is non-zero.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the scores to this JSON file.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    allow_incomplete: Annotated[
        bool,
        typer.Option("--allow-incomplete", help="Score volumes that psc-seg marked unfinished (refused by default)."),
    ] = False,
) -> None:
    """Score predictions against ground truth: VI split/merge (bits) and adapted Rand error
    with ground-truth 0 ignored, or Dice with --semantic; one row per prediction. Volumes
    are aligned by their offsets and voxel sizes: each prediction is scored on the
    intersection of its region, the ground truth's and the mask's, printed in world units."""
    from psc_seg.errors import UserError
    from psc_seg.pipelines.evaluate import evaluate, format_regions, format_rows

    if gt is None:
        example = (f"psc-seg evaluate {' '.join(predictions[:-1])} --gt {predictions[-1]}" if len(predictions) > 1
                   else "psc-seg evaluate PRED [PRED ...] --gt GT")
        raise UserError(f"name the ground truth with --gt (the order of two volumes would silently swap split and "
                        f"merge), e.g. {example}")
    rows = evaluate(predictions, gt, semantic=semantic, mask=mask, json_path=json_path, progress=not quiet,
                    allow_incomplete=allow_incomplete)
    typer.echo(format_regions(rows))
    typer.echo(format_rows(rows))
    if json_path is not None:
        typer.echo(f"wrote {json_path}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
