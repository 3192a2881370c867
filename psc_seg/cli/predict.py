"""``psc-seg predict CHECKPOINT INPUT OUTPUT``: blockwise prediction on volumes of any size."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from psc_seg.cli.options import PyramidOption, RoiOption, RoiVoxelsOption

MASK_HELP = ("Compute only the blocks whose region touches a nonzero voxel of this 3D volume, read at its own voxel "
             "size (an integer multiple of the input's, e.g. a tissue mask downsampled 4x) and offset; the other "
             "blocks stay 0 and count as done.")


def predict_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (.pt) written by psc-seg train / models init.")],
    input: Annotated[str, typer.Argument(help="Input volume: vol.zarr or vol.zarr/array, vol.h5:/dataset, .nii[.gz], .tif, .npy.")],
    output: Annotated[str, typer.Argument(help="Output volume (zarr v3 by default; .h5:/path, .nii.gz, ...).")],
    block_shape: Annotated[
        tuple[int, int, int] | None,
        typer.Option("--block-shape", metavar="Z Y X",
                     help="Write shape of a block in voxels; a multiple of the model's shape step, capped to the "
                          "volume. Default 64^3."),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Local dask worker processes (0: in this process).")] = 0,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", metavar="ADDRESS", help="Existing dask scheduler, e.g. tcp://host:8786.")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Blocks per forward pass.")] = 1,
    dtype: Annotated[str, typer.Option("--dtype", help="float32, or uint8 (round(255 p)).")] = "float32",
    precision: Annotated[
        str,
        typer.Option("--precision", help="Compute precision: auto, float32, bfloat16 or float16 (cuda only). auto on "
                                          "CPU: bfloat16 where the CPU has bfloat16 instructions (amx_bf16, "
                                          "avx512_bf16) and a short calibration shows it faster for this network, "
                                          "else float32; on cuda: bfloat16 (else float16) autocast. The choice is "
                                          "printed and stored with the output."),
    ] = "auto",
    tta: Annotated[
        str,
        typer.Option("--tta", help="Mirror test-time augmentation: none, flips (mean over the 8 axis flips: 8x the "
                                   "time) or flips+transposes (also the axis swaps the voxel size allows: 16x for "
                                   "anisotropic EM, 48x isotropic). Affinities are mapped back per offset; class "
                                   "probabilities are averaged before the argmax."),
    ] = "none",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an unfinished output made with the same settings (a killed run's, or an unfinished --overwrite replacement); takes over from a run that is no longer running.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output. The new one is written beside it (OUT.psc-seg-new) and takes its place only once complete: a run that fails or is killed leaves the old one as it was.")] = False,
    normalize: Annotated[
        str | None,
        typer.Option("--normalize", metavar="KIND",
                     help="Normalise the input as uint8 (x / 255), zscore or percentile (statistics from the input) "
                          "instead of as the checkpoint says; stored with the output. Default: the checkpoint's, "
                          "and an input whose values do not fit it is refused."),
    ] = None,
    ignore_voxel_size: Annotated[
        bool,
        typer.Option("--ignore-voxel-size",
                     help="Predict although the input's voxel size differs from the training data's by more than "
                          "25 % on an axis (refused by default)."),
    ] = False,
    allow_incomplete: Annotated[
        bool,
        typer.Option("--allow-incomplete",
                     help="Predict from an input that psc-seg marked unfinished (refused by default)."),
    ] = False,
    exact_tiling: Annotated[
        bool,
        typer.Option("--exact-tiling",
                     help="DenseNet: read the whole receptive field around every block even where the volume does "
                          "not fit one block (exact for any block shape; far more time and memory). By default "
                          "tiling is exact where the padded volume has at most 192^3 voxels, else a note says it "
                          "is not."),
    ] = False,
    roi: RoiOption = None,
    roi_voxels: RoiVoxelsOption = None,
    pyramid: PyramidOption = True,
    mask: Annotated[str | None, typer.Option("--mask", metavar="VOLUME", help=MASK_HELP)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Predict affinities (UNet) or class probabilities and labels (DenseNet) for INPUT, block by
    block, with the network in CHECKPOINT; write them to OUTPUT. With --roi, blocks read their
    context from the input around the region (mirrored only outside the input): the output
    equals that region of a whole prediction. Ctrl-C keeps the finished blocks and prints the
    command that continues (--resume)."""
    from psc_seg.pipelines.predict import predict

    summary = predict(checkpoint, input, output, block_shape=block_shape, workers=workers, scheduler=scheduler,
                      device=device, batch_size=batch_size, dtype=dtype, precision=precision, resume=resume,
                      overwrite=overwrite, progress=not quiet, normalize=normalize,
                      ignore_voxel_size=ignore_voxel_size, allow_incomplete=allow_incomplete,
                      exact_tiling=exact_tiling, roi=roi, roi_voxels=roi_voxels, pyramid=pyramid, mask=mask, tta=tta)
    where = ", ".join(f"{name} -> {spec}" for name, spec in summary["outputs"].items())
    masked = f", {summary['masked']} outside the mask" if mask else ""
    typer.echo(
        f"wrote {where}: {summary['computed']} blocks computed, {summary['skipped']} already done{masked} "
        f"(of {summary['blocks']}), {summary['seconds']:.1f} s, {summary['voxels_per_second']:,.0f} voxels/s, "
        f"{summary['precision'].used}{' with TTA ' + tta if tta != 'none' else ''}"
    )


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
