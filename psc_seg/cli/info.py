"""``psc-seg info VOLUME``: shape, dtype, chunks, voxel size, value range of a sample, metadata."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def info_command(
    volume: Annotated[str, typer.Argument(help="Volume spec: vol.zarr or vol.zarr/array, vol.h5:/dataset, .nii[.gz], .tif, .npy.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Describe VOLUME: shape, dtype, chunks, voxel size, value range of a sample, metadata."""
    from psc_seg.pipelines.info import roi_text, volume_info

    info = volume_info(volume)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    sample = info["sample"]
    where = "whole volume" if sample["whole_volume"] else f"sample of {sample['voxels']:,} voxels"
    lines = [
        f"volume      {info['spec']} ({info['format']})",
        f"shape       {tuple(info['shape'])}" + (f"  ({info['channels']} channels)" if info["channels"] else ""),
        f"dtype       {info['dtype']}",
        f"chunks      {tuple(info['chunks']) if info['chunks'] else 'none'}",
        f"voxel size  {tuple(info['voxel_size'])} {info['unit'] or ''}".rstrip(),
        f"offset      {tuple(info['offset'])}",
        f"roi         {roi_text(info)}",
        f"values      min {sample['min']:g}  max {sample['max']:g}  mean {sample['mean']:.4g}  ({where})"
        if sample["min"] is not None else f"values      no finite values ({where})",
        f"complete    {'yes' if info['complete'] else 'NO (unfinished output)'}",
    ]
    if info["pyramid"]:
        lines.append("pyramid     " + ", ".join(str(tuple(shape)) for shape in info["pyramid"]) + " (OME-Zarr levels "
                     "1, 2, ... for viewers; psc-seg reads level 0)")
    if sample["non_finite"]:
        lines.append(f"non-finite  {sample['non_finite']:,} voxels of the sample are NaN or infinite")
    if "affine" in info:
        lines.append("affine      " + "; ".join(" ".join(f"{v:g}" for v in row) for row in info["affine"]))
    if info["attrs"]:
        lines.append("metadata    " + json.dumps(info["attrs"], sort_keys=True)[:2000])
    typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    app.command("info")(info_command)
