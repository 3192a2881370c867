"""Input intensity normalisation, as recorded in a checkpoint's ``metadata["normalize"]``.

=================================================  ============================================
spec                                               maps raw values ``x`` to
=================================================  ============================================
``{"kind": "uint8"}``                              ``x / 255``
``{"kind": "zscore", "mean": m, "std": s}``        ``(x - m) / s``
``{"kind": "percentile", "low": 1, "high": 99,     ``(x - lo) / (hi - lo)`` clipped to [0, 1], where
"low_value": lo, "high_value": hi}``               lo / hi are the low / high percentiles
=================================================  ============================================

Statistics missing from the spec (``mean``/``std``, ``low_value``/``high_value``) are estimated
from a sample of the volume (:func:`sample_values`), never from the whole volume, and the
resolved spec (with its statistics) is what every block then uses, so all blocks agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from psc_seg.errors import UserError

KINDS = ("uint8", "zscore", "percentile")
SAMPLE_VOXELS = 2_000_000
SAMPLE_CUBE = 32


def check_image(volume, role: str = "input") -> None:
    """UserError unless ``volume`` holds real-valued intensities, integers or floats, that a
    network can read: complex values are not (their imaginary part would be dropped), and bool
    is a mask, not an image. ``role`` names it (``"input"``, ``"raw"``)."""
    dtype, where = np.dtype(volume.dtype), f"{role} {volume.spec!r}"
    if dtype == bool:
        raise UserError(f"{where} holds bool values: a mask, not an image; pass the image it masks "
                        "(intensities as integers or floats)")
    if dtype.kind == "c":
        raise UserError(f"{where} holds {dtype} values, not real-valued image data; store the magnitude "
                        "(abs) or the part you mean as float32 and pass that")
    if dtype.kind not in "iuf":
        raise UserError(f"{where} holds {dtype} values, not image intensities; pass integers or floats")


def default_normalization(dtype: Any) -> dict[str, Any]:
    """The normalisation used when a checkpoint records none: uint8 for uint8 data, else zscore."""
    return {"kind": "uint8"} if np.dtype(dtype) == np.uint8 else {"kind": "zscore"}


def sample_values(volume, *, max_voxels: int = SAMPLE_VOXELS, cube: int = SAMPLE_CUBE, seed: int = 0) -> np.ndarray:
    """A 1D float64 sample of ``volume``'s values (all channels): the whole volume if it has at
    most ``max_voxels`` voxels, else random ``cube``^3 crops (seeded) adding up to about that."""
    shape = volume.spatial_shape
    total = int(np.prod(shape))
    if total <= max_voxels:
        return volume.read().astype(np.float64).ravel()
    rng = np.random.default_rng(seed)
    sizes = [min(cube, s) for s in shape]
    n = max(1, max_voxels // int(np.prod(sizes)))
    parts = []
    for _ in range(n):
        start = [int(rng.integers(0, s - c + 1)) for s, c in zip(shape, sizes)]
        region = tuple(slice(a, a + c) for a, c in zip(start, sizes))
        parts.append(volume.read(region).astype(np.float64).ravel())
    return np.concatenate(parts)


def resolve_normalization(spec: dict[str, Any] | None, volume) -> dict[str, Any]:
    """``spec`` (or the default for ``volume``'s dtype) with its statistics filled in from a
    sample of ``volume``; UserError for an unknown kind or a constant / non-finite volume."""
    spec = dict(spec or default_normalization(volume.dtype))
    kind = spec.get("kind")
    if kind not in KINDS:
        raise UserError(f"unknown normalisation {kind!r} in the checkpoint; expected one of {', '.join(KINDS)}")
    if kind == "zscore" and ("mean" not in spec or "std" not in spec):
        values = sample_values(volume)
        _check_finite(values, volume)
        spec.setdefault("mean", float(values.mean()))
        spec.setdefault("std", float(values.std()))
    if kind == "percentile" and ("low_value" not in spec or "high_value" not in spec):
        values = sample_values(volume)
        _check_finite(values, volume)
        low, high = np.percentile(values, [spec.get("low", 1.0), spec.get("high", 99.0)])
        spec.setdefault("low_value", float(low))
        spec.setdefault("high_value", float(high))
    if kind == "zscore" and not spec["std"] > 0:
        raise UserError(f"input {volume.spec!r} is constant (std 0); zscore normalisation needs varying values")
    if kind == "percentile" and not spec["high_value"] > spec["low_value"]:
        raise UserError(f"input {volume.spec!r}: percentiles {spec.get('low', 1)}/{spec.get('high', 99)} are equal; "
                        "the volume is (nearly) constant")
    return spec


def check_value_range(spec: dict[str, Any], volume) -> None:
    """UserError when ``volume``'s values do not fit the normalisation ``spec`` a network was
    trained with (so that every input would saturate or vanish): ``uint8`` needs values in
    0..255 that are not already scaled to [0, 1]; a ``zscore`` / ``percentile`` spec with
    fixed statistics needs the volume's median within 5 std / one window width of them.
    Statistics estimated per volume fit any volume."""
    kind = spec.get("kind")
    if kind == "uint8" and volume.dtype == np.uint8:
        return
    fixed = {"zscore": ("mean", "std"), "percentile": ("low_value", "high_value")}.get(kind, ())
    if kind != "uint8" and not all(k in spec for k in fixed):
        return
    values = sample_values(volume)
    _check_finite(values, volume)
    low, high, median = float(values.min()), float(values.max()), float(np.median(values))
    holds = f"input {volume.spec!r} holds {volume.dtype} values {low:g} to {high:g}"
    fix = ("; convert the volume to what the network was trained on, or pass {normalize} "
           f"{'|'.join(k for k in KINDS if k != kind)} to normalise it otherwise (stored with the output)")
    if kind == "uint8" and (low < 0 or high > 255):
        raise UserError(f"{holds}, but the network was trained on uint8 values (x / 255 for 0..255): "
                        f"every voxel would saturate{fix}", options=("normalize",))
    if kind == "uint8" and high <= 1.0:
        raise UserError(f"{holds}, already scaled to [0, 1], but the network divides by 255 (uint8 training data): "
                        f"every voxel would be near 0{fix}", options=("normalize",))
    if kind == "zscore" and abs(median - spec["mean"]) > 5 * spec["std"]:
        raise UserError(f"{holds} (median {median:g}), but the network was trained on values of mean "
                        f"{spec['mean']:g} and std {spec['std']:g}{fix}", options=("normalize",))
    if kind == "percentile":
        lo, hi = spec["low_value"], spec["high_value"]
        if not lo - (hi - lo) <= median <= hi + (hi - lo):
            raise UserError(f"{holds} (median {median:g}), but the network was trained on values "
                            f"{lo:g} to {hi:g}{fix}", options=("normalize",))


def _check_finite(values: np.ndarray, volume) -> None:
    if not np.isfinite(values).all():
        raise UserError(f"input {volume.spec!r} contains NaN or infinite values; clean it before predicting")


def normalize(array: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Apply a resolved normalisation ``spec`` to ``array`` (any shape); returns float32, a new
    array (``array`` is never modified). Where ``array`` is not float32 its float32 copy is
    normalised in place: one new array, not two (a training source box is ~5M voxels)."""
    original = np.asarray(array)
    x = original.astype(np.float32)  # always a copy (astype's default)
    kind = spec["kind"]
    if kind == "uint8":
        x *= np.float32(1.0 / 255.0)
        return x
    if kind == "zscore":
        x -= np.float32(spec["mean"])
        x *= np.float32(1.0 / spec["std"])
        return x
    if kind == "percentile":
        lo, hi = np.float32(spec["low_value"]), np.float32(spec["high_value"])
        x -= lo
        x /= hi - lo
        return np.clip(x, 0.0, 1.0, out=x)
    raise UserError(f"unknown normalisation {kind!r}; expected one of {', '.join(KINDS)}")
