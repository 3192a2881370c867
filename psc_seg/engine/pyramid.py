"""``build_pyramids``: fill the OME-Zarr pyramid levels of finished outputs, block by block.

Run once level 0 of every output is written, before the outputs are marked complete: an
output is complete only with its last level. Each level is computed from the one above it
(:class:`~psc_seg.io.pyramid.PyramidStep`) over blocks of its own storage chunks, so no two
tasks write one chunk, in this process or on dask workers like the level-0 blocks. Each level
has its own block record (``Volume.sidecar_dir("pyramid-<level>")``): a run killed while
building the pyramid continues (``resume``) where it stopped.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from psc_seg.engine.blocks import Block, block_grid
from psc_seg.engine.executor import run_blockwise, shared_cluster
from psc_seg.engine.resume import BlockRecord
from psc_seg.engine.roi import Roi
from psc_seg.files import fixable_writes
from psc_seg.io.pyramid import PyramidStep, pyramid_steps


def _level_block(step: PyramidStep, block: Block) -> None:
    step.compute(block.write_roi.to_slices())


def build_pyramids(volumes: Iterable, *, workers: int = 0, scheduler: str | None = None,
                   progress: bool = True) -> int:
    """Fill the pyramid levels of the zarr ``volumes`` (outputs open for writing whose level 0
    is written; others have none), level after level; finished blocks of an earlier run of
    the same levels are kept. ``workers`` / ``scheduler`` as for
    :func:`~psc_seg.engine.run_blockwise` (one local cluster serves every level, started only
    where a level has blocks to compute). Returns the number of blocks computed."""
    jobs = []
    for volume in volumes:
        for step in pyramid_steps(volume):
            blocks = block_grid(Roi((0, 0, 0), step.shape), write_shape=step.chunks)
            settings = {"level": step.level, "factors": list(step.factors), "method": step.method,
                        "shape": list(step.shape), "chunks": list(step.chunks)}
            record = BlockRecord(volume.sidecar_dir(f"pyramid-{step.level}"))
            if not record.matches(settings):
                with fixable_writes(f"write the pyramid record of output {volume.spec!r}",
                                    then="rerun with {resume}: what was written is kept", options=("resume",)):
                    record = BlockRecord.create(record.directory, settings)
            jobs.append((step, blocks, record))
    pending = any(len(record.done_ids()) < len(blocks) for _, blocks, record in jobs)
    computed = 0
    with shared_cluster(workers if pending else 0, scheduler) as where:
        for step, blocks, record in jobs:
            stats = run_blockwise(blocks, partial(_level_block, step), record=record, progress=progress,
                                  desc=f"pyramid level {step.level}", **where)
            computed += stats.computed
    return computed
