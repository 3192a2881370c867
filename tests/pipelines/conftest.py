"""Shared by the pipeline tests: a tiny affinity checkpoint, and a CLI run killed with SIGKILL
once its block record lists some finished blocks."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from psc_seg.models import build_model, save_checkpoint

OFFSETS = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]


def seeded_raw(spec: str, shape: tuple[int, int, int]) -> str:
    """A finished uint8 volume of seeded noise at 8 nm written to ``spec``; returns ``spec``."""
    from psc_seg.io import create_volume

    volume = create_volume(spec, shape=shape, dtype=np.uint8, voxel_size=(8, 8, 8), unit="nanometer")
    volume.write(None, np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    volume.finalize()
    return spec


def tiny_checkpoint(path: Path, **metadata) -> Path:
    """A seeded tiny valid UNet for affinities, trained (so its metadata says) on uint8 data at
    8 nm unless ``metadata`` says otherwise."""
    torch.manual_seed(0)
    model = build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[2, 2, 2]], padding="valid")
    return save_checkpoint(path, model, metadata={"task": {"kind": "affinities", "offsets": OFFSETS},
                                                  "normalize": {"kind": "uint8"}, "voxel_size": [8.0, 8.0, 8.0],
                                                  **metadata})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "unet.pt")


def kill_after_blocks(cmd: list[str], log: Path | Callable[[], int], blocks: int, *, env: dict[str, str],
                      timeout: float = 60) -> None:
    """Run ``cmd`` and SIGKILL it once its record ``log`` (a ``done.log``, or a function that
    counts the finished blocks of a record elsewhere, e.g. in S3) lists ``blocks`` finished
    blocks (within ``timeout`` seconds; it must not end before)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    count = log if callable(log) else lambda: log.read_text().count("\n") if log.exists() else 0
    while time.time() < deadline:
        if count() >= blocks:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture
def kill_after():
    return kill_after_blocks
