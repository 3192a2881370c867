"""Blockwise segmentation of affinities larger than memory (the scheme of lsd / volara).

Four steps over the blocks of :func:`psc_seg.engine.block_grid`. A step is data (a
:class:`Step`, after daisy's ``Task``): its blocks, a process function, a done check (its
:class:`psc_seg.engine.BlockRecord`, or a function for the global step) and the steps upstream
of it; one loop (:func:`run_steps`) runs them in order with
:func:`psc_seg.engine.run_blockwise` (serial, ``--workers N`` or ``--scheduler``):

1. **fragments**: per block, fragments of the affinities in the read ROI (write ROI grown by
   ``context``), cropped to the write ROI and given globally unique ids
   ``block_id * stride + k`` (``stride`` = voxels per block + 1); their ids and sizes are kept;
2. **edges**: per block, with context, the waterz region graph of the fragments and the
   score at which the agglomeration first joins each touching pair ``(u, v)``, ``u < v``;
   the pair is stored by the block that owns ``u`` only (``u // stride``), so once.
   For the ``cc`` decoder the fragments are the connected components of the block (with
   context) at the threshold and the edges are the links it joins across the block faces;
3. **global**: per threshold, connected components of the edges scoring below the threshold
   (scipy.sparse.csgraph) give a fragment -> segment table; ``min_size`` drops small segments;
4. **relabel**: per block, fragments -> segments into each output.

Every read of the affinities keeps the nearest-neighbour channels of ``settings.offsets``
(``settings.channels``), in waterz order. Reads with context go through a
:class:`~psc_seg.engine.ChunkCache` (a block
grown by its context touches up to 27 storage chunks; neighbouring blocks share them), and
``--workers N`` starts one local cluster for all steps.

Outputs, resume and overwrite follow :func:`psc_seg.engine.prepare_outputs` (the run's
settings are kept in the first output's record). Bookkeeping of the steps (fragments, edges,
tables, step records) lives in a hidden folder beside the first output
(``.seg.zarr.psc-seg-segment``) and is removed once every output is finalized.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from psc_seg.engine import BlockRecord, ChunkCache, Roi, block_grid, run_blockwise
from psc_seg.engine.executor import shared_cluster
from psc_seg.engine.pyramid import build_pyramids
from psc_seg.errors import Interrupted, UserError
from psc_seg.files import atomic_path, fixable_writes
from psc_seg.segment.agglomerate import scored_edges
from psc_seg.segment.components import affinity_components, joins, merge_fragments
from psc_seg.segment.fragments import as_affinities, make_fragments
from psc_seg.segment.relabel import unique_inverse, unique_pairs

if TYPE_CHECKING:
    from psc_seg.engine import Block
    from psc_seg.segment.settings import SegmentSettings

DEFAULT_CONTEXT = 8


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write atomically: a killed task never leaves a readable half file."""
    with atomic_path(path, suffix=".npz") as tmp:  # np.savez appends .npz to other names
        np.savez(tmp, **arrays)


def _global_ids(fragments: np.ndarray, block_id: int, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fragments renumbered ``block_id * stride + 1..n`` (0 stays 0), their ids and sizes."""
    ids, inverse, sizes = unique_inverse(fragments)
    has_zero = bool(ids.size) and ids[0] == 0
    n = ids.size - has_zero
    base = np.uint64(block_id) * np.uint64(stride)
    new_ids = base + np.arange(1, n + 1, dtype=np.uint64)
    table = np.concatenate((np.zeros(1, np.uint64), new_ids)) if has_zero else new_ids
    return table[inverse], new_ids, sizes[int(has_zero):]


def _linked_pairs(affs: np.ndarray, fragments: np.ndarray, threshold: float, starts: Sequence[int]) -> np.ndarray:
    """``(E, 2)`` sorted pairs of different fragments joined by an edge at ``threshold``
    (:func:`~psc_seg.segment.components.joins`).

    ``affs`` / ``fragments`` cover the write ROI grown by ``starts[a]`` (0 or 1) voxels on the
    low side of each axis; only edges from a voxel of the write ROI back to its neighbour are
    looked at, so each edge of the volume is seen by exactly one block.
    """
    found = []
    for axis in range(3):
        here = [slice(s, None) for s in starts]
        there = list(here)
        if starts[axis] == 0:
            here[axis] = slice(1, None)
        there[axis] = slice(here[axis].start - 1, fragments.shape[axis] - 1)
        a, b = fragments[tuple(here)], fragments[tuple(there)]
        joined = joins(affs[axis][tuple(here)], threshold) & (a != b) & (a != 0) & (b != 0)
        found.append(np.stack([a[joined], b[joined]], axis=1))
    pairs = np.sort(np.concatenate(found), axis=1).astype(np.uint64)
    return unique_pairs(pairs)


class _FragmentStep:
    """Step 1, picklable for dask workers."""

    def __init__(self, affs, fragments_volume, work: Path, *, channels: Sequence[int], method: str, decoder: str,
                 threshold: float, stride: int, total: Roi) -> None:
        self.affs, self.fragments, self.channels = ChunkCache(affs), fragments_volume, tuple(channels)
        self.work, self.method, self.decoder, self.threshold = work, method, decoder, threshold
        self.stride, self.total = stride, total

    def __call__(self, block) -> None:
        read = block.read_roi.intersect(self.total)
        affs = as_affinities(self.affs.read(read), self.channels)
        if np.isnan(affs).any():
            raise UserError(f"affinities {self.affs.spec!r} contain NaNs near {read}; fix the prediction first")
        if self.decoder == "cc":
            # context only joins voxels that a path joins anyway, and labels the voxels of
            # the write ROI whose only link leaves it
            fragments = affinity_components(affs, self.threshold)
        else:
            fragments = make_fragments(affs, method=self.method)
        fragments = fragments[block.write_roi.relative_to(read).to_slices()]
        fragments, ids, sizes = _global_ids(fragments, block.block_id, self.stride)
        self.fragments.write(block.write_roi.to_slices(), fragments)
        _save_npz(self.work / f"fragments_{block.block_id}.npz", ids=ids, sizes=sizes)


class _EdgeStep:
    """Step 2, picklable for dask workers."""

    def __init__(self, affs, fragments_volume, work: Path, *, channels: Sequence[int], decoder: str, scoring: str,
                 max_threshold: float, stride: int, total: Roi) -> None:
        self.affs, self.fragments, self.work = ChunkCache(affs), ChunkCache(fragments_volume), work
        self.channels = tuple(channels)
        self.decoder, self.scoring, self.max_threshold = decoder, scoring, max_threshold
        self.stride, self.total = stride, total

    def __call__(self, block) -> None:
        if self.decoder == "cc":
            starts = tuple(1 if b > t else 0 for b, t in zip(block.write_roi.begin, self.total.begin))
            region = block.write_roi.grow(starts, 0).intersect(self.total)
            affs = as_affinities(self.affs.read(region), self.channels)
            uv = _linked_pairs(affs, self.fragments.read(region), self.max_threshold, starts)
            scores = np.full(len(uv), -np.inf)  # linked at this threshold: below any threshold, 0 included
        else:
            read = block.read_roi.intersect(self.total)
            fragments = self.fragments.read(read)
            uv, scores = scored_edges(as_affinities(self.affs.read(read), self.channels), fragments,
                                      max_threshold=self.max_threshold, scoring=self.scoring)
            owned = uv[:, 0] // np.uint64(self.stride) == np.uint64(block.block_id)
            uv, scores = uv[owned], scores[owned]
        _save_npz(self.work / f"edges_{block.block_id}.npz", uv=uv.astype(np.uint64), scores=scores)


class _RelabelStep:
    """Step 4, picklable for dask workers: fragments -> segments, into every output."""

    def __init__(self, fragments_volume, outputs: list, tables: list[Path]) -> None:
        self.fragments, self.outputs, self.tables = fragments_volume, outputs, tables
        self._loaded: list | None = None

    def __call__(self, block) -> None:
        if self._loaded is None:  # once per worker
            self._loaded = [(t["ids"], t["segments"]) for t in map(np.load, self.tables)]
        fragments = self.fragments.read(block.write_roi.to_slices())
        # look up each fragment of the block once, not each voxel
        present, inverse, _ = unique_inverse(fragments)
        for out, (ids, segments) in zip(self.outputs, self._loaded):
            segment_of = np.zeros(present.size, dtype=np.uint64)
            found = present != 0
            segment_of[found] = segments[np.searchsorted(ids, present[found])]
            out.write(block.write_roi.to_slices(), segment_of[inverse])


def _record(directory: Path, settings: dict[str, Any]) -> BlockRecord:
    """The step's record: the existing one if made for these settings, else a new one."""
    record = BlockRecord(directory)
    return record if record.matches(settings) else BlockRecord.create(directory, settings)


def _segment_tables(work: Path, n_blocks: int, thresholds: Sequence[float], min_size: int,
                    paths: Sequence[Path]) -> None:
    """Step 3: one fragment -> segment table per threshold into ``paths`` (``.npz`` with ids, segments)."""
    parts = [np.load(work / f"fragments_{b}.npz") for b in range(n_blocks)]
    ids = np.concatenate([p["ids"] for p in parts]).astype(np.uint64)
    sizes = np.concatenate([p["sizes"] for p in parts])
    order = np.argsort(ids)
    ids, sizes = ids[order], sizes[order]
    edges = [np.load(work / f"edges_{b}.npz") for b in range(n_blocks)]
    uv = np.concatenate([e["uv"].reshape(-1, 2) for e in edges]).astype(np.uint64)
    scores = np.concatenate([e["scores"] for e in edges])
    for path, threshold in zip(paths, thresholds):
        segments = merge_fragments(ids, uv, scores, threshold)
        if min_size > 1:
            voxels = np.bincount(segments.astype(np.int64), weights=sizes)
            segments = np.where(voxels[segments.astype(np.int64)] >= min_size, segments, 0).astype(np.uint64)
        _save_npz(path, ids=ids, segments=segments)


@dataclass(frozen=True)
class Step:
    """One step of a blockwise run, as data.

    Attributes:
        name: names the step's record (``<name>.record``) and its progress bar.
        process: ``process(block)`` for each block of ``blocks`` (picklable for dask workers),
            or ``process()`` once when ``blocks`` is None (a global step).
        blocks: the blocks the step runs over; None for a global step.
        done: a global step's "finished?" check (a blockwise step's is its record).
        upstream: names of the steps that must have run before this one.
    """

    name: str
    process: Callable[..., Any]
    blocks: Sequence[Block] | None = None
    done: Callable[[], bool] | None = None
    upstream: tuple[str, ...] = ()


def run_steps(steps: Sequence[Step], *, work: Path, settings: dict[str, Any], label: str = "",
              run: dict[str, Any]) -> None:
    """Run ``steps`` in order: blockwise ones through :func:`run_blockwise`, each resumable
    through its record ``work/<name>.record`` (kept while made for ``settings``), global
    ones unless their ``done`` says so. Progress bars read ``"<i>/<n> <name><label>"``. Ctrl-C
    raises :class:`~psc_seg.errors.Interrupted` naming the step and the blocks it finished.

    ``run``: ``run_blockwise``'s ``workers``, ``scheduler`` and ``progress``. A full disk or
    a folder made unwritable under ``work`` is one line saying to resume.
    """
    with fixable_writes(f"write the work files in {str(work)!r}", then="rerun with {resume}: what was written is kept",
                        options=("resume",)):
        _run_steps(steps, work=work, settings=settings, label=label, run=run)


def _run_steps(steps: Sequence[Step], *, work: Path, settings: dict[str, Any], label: str,
               run: dict[str, Any]) -> None:
    seen: set[str] = set()
    for number, step in enumerate(steps, 1):
        if not seen.issuperset(step.upstream):
            raise ValueError(f"step {step.name!r} runs before its upstream {sorted(set(step.upstream) - seen)}")
        seen.add(step.name)
        where = f"step {number}/{len(steps)} ({step.name}{label})"
        if step.blocks is None:
            if step.done is None or not step.done():
                try:
                    step.process()
                except KeyboardInterrupt:
                    raise Interrupted(f"stopped in {where}; the steps before it are kept") from None
            continue
        record = _record(work / f"{step.name}.record", {**settings, "step": step.name})
        try:
            run_blockwise(step.blocks, step.process, record=record, desc=f"{number}/{len(steps)} {step.name}{label}",
                          **run)
        except KeyboardInterrupt:
            raise Interrupted(f"stopped in {where} with {len(record.done_ids())} of {len(step.blocks)} blocks done; "
                              "they and the steps before are kept") from None


def _pass_steps(affs, volumes: Sequence, work: Path, *, settings: SegmentSettings, group: Sequence[float],
                prefix: str, blocks: Sequence[Block], stride: int, total: Roi) -> list[Step]:
    """The four steps of one pass over ``blocks``: thresholds ``group`` into ``volumes``."""
    fragments = _fragments_volume(work, total, settings.block_shape)
    tables = [work / f"{prefix}segments_{i}.npz" for i in range(len(group))]
    return [
        Step("fragments", _FragmentStep(affs, fragments, work, channels=settings.channels, method=settings.fragments,
                                        decoder=settings.decoder, threshold=group[0], stride=stride, total=total),
             blocks=blocks),
        Step("edges", _EdgeStep(affs, fragments, work, channels=settings.channels, decoder=settings.decoder,
                                scoring=settings.scoring, max_threshold=max(group), stride=stride, total=total),
             blocks=blocks, upstream=("fragments",)),
        Step("global", functools.partial(_segment_tables, work, len(blocks), group, settings.min_size, tables),
             done=lambda: all(p.exists() for p in tables), upstream=("edges",)),
        Step("relabel", _RelabelStep(fragments, list(volumes), tables), blocks=blocks, upstream=("global",)),
    ]


def segment_blockwise(
    affs,
    outputs: Sequence[str],
    *,
    settings: SegmentSettings,
    workers: int | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    context: int = DEFAULT_CONTEXT,
    pyramid: bool = True,
) -> list[str]:
    """Segment the affinity volume ``affs`` block by block into ``outputs`` (one per threshold).

    Args:
        affs: an open ``(C, Z, Y, X)`` affinity :class:`psc_seg.io.Volume`.
        outputs: output specs, one per ``settings.thresholds``.
        settings: what to compute; ``settings.block_shape`` is the write ROI ``(Z, Y, X)``.
        workers, scheduler: where blocks run (see :func:`psc_seg.engine.run_blockwise`).
        resume: continue an interrupted run with the same settings.
        overwrite: replace existing outputs and bookkeeping (the new outputs are written beside
            the old ones and take their place once complete).
        progress: progress bars, one per step.
        context: voxels added on each side of a block for fragments and region graphs.
        pyramid: zarr outputs are OME-Zarr pyramids, built blockwise where the blocks ran once
            level 0 is written (:func:`~psc_seg.segment.outputs.open_outputs`).

    Returns:
        ``outputs``.
    """
    from psc_seg.segment.outputs import open_outputs

    config = settings.as_dict()
    block_shape = settings.block_shape
    if block_shape is None:
        raise ValueError("segment_blockwise needs settings.block_shape")
    total = Roi((0, 0, 0), affs.spatial_shape)
    hashed = {**config, "context": context, "affinities_shape": list(affs.shape)}
    _work_dir(outputs[0])  # a remote output: refused before anything is made
    with open_outputs(affs, outputs, settings=settings, hashed=hashed, chunks=block_shape, resume=resume,
                      overwrite=overwrite, pyramid=pyramid) as prepared:
        if not prepared.done:
            _run(affs, prepared, outputs, settings=settings, hashed=hashed, total=total, context=context,
                 workers=workers, scheduler=scheduler, progress=progress)
    return list(outputs)


def _run(affs, prepared, outputs: Sequence[str], *, settings: SegmentSettings, hashed: dict[str, Any], total: Roi,
         context: int, workers: int | None, scheduler: str | None, progress: bool) -> None:
    """Every step of a blockwise run into the ``prepared`` outputs, then their completion."""
    thresholds = list(settings.thresholds)
    block_shape = settings.block_shape
    volumes = [prepared.volumes[spec] for spec in outputs]
    work = _work_dir(outputs[0])
    if not prepared.resumed:  # a new run: no step records of an old one
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    blocks = block_grid(total, write_shape=block_shape, context=context)
    stride = int(np.prod(block_shape)) + 1
    with shared_cluster(workers, scheduler) as where:  # every step, and the pyramid
        run = {**where, "progress": progress}
        # cc: fragments and edges depend on the threshold, so each threshold is one pass
        passes = [[t] for t in thresholds] if settings.decoder == "cc" else [thresholds]
        for index, group in enumerate(passes):
            prefix = f"pass{index}_"
            step_work = work / prefix.rstrip("_")
            step_work.mkdir(exist_ok=True)
            targets = [volumes[thresholds.index(t)] for t in group]
            steps = _pass_steps(affs, targets, step_work, settings=settings, group=group, prefix=prefix,
                                blocks=blocks, stride=stride, total=total)
            try:
                run_steps(steps, work=step_work, settings={**hashed, "pass": group}, label=_label(group, passes),
                          run=run)
            except Interrupted as exc:
                raise Interrupted(f"{prepared.written_to()} unfinished, {exc.kept}") from None
        try:
            build_pyramids(volumes, **run)
        except KeyboardInterrupt:
            raise Interrupted(f"{prepared.written_to()} unfinished: level 0 is written, its pyramid is "
                              "not") from None
    prepared.finish()
    shutil.rmtree(work, ignore_errors=True)


def _work_dir(output: str) -> Path:
    """The bookkeeping folder of a run: hidden, beside the output's file or container.
    UserError for an output in an object store, where this folder (a zarr of fragments, edge
    tables) is not kept yet."""
    from psc_seg.io import parse_spec, sidecar_beside

    spec = parse_spec(output)
    if spec.url:
        raise UserError(f"blockwise segment keeps its fragments and edge tables in a folder beside the output, which "
                        f"cannot be in an object store yet; write {output!r} to a local path and copy it, or segment "
                        "in memory (without --block-shape)")
    return sidecar_beside(spec, "segment")


def _label(group: Sequence[float], passes: Sequence) -> str:
    return f" (threshold {group[0]:.2f})" if len(passes) > 1 else ""


def _fragments_volume(work: Path, total: Roi, block_shape: Sequence[int]):
    from psc_seg.io import create_volume, open_volume

    path = work / "fragments.zarr"
    if path.exists():
        volume = open_volume(str(path), mode="r+")
    else:
        volume = create_volume(str(path), shape=total.shape, dtype=np.uint64, chunks=block_shape)
    volume.resumable = True  # a rerun with resume continues it
    return volume
