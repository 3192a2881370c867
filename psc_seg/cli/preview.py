"""``psc-seg preview``: orthogonal slices of a volume, with labels or affinities, as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from psc_seg.cli.options import RoiOption, RoiVoxelsOption, ShowIncompleteOption


def preview_command(
    volume: Annotated[str, typer.Argument(help="Raw volume: vol.zarr/raw, vol.h5:/raw, scan.nii.gz, ... "
                                                "(a (C, Z, Y, X) volume is shown as affinities).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="PNG file to write.")],
    labels: Annotated[str | None, typer.Option("--labels", help="Labels to overlay, one fixed colour per id.")] = None,
    affinities: Annotated[
        str | None, typer.Option("--affinities", help="(C, Z, Y, X) affinities to show as RGB instead of the raw.")
    ] = None,
    z: Annotated[int | None, typer.Option("--z", help="z of the xy slice (default: the middle).")] = None,
    y: Annotated[int | None, typer.Option("--y", help="y of the xz slice (default: the middle).")] = None,
    x: Annotated[int | None, typer.Option("--x", help="x of the zy slice (default: the middle).")] = None,
    title: Annotated[str | None, typer.Option("--title", help="Title above the panels (default: VOLUME).")] = None,
    size: Annotated[int, typer.Option("--size", min=100, help="Longer side of the PNG in pixels.")] = 1000,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
    allow_incomplete: ShowIncompleteOption = False,
    roi: RoiOption = None,
    roi_voxels: RoiVoxelsOption = None,
) -> None:
    """Write a PNG of the xy, zy and xz slices of VOLUME through one point, for a quick look, with
    a scale bar in world units. With --roi, only that region (--z/--y/--x count from its first voxel)."""
    from psc_seg.pipelines.preview import preview_volume

    path = preview_volume(volume, out=out, labels=labels, affinities=affinities, center=(z, y, x), title=title,
                          size=size, overwrite=overwrite, allow_incomplete=allow_incomplete, roi=roi,
                          roi_voxels=roi_voxels)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("preview")(preview_command)
