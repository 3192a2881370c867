"""``psc-seg evaluate``: VI / adapted Rand error (or Dice) of predictions against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def evaluate_command(
    volumes: Annotated[
        list[str],
        typer.Argument(
            help="PRED [PRED ...] GT: prediction volumes, then the ground truth "
            "(e.g. seg.zarr/threshold_0.50 gt.h5:/labels)."
        ),
    ],
    semantic: Annotated[bool, typer.Option("--semantic", help="Class labels: Dice per class and mean Dice.")] = False,
    mask: Annotated[str | None, typer.Option("--mask", help="Score only where this volume is non-zero.")] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write the scores to this JSON file.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Score predictions against ground truth: VI split/merge (bits) and adapted Rand error
    with ground-truth 0 ignored, or Dice with --semantic; one row per prediction."""
    from psc_seg.errors import UserError
    from psc_seg.pipelines.evaluate import evaluate, format_rows

    if len(volumes) < 2:
        raise UserError("give at least one prediction and the ground truth: psc-seg evaluate PRED [PRED ...] GT")
    rows = evaluate(volumes[:-1], volumes[-1], semantic=semantic, mask=mask, json_path=json_file, progress=not quiet)
    typer.echo(format_rows(rows))
    if json_file is not None:
        typer.echo(f"wrote {json_file}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
