"""Options that several commands share, declared once: the region of interest (``--roi``,
``--roi-voxels``; see :func:`psc_seg.engine.region.resolve_roi`), and showing unfinished volumes
(``--allow-incomplete`` of the commands that show volumes)."""

from __future__ import annotations

from typing import Annotated

import typer

ROI_METAVAR = "Z0:Z1,Y0:Y1,X0:X1"

RoiOption = Annotated[
    str | None,
    typer.Option("--roi", metavar=ROI_METAVAR,
                 help="Work only on this region, in the input's world units (its unit: nm for EM, mm for MRI; ends "
                      "exclusive, on voxel borders), z first: Z0:Z1,Y0:Y1,X0:X1, e.g. 400:1360,800:992,800:992. The "
                      "output covers exactly it, placed where it lies (offset = input offset + region begin)."),
]
RoiVoxelsOption = Annotated[
    str | None,
    typer.Option("--roi-voxels", metavar=ROI_METAVAR,
                 help="As --roi, in voxel indices of the input: Z0:Z1,Y0:Y1,X0:X1, e.g. 10:34,200:248,200:248."),
]
ShowIncompleteOption = Annotated[
    bool,
    typer.Option("--allow-incomplete", help="Show volumes that psc-seg marked unfinished (refused by default)."),
]
PyramidOption = Annotated[
    bool,
    typer.Option("--pyramid/--no-pyramid",
                 help="zarr outputs are OME-Zarr multiscale pyramids for viewers (levels downsampled by 2 along the "
                      "finest axes until the smallest axis is under 64 voxels: images and affinities by mean, labels "
                      "by mode), built after level 0 and part of the output's completeness; --no-pyramid writes "
                      "level 0 only. NIfTI, HDF5, TIFF and .npy outputs have no pyramid."),
]
