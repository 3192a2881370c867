"""``psc-seg segment``: affinities to instance labels (waterz agglomeration or connected components)."""

from __future__ import annotations

from typing import Annotated

import typer

from psc_seg.cli.options import PyramidOption, RoiOption, RoiVoxelsOption

OFFSETS_HELP = ("Offsets of the affinity channels, for affinities whose metadata names none (psc-seg predict stores "
                "them), in the config's form: \"[[-1,0,0],[0,-1,0],[0,0,-1]]\". The channels of these three nearest "
                "neighbours are segmented, wherever they are; others are left out.")


def segment_command(
    affinities: Annotated[str, typer.Argument(help="Affinity volume (C, Z, Y, X), e.g. affs.zarr.")],
    output: Annotated[str, typer.Argument(help="Output volume, e.g. seg.zarr (several thresholds: seg.zarr/threshold_0.50, ...).")],
    threshold: Annotated[
        list[float] | None,
        typer.Option("--threshold", "-t", help="Threshold in [0, 1]: higher = more merging (fewer, larger segments) "
                                               "for every decoder (regions or voxels join while 1 - affinity is "
                                               "below it); repeat for several. Default: the one validation chose for "
                                               "the checkpoint that predicted AFFINITIES (waterz), else 0.5."),
    ] = None,
    scoring: Annotated[
        str | None,
        typer.Option(help="waterz scoring: hist_quant_50, hist_quant_75 or mean. Default: the one validation chose "
                          "for the checkpoint that predicted AFFINITIES, else hist_quant_50."),
    ] = None,
    fragments: Annotated[str, typer.Option(help="Fragments: waterz (its watershed) or distance (seeded watershed on the boundary distance).")] = "waterz",
    decoder: Annotated[str, typer.Option(help="waterz (fragments + agglomeration) or cc (connected components of the edges whose 1 - affinity is below the threshold).")] = "waterz",
    min_size: Annotated[int, typer.Option("--min-size", help="Segments of fewer voxels become background 0.")] = 0,
    block_shape: Annotated[
        tuple[int, int, int] | None,
        typer.Option("--block-shape", help="Segment block by block with write blocks of Z Y X voxels (for large volumes)."),
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Blockwise: local dask cluster with N workers.")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="Blockwise: address of a running dask scheduler.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run with the same settings (a killed run's, or an unfinished --overwrite replacement); takes over from a run that is no longer running.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs. The new ones are written beside them (OUT.psc-seg-new) and take their place only once complete: a run that fails or is killed leaves the old ones as they were.")] = False,
    offsets: Annotated[str | None, typer.Option("--offsets", metavar="YAML", help=OFFSETS_HELP)] = None,
    roi: RoiOption = None,
    roi_voxels: RoiVoxelsOption = None,
    pyramid: PyramidOption = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    allow_incomplete: Annotated[
        bool,
        typer.Option("--allow-incomplete", help="Segment affinities that psc-seg marked unfinished (refused by default)."),
    ] = False,
) -> None:
    """Segment AFFINITIES into instance labels in OUTPUT (uint64, 0 = background), placed where
    the affinities lie (their offset). With --roi, only that region, as if the affinities were
    cropped to it. Ctrl-C says what is kept (blockwise: the finished blocks of each step) and
    the command that continues."""
    from psc_seg.pipelines.segment import segment

    outputs = segment(
        affinities, output, thresholds=threshold, scoring=scoring, fragments=fragments, decoder=decoder,
        min_size=min_size, block_shape=block_shape, workers=workers, scheduler=scheduler, resume=resume,
        overwrite=overwrite, progress=not quiet, allow_incomplete=allow_incomplete, offsets=offsets,
        roi=roi, roi_voxels=roi_voxels, pyramid=pyramid,
    )
    for spec in outputs:
        typer.echo(f"wrote {spec}")


def register(app: typer.Typer) -> None:
    app.command("segment")(segment_command)
