"""Shared by the reliability tests (faults and bad inputs, see RELIABILITY.md): the pipeline
tests' tiny checkpoint and SIGKILL helper, and a small uint8 EM-like input volume."""

from __future__ import annotations

import numpy as np
import pytest

from tests.pipelines.conftest import checkpoint, kill_after, kill_after_blocks, tiny_checkpoint

__all__ = ["checkpoint", "kill_after", "kill_after_blocks", "tiny_checkpoint"]


@pytest.fixture
def raw_zarr(tmp_path):
    """A seeded ``(32, 32, 32)`` uint8 volume at 8 nm: ``raw.zarr``."""
    from psc_seg.io import create_volume

    spec = str(tmp_path / "raw.zarr")
    volume = create_volume(spec, shape=(32, 32, 32), dtype=np.uint8, voxel_size=(8, 8, 8), unit="nanometer")
    volume.write(None, np.random.default_rng(0).integers(0, 256, (32, 32, 32), dtype=np.uint8))
    volume.finalize()
    return spec
