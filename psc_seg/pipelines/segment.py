"""``psc-seg segment``: affinities to instance labels, whole-volume or block by block.

The stage only: arguments in, checked (:class:`~psc_seg.segment.settings.SegmentSettings`),
what the affinities' metadata says read (their offsets; the threshold and scoring validation
chose for the checkpoint that predicted them), then one of the two volume-level paths of
:mod:`psc_seg.segment` (:func:`~psc_seg.segment.whole.segment_whole`,
:func:`~psc_seg.segment.blockwise.segment_blockwise`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from psc_seg.affinities import EXAMPLE_OFFSETS, check_offsets, nearest_neighbour_channels
from psc_seg.engine.executor import check_executor
from psc_seg.engine.region import resolve_roi
from psc_seg.engine.resume import check_finished
from psc_seg.errors import UserError, check_exclusive, note
from psc_seg.io.crop import CroppedVolume
from psc_seg.segment.settings import DEFAULT_SCORING, DEFAULT_THRESHOLD, SegmentSettings
from psc_seg.segment.whole import segment_whole


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


def affinity_offsets(affs, given: str | Sequence[Sequence[int]] | None = None) -> list[tuple[int, int, int]]:
    """The offsets of the channels of the affinity volume ``affs``: those stored with it
    (attribute ``task.offsets``, which ``psc-seg predict`` writes), else ``given``.

    Args:
        affs: an open ``(C, Z, Y, X)`` :class:`psc_seg.io.Volume`.
        given: one ``(dz, dy, dx)`` per channel, as a list or as YAML text
            (``"[[-1, 0, 0], [0, -1, 0], [0, 0, -1]]"``, the config's form).

    Raises:
        UserError: no offsets stored and none given; offsets that are not triples, not one
            per channel, or that differ from the stored ones.
    """
    task = affs.attrs.get("task")
    stored = task.get("offsets") if isinstance(task, dict) else None
    if stored is None and given is None:
        raise UserError(f"affinities {affs.spec!r} carry no offsets in their metadata (task.offsets, which psc-seg "
                        f"predict writes); pass {{offsets}} with one (dz, dy, dx) per channel, e.g. {EXAMPLE_OFFSETS}",
                        options=("offsets",))
    if isinstance(given, str):
        try:
            given = yaml.safe_load(given)
        except yaml.YAMLError:
            raise UserError(f"{{offsets}} {given!r} is not valid YAML; write e.g. {EXAMPLE_OFFSETS}",
                            options=("offsets",)) from None
    where = "{offsets}" if given is not None else f"the offsets in the metadata of {affs.spec!r}"
    try:
        offsets = check_offsets(given if given is not None else stored)
    except (ValueError, TypeError):
        raise UserError(f"{where} must be a list of (dz, dy, dx) triples, e.g. {EXAMPLE_OFFSETS}; "
                        f"got {given if given is not None else stored!r}", options=("offsets",)) from None
    if len(offsets) != affs.channels:
        raise UserError(f"{where} name {len(offsets)} offsets but affinities {affs.spec!r} have {affs.channels} "
                        "channels; give one offset per channel", options=("offsets",))
    if stored is not None and given is not None and offsets != (stored := check_offsets(stored)):
        raise UserError(f"affinities {affs.spec!r} store the offsets {[list(o) for o in stored]} in "
                        f"their metadata, not the {{offsets}} given; drop {{offsets}}", options=("offsets",))
    return offsets


def validation_choice(affs) -> tuple[dict[str, Any] | None, str | None]:
    """The threshold and scoring validation chose for the checkpoint that predicted ``affs``
    (named in their provenance; stored in its metadata by training, ``metadata["segment"]``).

    Returns:
        ``({"threshold", "scoring", "checkpoint"}, None)``; ``(None, reason)`` when that checkpoint is gone,
        unreadable or no longer the file that predicted (its hash differs); ``(None, None)``
        when there is nothing to take (no checkpoint named, or one without validation).
    """
    from psc_seg.engine import file_hash
    from psc_seg.io import META_KEY

    config = ((affs.attrs.get(META_KEY) or {}).get("provenance") or {}).get("config") or {}
    named = config.get("checkpoint")
    if not named:
        return None, None
    if not Path(named).is_file():
        return None, f"checkpoint {named}, which predicted {affs.spec}, is gone"
    if config.get("checkpoint_sha256") and file_hash(named) != config["checkpoint_sha256"]:
        return None, f"checkpoint {named} has changed since it predicted {affs.spec}"
    from psc_seg.models import read_checkpoint_metadata

    try:
        choice = read_checkpoint_metadata(named).get("segment")
    except UserError as exc:
        return None, str(exc).split(";")[0]
    return ({**choice, "checkpoint": named}, None) if choice else (None, None)


def _validated_defaults(affs, thresholds: Sequence[float] | None, scoring: str | None, *,
                        decoder: str) -> tuple[Sequence[float], str, str | None]:
    """``(thresholds, scoring, note)``: those not given taken from :func:`validation_choice`
    (waterz only, the decoder validation runs; its threshold only with its own scoring), else
    the defaults; the note says which were taken, or why none could be."""
    given = {"threshold": bool(thresholds), "scoring": scoring is not None}
    if decoder != "waterz" or all(given.values()):
        return thresholds or (DEFAULT_THRESHOLD,), scoring or DEFAULT_SCORING, None
    choice, reason = validation_choice(affs)
    if choice is None:
        missing = [f"threshold {DEFAULT_THRESHOLD:g}" if not given["threshold"] else "",
                   f"scoring {DEFAULT_SCORING}" if not given["scoring"] else ""]
        said = f"{reason}; using the default {' and '.join(m for m in missing if m)}" if reason else None
        return thresholds or (DEFAULT_THRESHOLD,), scoring or DEFAULT_SCORING, said
    taken = []
    if scoring is None:
        scoring = str(choice["scoring"])
        taken.append(f"scoring {scoring}")
    if not thresholds and scoring == choice["scoring"]:
        thresholds = (float(choice["threshold"]),)
        taken.insert(0, f"threshold {thresholds[0]:g}")
    said = f"using {' and '.join(taken)} chosen by validation of {choice['checkpoint']}" if taken else None
    return thresholds or (DEFAULT_THRESHOLD,), scoring, said


def segment(
    affinities: str,
    output: str,
    *,
    thresholds: Sequence[float] | None = None,
    scoring: str | None = None,
    fragments: str = "waterz",
    decoder: str = "waterz",
    min_size: int = 0,
    block_shape: Sequence[int] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    allow_incomplete: bool = False,
    offsets: str | Sequence[Sequence[int]] | None = None,
    roi: str | None = None,
    roi_voxels: str | None = None,
    pyramid: bool = True,
) -> list[str]:
    """Segment the affinity volume ``affinities`` into ``output`` (one volume per threshold).

    Args:
        affinities: volume spec of ``(C, Z, Y, X)`` affinities with their offsets in their
            metadata (as ``psc-seg predict`` writes them); the channels of the offsets
            ``(-1, 0, 0), (0, -1, 0), (0, 0, -1)`` are segmented, wherever they are.
        output: volume spec; several thresholds write ``output/threshold_0.50`` etc.
        thresholds: higher = more merging (fewer, larger segments) for every decoder (see
            :func:`psc_seg.segment.segment_affinities`). None:
            the threshold validation chose for the checkpoint that predicted the affinities
            (waterz, with that validation's scoring; see :func:`validation_choice`), else 0.5.
        scoring: waterz scoring; None: the one validation chose (as for ``thresholds``),
            else ``hist_quant_50``.
        fragments, decoder, min_size: see :func:`psc_seg.segment.segment_affinities`.
        block_shape: ``(Z, Y, X)`` write-block shape for blockwise segmentation; None
            segments the whole volume in memory.
        workers, scheduler: blockwise only: a local dask cluster of that many workers, or
            the address of a running scheduler (default: in-process threads).
        resume: continue an interrupted run with the same settings (blockwise: finished blocks
            are skipped; whole-volume: an unfinished run is redone), keep a finished one.
        overwrite: replace existing outputs.
        progress: show progress bars.
        allow_incomplete: segment affinities psc-seg marked unfinished (a note says so);
            without it they are refused (:func:`~psc_seg.engine.resume.check_finished`).
        offsets: the offsets of affinities whose metadata has none (see
            :func:`affinity_offsets`).
        roi: segment only this region, ``"z0:z1,y0:y1,x0:x1"`` in the affinities' world units
            (e.g. nm), as if they were cropped to it; the outputs cover exactly it, placed
            where it lies (:func:`~psc_seg.engine.region.resolve_roi`).
        roi_voxels: the same in voxel indices; excludes ``roi``.
        pyramid: zarr outputs are OME-Zarr multiscale pyramids (ids downsampled by mode, see
            :mod:`psc_seg.io.pyramid`), part of their completeness; False: level 0 only.
            Every zarr output carries OME-Zarr ``image-label`` metadata; one written to
            ``IMAGE.zarr/labels/NAME``, where ``IMAGE.zarr`` is an OME-Zarr image (the raw),
            is listed in its ``labels`` group as the OME-Zarr labels convention says.

    Returns:
        The output specs written, in the order of ``thresholds``. Ctrl-C raises
        :class:`~psc_seg.errors.Interrupted` saying what is kept.
    """
    settings = SegmentSettings(affinities, thresholds=thresholds, scoring=scoring or DEFAULT_SCORING,
                               fragments=fragments, decoder=decoder, min_size=min_size, block_shape=block_shape)
    check_exclusive(resume=resume, overwrite=overwrite)
    check_exclusive(workers=workers is not None, scheduler=scheduler is not None)
    if settings.block_shape is None and (workers is not None or scheduler is not None):
        raise UserError("{workers} / {scheduler} need {block_shape} (blockwise segmentation)",
                        options=("workers", "scheduler", "block_shape"))
    check_executor(workers or 0, scheduler)  # every option is checked before any output is made
    affs = open_affinities(affinities)
    note(check_finished(affs, "affinities", allow_incomplete=allow_incomplete))
    region = resolve_roi(affs, roi=roi, roi_voxels=roi_voxels)
    if region is not None:
        affs = CroppedVolume(affs, region.begin, region.shape)
        settings = replace(settings, roi=(region.begin, region.shape))
    thresholds, scoring, chosen = _validated_defaults(affs, thresholds, scoring, decoder=decoder)
    settings = replace(settings, thresholds=thresholds, scoring=scoring, offsets=affinity_offsets(affs, offsets))
    note(nearest_neighbour_channels(settings.offsets)[1])
    note(chosen)
    outputs = output_specs(output, settings.thresholds)
    from psc_seg.io import check_apart

    check_apart(affinities, outputs)
    if settings.block_shape is not None:
        from psc_seg.segment.blockwise import segment_blockwise

        return segment_blockwise(
            affs, outputs, settings=settings, workers=workers, scheduler=scheduler, resume=resume,
            overwrite=overwrite, progress=progress, pyramid=pyramid,
        )
    return segment_whole(affs, outputs, settings=settings, resume=resume, overwrite=overwrite, progress=progress,
                         pyramid=pyramid)
