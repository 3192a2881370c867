"""Shared by the reliability tests (faults and bad inputs, see RELIABILITY.md): the pipeline
tests' tiny checkpoint and SIGKILL helper, and a small uint8 EM-like input volume."""

from __future__ import annotations

import pytest

from tests.pipelines.conftest import checkpoint, kill_after, kill_after_blocks, seeded_raw, tiny_checkpoint

__all__ = ["checkpoint", "kill_after", "kill_after_blocks", "tiny_checkpoint"]


@pytest.fixture
def raw_zarr(tmp_path):
    """A seeded ``(32, 32, 32)`` uint8 volume at 8 nm: ``raw.zarr``."""
    return seeded_raw(str(tmp_path / "raw.zarr"), (32, 32, 32))
