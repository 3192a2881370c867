"""``psc-seg synth``: synthetic EM-like and MRI-like volumes with ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

synth_app = typer.Typer(help="Write synthetic volumes with ground truth (seeded, sized by options).",
                        no_args_is_help=True)

Shape = Annotated[tuple[int, int, int], typer.Option("--shape", help="Volume shape Z Y X in voxels.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same volume.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs that psc-seg synth wrote "
                                                             "(anything else there is refused, not replaced).")]


@synth_app.command("em")
def em_command(
    out: Annotated[Path, typer.Argument(help="Output container: NAME.zarr (default) or NAME.h5.")],
    shape: Shape = (64, 128, 128),
    seed: Seed = 0,
    cell_size: Annotated[float, typer.Option("--cell-size", help="Typical neurite diameter in voxels.")] = 18.0,
    noise: Annotated[float, typer.Option("--noise", help="Noise standard deviation, fraction of the grey range.")] = (
        0.07
    ),
    zero_membranes: Annotated[
        bool, typer.Option("--zero-membranes", help="Label membrane voxels 0 (CREMI convention) instead of their cell.")
    ] = False,
    overwrite: Overwrite = False,
) -> None:
    """EM-like neuropil: raw (uint8), labels (uint64 neuron ids) and mask (membranes), 8 nm voxels."""
    from psc_seg.pipelines.synth import synth_em

    summary = synth_em(out, shape=shape, seed=seed, overwrite=overwrite, cell_size=cell_size, noise=noise,
                       zero_membranes=zero_membranes)
    typer.echo(
        f"wrote {summary['path']} ({summary['format']}): raw, labels, mask of shape {tuple(summary['shape'])}, "
        f"{summary['num_cells']} cells, {summary['membrane_fraction']:.0%} membrane"
    )


@synth_app.command("mri")
def mri_command(
    out_dir: Annotated[Path, typer.Argument(help="Output directory for raw.nii.gz and labels.nii.gz.")],
    shape: Shape = (64, 64, 64),
    seed: Seed = 0,
    noise: Annotated[float, typer.Option("--noise", help="Rician noise, relative to the white-matter intensity.")] = (
        0.03
    ),
    bias: Annotated[float, typer.Option("--bias", help="Bias-field amplitude (0.2: about +-20 %).")] = 0.2,
    overwrite: Overwrite = False,
) -> None:
    """MRI-like head phantom (T1, 1 mm voxels): raw.nii.gz and labels.nii.gz (0 background, 1 CSF, 2 GM, 3 WM)."""
    from psc_seg.pipelines.synth import synth_mri

    summary = synth_mri(out_dir, shape=shape, seed=seed, overwrite=overwrite, noise=noise, bias=bias)
    fractions = ", ".join(f"{name} {value:.0%}" for name, value in summary["class_fractions"].items())
    typer.echo(f"wrote {summary['raw']} and {summary['labels']}: shape {tuple(summary['shape'])}, {fractions}")


def register(app: typer.Typer) -> None:
    app.add_typer(synth_app, name="synth")
