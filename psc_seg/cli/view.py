"""``psc-seg view``: volumes in neuroglancer, served from this machine, or one screenshot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from psc_seg.cli.options import ShowIncompleteOption


def view_command(
    raw: Annotated[str, typer.Argument(help="Raw volume: vol.zarr/raw, vol.h5:/raw, scan.nii.gz, stack.tif ...")],
    labels: Annotated[
        list[str] | None,
        typer.Option("--labels", help="Segmentation to show over the raw (repeat for several), e.g. "
                                      "seg.zarr/threshold_0.50."),
    ] = None,
    affinities: Annotated[
        str | None, typer.Option("--affinities", help="(C, Z, Y, X) affinities to show as an RGB layer.")
    ] = None,
    bind: Annotated[
        str, typer.Option("--bind", help="Address to serve on; another than the loopback default lets anyone who "
                                         "can reach it read the data.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to serve on (0: any free one).")] = 0,
    out: Annotated[
        Path | None,
        typer.Option("-o", "--screenshot", help="Write a PNG of the xy section through the raw's centre and exit, "
                                                "instead of serving (needs chromium and chromium-driver)."),
    ] = None,
    width: Annotated[int, typer.Option("--width", min=64, help="Screenshot width in pixels.")] = 1024,
    height: Annotated[int, typer.Option("--height", min=64, help="Screenshot height in pixels.")] = 768,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the screenshot if it exists.")] = False,
    allow_incomplete: ShowIncompleteOption = False,
) -> None:
    """Open RAW, with segmentations and affinities, in neuroglancer (installed with the view extra of psc-seg),
    which serves its client and the data (read lazily) from this machine, in world coordinates
    as stored. Prints the URL and serves until Ctrl-C; with --screenshot writes one view and exits."""
    from psc_seg.pipelines.view import view_volumes

    path = view_volumes(raw, labels=labels or (), affinities=affinities, bind=bind, port=port, screenshot=out,
                        size=(width, height), overwrite=overwrite, allow_incomplete=allow_incomplete,
                        on_url=lambda url: typer.echo(f"neuroglancer: {url}  (Ctrl-C to stop)"))
    if path is not None:
        typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("view")(view_command)
