"""``psc-seg segment``: affinities to instance labels, whole-volume or block by block."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from psc_seg.errors import UserError
from psc_seg.segment.agglomerate import SCORING
from psc_seg.segment.fragments import FRAGMENT_METHODS
from psc_seg.segment.whole import DECODERS


def output_specs(output: str, thresholds: Sequence[float]) -> list[str]:
    """One output per threshold: ``output`` itself for one, ``output/threshold_0.50`` for several."""
    from psc_seg.io import parse_spec

    if len(thresholds) == 1:
        return [str(output)]
    spec = parse_spec(output)
    if spec.format not in ("zarr", "hdf5"):
        raise UserError(f"several thresholds need a zarr or HDF5 output (e.g. seg.zarr), not {output!r}")
    names = [f"threshold_{t:.2f}" for t in thresholds]
    if len(set(names)) != len(names):
        raise UserError(f"thresholds {list(thresholds)} give the same output name at two decimals; drop one")
    if spec.format == "hdf5":
        base = f"{spec.path}:/{spec.inner}" if spec.inner else f"{spec.path}:"
        return [f"{base.rstrip('/')}/{name}" for name in names]
    return [f"{str(output).rstrip('/')}/{name}" for name in names]


def open_affinities(spec: str):
    """The affinity volume, checked: 4D ``(C, Z, Y, X)`` with C >= 3, float or uint8."""
    from psc_seg.io import open_volume

    affs = open_volume(spec)
    if affs.channels is None or affs.channels < 3:
        raise UserError(
            f"affinities {spec!r} have shape {affs.shape}; expected (C, Z, Y, X) with C >= 3 channels "
            "(z, y, x affinities, as `psc-seg predict` writes them)"
        )
    if not (np.issubdtype(affs.dtype, np.floating) or affs.dtype == np.uint8):
        raise UserError(f"affinities {spec!r} hold {affs.dtype}; expected float in [0, 1] or uint8")
    return affs


def check_options(*, thresholds, scoring, fragments, decoder, min_size) -> list[float]:
    thresholds = [float(t) for t in (thresholds or [0.5])]
    if scoring not in SCORING:
        raise UserError(f"unknown --scoring {scoring!r}; use one of {', '.join(SCORING)}")
    if fragments not in FRAGMENT_METHODS:
        raise UserError(f"unknown --fragments {fragments!r}; use one of {', '.join(FRAGMENT_METHODS)}")
    if decoder not in DECODERS:
        raise UserError(f"unknown --decoder {decoder!r}; use one of {', '.join(DECODERS)}")
    if min_size < 0:
        raise UserError(f"--min-size must be >= 0, got {min_size}")
    if any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise UserError(f"thresholds must lie in [0, 1], got {thresholds}")
    return thresholds


def segment(
    affinities: str,
    output: str,
    *,
    thresholds: Sequence[float] = (0.5,),
    scoring: str = "hist_quant_50",
    fragments: str = "waterz",
    decoder: str = "waterz",
    min_size: int = 0,
    block_shape: Sequence[int] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> list[str]:
    """Segment the affinity volume ``affinities`` into ``output`` (one volume per threshold).

    Args:
        affinities: volume spec of ``(C, Z, Y, X)`` affinities, channels in waterz order.
        output: volume spec; several thresholds write ``output/threshold_0.50`` etc.
        thresholds: waterz merge-score thresholds, or affinity thresholds for ``cc``.
        scoring, fragments, decoder, min_size: see :func:`psc_seg.segment.segment_affinities`.
        block_shape: ``(Z, Y, X)`` write-block shape for blockwise segmentation; None
            segments the whole volume in memory.
        workers, scheduler: blockwise only: a local dask cluster of that many workers, or
            the address of a running scheduler (default: in-process threads).
        resume: blockwise: continue an interrupted run (finished blocks are skipped).
        overwrite: replace existing outputs.
        progress: show progress bars.

    Returns:
        The output specs written, in the order of ``thresholds``.
    """
    thresholds = check_options(
        thresholds=thresholds, scoring=scoring, fragments=fragments, decoder=decoder, min_size=min_size
    )
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other; pick one")
    if workers is not None and scheduler is not None:
        raise UserError("--workers and --scheduler exclude each other; pick one")
    affs = open_affinities(affinities)
    outputs = output_specs(output, thresholds)
    config = {
        "affinities": affinities,
        "thresholds": thresholds,
        "scoring": scoring,
        "fragments": fragments,
        "decoder": decoder,
        "min_size": min_size,
        "block_shape": list(block_shape) if block_shape else None,
    }
    if block_shape is not None:
        from psc_seg.segment.blockwise import segment_blockwise

        return segment_blockwise(
            affs, outputs, config=config, workers=workers, scheduler=scheduler, resume=resume,
            overwrite=overwrite, progress=progress,
        )
    if workers is not None or scheduler is not None:
        raise UserError("--workers / --scheduler need --block-shape (blockwise segmentation)")
    return _segment_whole(affs, outputs, config=config, resume=resume, overwrite=overwrite, progress=progress)


def _segment_whole(affs, outputs: list[str], *, config: dict[str, Any], resume: bool, overwrite: bool,
                   progress: bool) -> list[str]:
    from tqdm.auto import tqdm

    from psc_seg.engine import settings_hash
    from psc_seg.io import META_KEY, create_volume, open_volume, volume_exists
    from psc_seg.segment.whole import segment_affinities

    settings = settings_hash({**config, "affinities_shape": list(affs.shape)})
    existing = [spec for spec in outputs if volume_exists(spec)]
    if resume and existing:
        done = [open_volume(spec) for spec in existing]
        if any(v.complete and v.attrs.get(META_KEY, {}).get("segment_settings") != settings for v in done):
            raise UserError(f"output {existing[0]!r} was written with other settings; pass --overwrite to replace it")
        if existing == outputs and all(v.complete for v in done):
            return outputs
    if existing and not (overwrite or resume):
        raise UserError(f"output {existing[0]!r} already exists; pass --overwrite to replace it")
    with tqdm(total=3, desc="segment", unit="step", disable=not progress) as bar:
        bar.set_postfix_str("reading affinities")
        data = affs.read()
        if np.issubdtype(data.dtype, np.floating) and np.isnan(data).any():
            raise UserError(f"affinities {config['affinities']!r} contain NaNs; fix the prediction first")
        bar.update()
        bar.set_postfix_str(f"{config['decoder']} decoding")
        segmentations = segment_affinities(
            data, thresholds=config["thresholds"], decoder=config["decoder"], fragments=config["fragments"],
            scoring=config["scoring"], min_size=config["min_size"],
        )
        bar.update()
        bar.set_postfix_str("writing")
        for spec, threshold, labels in zip(outputs, config["thresholds"], segmentations):
            out = create_volume(
                spec, shape=labels.shape, dtype=np.uint64, reference=affs, overwrite=True,
                axis_names=("z", "y", "x"), provenance={"config": {**config, "threshold": threshold}},
            )
            out.write((slice(None),) * 3, labels)
            out.update_attrs({META_KEY: {**out.attrs.get(META_KEY, {}), "segment_settings": settings}})
            out.finalize()
        bar.update()
    return outputs
