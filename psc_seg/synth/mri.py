"""A synthetic T1-weighted MRI head phantom with tissue labels.

Arrays are ``(z, y, x)`` with z inferior -> superior, y posterior -> anterior, x left ->
right, 1 mm voxels. From outside in: air, scalp (bright fat), skull (dark), the cerebrospinal
fluid (CSF) around the brain, a cortex of grey matter (GM) about ``cortex_thickness`` mm thick
(varying by +-30 %) that lines the brain surface, the interhemispheric fissure and folded sulci (CSF filled, laid
along the zero set of a smooth random function on the sphere, of varying depth), white matter
(WM) inside, two banana-shaped lateral ventricles (CSF) and deep grey nuclei (GM). T1-like
contrast (WM > GM > CSF, fat bright, bone dark), a little partial-volume blur, a smooth
multiplicative bias field and Rician noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from psc_seg.errors import UserError
from psc_seg.synth._fields import check_shape, smooth_field

#: Tissue classes of ``labels``.
CLASSES = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}
#: T1-like mean intensities (arbitrary units, WM = 1).
LEVELS = {"air": 0.0, "scalp": 0.8, "skull": 0.08, "csf": 0.2, "gm": 0.58, "wm": 1.0}


def mri_volume(
    shape: Sequence[int] = (64, 64, 64),
    *,
    seed: int = 0,
    noise: float = 0.03,
    bias: float = 0.2,
    cortex_thickness: float = 2.5,
    folds: float = 1.0,
) -> dict[str, np.ndarray]:
    """A T1-like MRI head phantom with CSF, GM and WM labels.

    Args:
        shape: ``(z, y, x)`` in voxels (1 mm), each >= 24; the head fills about 90 % of each
            axis, so a larger shape is a larger head with the same cortex thickness.
        seed: the one seed of every random choice; the same seed gives the same volume.
        noise: standard deviation of the Rician noise relative to the WM intensity.
        bias: amplitude of the smooth multiplicative bias field (0.2: about +-20 %); 0 for none.
        cortex_thickness: GM thickness in mm.
        folds: depth of the sulci relative to the default (0 for a smooth brain).

    Returns:
        ``{"raw": float32 (Z, Y, X), "labels": uint8 (Z, Y, X), "affine": float64 (4, 4),
        "voxel_size": float64 (3,)}``. ``labels``: 0 background (air, scalp, skull), 1 CSF,
        2 GM, 3 WM. ``affine``: the NIfTI voxel -> world (mm) matrix, in NIfTI's (x, y, z)
        axis order (identity: 1 mm voxels, voxel 0 at the origin). ``voxel_size``: (1, 1, 1) mm.
    """
    shape = check_shape(shape, minimum=24, name="mri_volume")
    if noise < 0 or bias < 0 or folds < 0:
        raise UserError("mri_volume: noise, bias and folds must be >= 0")
    if cortex_thickness <= 0:
        raise UserError(f"mri_volume: cortex_thickness must be > 0 mm, got {cortex_thickness}")
    # one independent stream per component, so changing one leaves the others unchanged
    streams = np.random.SeedSequence(seed).spawn(4)
    rng_anatomy, rng_texture, rng_bias, rng_noise = (np.random.default_rng(s) for s in streams)
    labels, tissue = _anatomy(shape, rng_anatomy, cortex_thickness=cortex_thickness, folds=folds)

    levels = np.array([LEVELS[name] for name in ("air", "scalp", "skull", "csf", "gm", "wm")], dtype=np.float32)
    image = levels[tissue]
    image *= 1 + 0.03 * smooth_field(shape, 3.0, rng_texture)  # within-tissue texture
    image = ndimage.gaussian_filter(image, 0.5, truncate=3.0)  # partial volume
    if bias > 0:
        image *= np.exp(bias * smooth_field(shape, 0.6 * max(shape), rng_bias))
    if noise > 0:
        real = image + rng_noise.normal(0.0, noise, size=shape).astype(np.float32)
        imag = rng_noise.normal(0.0, noise, size=shape).astype(np.float32)
        image = np.sqrt(real * real + imag * imag)
    return {
        "raw": image.astype(np.float32, copy=False),
        "labels": labels,
        "affine": np.eye(4),
        "voxel_size": np.ones(3),
    }


def _anatomy(shape: tuple[int, int, int], rng: np.random.Generator, *, cortex_thickness: float, folds: float):
    """``(labels uint8, tissue uint8)``; tissue indexes air, scalp, skull, csf, gm, wm."""
    center = (np.asarray(shape) - 1) / 2 + rng.uniform(-1, 1, 3)
    semi = np.asarray(shape) * np.array([0.44, 0.46, 0.42]) * rng.uniform(0.97, 1.0, 3)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    q = [(g - c) / s for g, c, s in zip(grids, center, semi)]  # head ellipsoid -> unit sphere
    radius = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) + np.zeros(shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        direction = [np.where(radius > 0, qa / radius, 0.0) for qa in q]

    # scalp 0.92..1, skull 0.84..0.92, CSF from the skull down to the pial surface at 0.92 of the
    # brain (rho = 1 at the inner skull surface)
    rho = radius / 0.84
    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[radius <= 1.0] = 1
    tissue[radius <= 0.92] = 2
    brain = rho <= 1.0
    outer_csf = brain & (rho > 0.92)

    # sulci: along the zero set of a smooth random function of the direction, down to a depth
    # that varies over the brain; the interhemispheric fissure along the midline above the
    # corpus callosum
    # gyri are ~10 mm apart whatever the head size
    scale = 0.84 * 0.92 * float(semi.mean()) / 24.0
    # the sulci follow a warped direction so they bend instead of running straight to the centre
    bent = [d + 0.12 * smooth_field(shape, 16.0 * scale, rng) for d in direction]
    g = np.zeros(shape)
    for _ in range(14):
        w = rng.standard_normal(3)
        w /= np.linalg.norm(w)
        freq = scale * rng.uniform(4.0, 8.0)
        g += np.cos(freq * (w[0] * bent[0] + w[1] * bent[1] + w[2] * bent[2]) + rng.uniform(0, 2 * np.pi))
    g /= g[brain].std()
    gradient = np.sqrt(sum(np.gradient(g, axis=a) ** 2 for a in range(3))) + 1e-6
    depth = folds * (0.3 + 0.1 * np.tanh(smooth_field(shape, 0.3 * max(shape), rng)))
    sulcus = (np.abs(g) / gradient < 0.6) & (rho > 0.92 - depth) & brain
    wiggle = 1.5 * smooth_field((shape[0], shape[1], 1), 12.0, rng)  # the fissure is not a plane
    midline = np.abs(grids[2] - center[2] - wiggle) < 0.75
    fissure = brain & midline & ((q[0] > 0.05) | (np.abs(q[1]) > 0.55)) & (rho > 0.25)
    csf = outer_csf | (sulcus & (folds > 0)) | fissure

    # the cortex: GM within cortex_thickness mm of that CSF, WM beyond
    distance = ndimage.distance_transform_edt(~(csf | ~brain))
    thickness = cortex_thickness * (1 + 0.3 * np.tanh(smooth_field(shape, 12.0, rng)))
    gm = brain & ~csf & (distance <= thickness)
    wm = brain & ~csf & ~gm

    # deep grey nuclei (basal ganglia, thalami), then the lateral ventricles over them
    for side in (-1, 1):
        for cz, cy, cx, az, ay, ax in ((-0.05, 0.15, 0.28, 0.16, 0.18, 0.10), (-0.02, -0.15, 0.12, 0.14, 0.14, 0.10)):
            blob = ((q[0] - cz) / az) ** 2 + ((q[1] - cy) / ay) ** 2 + ((q[2] - side * cx) / ax) ** 2 <= 1
            gm |= blob & wm
            wm &= ~blob
    bend = 0.12 + 0.35 * q[1] ** 2  # the ventricle's roof curves down at both ends
    for side in (-1, 1):
        ventricle = ((q[0] - bend) / 0.11) ** 2 + (q[1] / 0.42) ** 2 + ((q[2] - side * 0.12) / 0.085) ** 2 <= 1
        csf |= ventricle
        gm &= ~ventricle
        wm &= ~ventricle

    labels = np.zeros(shape, dtype=np.uint8)
    labels[csf] = 1
    labels[gm] = 2
    labels[wm] = 3
    tissue[csf] = 3
    tissue[gm] = 4
    tissue[wm] = 5
    return labels, tissue
