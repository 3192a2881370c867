"""The blockwise engine: ROIs, block grids with context, mirrored reads, an executor over
dask.distributed, and resume records. It knows ROIs, not file formats: volumes come from
:mod:`psc_seg.io` and are only read / written through ``read`` / ``write``.

See :func:`run_blockwise` (in :mod:`psc_seg.engine.executor`) for a complete example.
Blockwise inference of a network (:mod:`psc_seg.engine.inference`: geometry, the per-block
predictor, the prediction writer) is imported from its own module, which loads torch.
"""

from psc_seg.engine.blocks import Block, block_grid, grid_shape, iter_batches, mirror_indices, read_mirrored
from psc_seg.engine.chunk_cache import ChunkCache
from psc_seg.engine.executor import RunStats, run_blockwise
from psc_seg.engine.resume import BlockRecord, PreparedOutputs, file_hash, prepare_outputs, settings_hash
from psc_seg.engine.roi import Roi

__all__ = [
    "Block", "BlockRecord", "ChunkCache", "PreparedOutputs", "Roi", "RunStats", "block_grid", "file_hash", "grid_shape",
    "iter_batches", "mirror_indices", "prepare_outputs", "read_mirrored", "run_blockwise", "settings_hash",
]
