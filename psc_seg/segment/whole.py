"""Segmentation of affinities that fit in memory: arrays (:func:`segment_affinities`) and
volumes (:func:`segment_whole`, the twin of :func:`psc_seg.segment.blockwise.segment_blockwise`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from psc_seg.affinities import DEFAULT_OFFSETS, check_offsets, nearest_neighbour_channels
from psc_seg.segment.agglomerate import agglomerate
from psc_seg.segment.components import affinity_components, remove_small_segments
from psc_seg.segment.fragments import as_affinities, make_fragments
from psc_seg.segment.settings import DECODERS, SegmentSettings


def segment_affinities(
    affs: np.ndarray,
    *,
    thresholds: Sequence[float] = (0.5,),
    decoder: str = "waterz",
    fragments: str = "waterz",
    scoring: str = "hist_quant_50",
    min_size: int = 0,
    offsets: Sequence[Sequence[int]] = DEFAULT_OFFSETS,
) -> list[np.ndarray]:
    """Instance segmentations of ``(C, Z, Y, X)`` affinities, one per threshold.

    Args:
        affs: ``(C, Z, Y, X)`` affinities in [0, 1] (or uint8), one channel per offset.
        thresholds: boundary-score thresholds, with one meaning for every decoder: higher =
            more merging (fewer, larger segments). ``waterz`` merges regions while
            1 - affinity statistic (``scoring``) is below it; ``cc`` joins voxels whose edge has
            1 - affinity below it.
        decoder: ``waterz`` (fragments + agglomeration) or ``cc`` (connected components).
        fragments: ``waterz`` or ``distance`` (see :mod:`psc_seg.segment.fragments`).
        scoring: ``hist_quant_50``, ``hist_quant_75`` or ``mean`` (waterz decoder).
        min_size: segments of fewer voxels become background 0.
        offsets: one ``(dz, dy, dx)`` per channel; the channels of ``(-1, 0, 0), (0, -1, 0),
            (0, 0, -1)`` are segmented, wherever they are (others are left out).

    Returns:
        One ``(Z, Y, X)`` uint64 segmentation per threshold, in the order given.
    """
    offsets = check_offsets(offsets)
    if np.ndim(affs) != 4 or len(affs) != len(offsets):
        raise ValueError(f"affinities must be (C, Z, Y, X) with C = {len(offsets)} offsets, got {np.shape(affs)}")
    # once, not per threshold or per step
    affs = as_affinities(affs, nearest_neighbour_channels(offsets)[0])
    if decoder == "cc":
        segmentations = [affinity_components(affs, t) for t in thresholds]
    elif decoder == "waterz":
        # waterz's own watershed inside the agglomeration call is the "waterz" fragments
        # (same thresholds), without building the region graph twice
        initial = None if fragments == "waterz" else make_fragments(affs, method=fragments)
        segmentations = agglomerate(affs, thresholds, fragments=initial, scoring=scoring)
    else:
        raise ValueError(f"unknown decoder {decoder!r}; use one of {', '.join(DECODERS)}")
    if min_size > 1:
        segmentations = [remove_small_segments(s, min_size) for s in segmentations]
    return segmentations


def segment_whole(affs, outputs: Sequence[str], *, settings: SegmentSettings, resume: bool = False,
                  overwrite: bool = False, progress: bool = True, pyramid: bool = True) -> list[str]:
    """Segment the affinity volume ``affs`` in memory into ``outputs`` (one per threshold).

    Args:
        affs: an open ``(C, Z, Y, X)`` affinity :class:`psc_seg.io.Volume`.
        outputs: output specs, one per ``settings.thresholds``.
        settings: what to compute (``settings.block_shape`` is not used).
        resume: keep outputs finished with the same settings (an unfinished run is redone).
        overwrite: replace existing outputs, once the new segmentation is computed and written
            beside them (a failure before, e.g. NaNs in the affinities, leaves them as they were).
        progress: a progress bar over the three steps (read, decode, write).
        pyramid: zarr outputs are OME-Zarr pyramids, built (in this process) once level 0 is
            written (:func:`~psc_seg.segment.outputs.open_outputs`).

    Returns:
        ``outputs``. Ctrl-C raises :class:`~psc_seg.errors.Interrupted`: resumable once writing
        has started; before, nothing was written.
    """
    from tqdm.auto import tqdm

    from psc_seg.engine.pyramid import build_pyramids
    from psc_seg.engine.resume import existing_outputs
    from psc_seg.errors import Interrupted, UserError
    from psc_seg.segment.outputs import open_outputs

    outputs = list(outputs)
    hashed = {**settings.as_dict(), "affinities_shape": list(affs.shape)}

    def prepare():
        return open_outputs(affs, outputs, settings=settings, hashed=hashed, resume=resume, overwrite=overwrite,
                            pyramid=pyramid)

    # a finished run is kept without recomputing it; otherwise the outputs are created (beside
    # any old ones, which stay until the new ones are complete) only once the affinities have
    # been read and checked (NaNs) and segmented, so a failure leaves nothing to clear away
    prepared = prepare() if resume else None
    writing = False
    try:
        if prepared is not None and prepared.done:
            return outputs
        if prepared is None:  # refused before any work, but nothing touched yet
            existing_outputs(outputs, resume=resume, overwrite=overwrite)
        with tqdm(total=3, desc="segment", unit="step", disable=not progress) as bar:
            bar.set_postfix_str("reading affinities")
            data = _read_channels(affs, settings.channels)
            if np.issubdtype(data.dtype, np.floating) and np.isnan(data).any():
                raise UserError(f"affinities {settings.affinities!r} contain NaNs; fix the prediction first")
            bar.update()
            bar.set_postfix_str(f"{settings.decoder} decoding")
            segmentations = segment_affinities(
                data, thresholds=settings.thresholds, decoder=settings.decoder, fragments=settings.fragments,
                scoring=settings.scoring, min_size=settings.min_size,  # data: the channels of DEFAULT_OFFSETS
            )
            bar.update()
            bar.set_postfix_str("writing")
            writing = True
            prepared = prepared or prepare()
            for spec, labels in zip(outputs, segmentations):
                prepared.volumes[spec].write((slice(None),) * 3, labels)
            build_pyramids(prepared.volumes.values(), progress=False)
            prepared.finish()
            bar.update()
    except KeyboardInterrupt:
        if not writing:
            raise Interrupted("stopped before writing; nothing was written and existing outputs are as they were",
                              resumable=False) from None
        where = prepared.written_to() if prepared is not None else ", ".join(outputs)
        raise Interrupted(f"stopped while writing {where}, which the run has not finished") from None
    finally:
        if prepared is not None:
            prepared.close()
    return outputs


def _read_channels(affs, channels: Sequence[int]) -> np.ndarray:
    """``(len(channels), Z, Y, X)``: those channels of the volume ``affs``, in that order,
    reading only the range of channels that holds them."""
    low, high = min(channels), max(channels) + 1
    data = affs.read((slice(low, high), slice(None), slice(None), slice(None)))
    return data[[c - low for c in channels]] if list(channels) != list(range(low, high)) else data
