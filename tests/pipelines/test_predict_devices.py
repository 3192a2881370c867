"""predict's compute paths: the channels-last CPU batch, the CUDA pipeline
(pinned memory, copy stream, autocast; skipped without a GPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from psc_seg.io import create_volume, open_volume
from psc_seg.models import build_model, save_checkpoint
from psc_seg.nn import fast_paths
from psc_seg.pipelines.predict import predict

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _setup(root: Path, shape=(24, 28, 30)) -> tuple[str, str, np.ndarray]:
    torch.manual_seed(1)
    model = build_model("unet", num_fmaps=3, fmap_inc_factor=2, downsample_factors=[[2, 2, 2]], conv="psc(2,2)")
    with torch.no_grad():  # larger weights: outputs that vary
        for p in model.parameters():
            p.mul_(2.0)
    ckpt = root / "unet.pt"
    save_checkpoint(ckpt, model, metadata={"normalize": {"kind": "uint8"}})
    data = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    vol = create_volume(root / "raw.zarr", shape=shape, dtype="uint8")
    vol.write(None, data)
    vol.finalize()
    return str(ckpt), str(root / "raw.zarr"), data


def test_cpu_fast_path_equals_the_plain_network_and_batches(tmp_path):
    """Channels-last + psc_seg.nn.fast inside predict give the plain NCDHW network's output,
    with one block per task and with four blocks per forward pass."""
    ckpt, raw, _ = _setup(tmp_path)
    with fast_paths(False):
        predict(ckpt, raw, str(tmp_path / "plain.zarr"), block_shape=(8, 12, 12), progress=False)
    predict(ckpt, raw, str(tmp_path / "fast.zarr"), block_shape=(8, 12, 12), progress=False)
    predict(ckpt, raw, str(tmp_path / "batched.zarr"), block_shape=(8, 12, 12), batch_size=4, progress=False)
    plain = open_volume(tmp_path / "plain.zarr").read()
    assert plain.shape == (3, 24, 28, 30) and 0.01 < plain.std()
    np.testing.assert_allclose(open_volume(tmp_path / "fast.zarr").read(), plain, atol=1e-5)
    np.testing.assert_allclose(open_volume(tmp_path / "batched.zarr").read(), plain, atol=1e-5)


@cuda
@pytest.mark.parametrize("precision", ["float32", "auto"])
def test_cuda_pipeline_matches_cpu(tmp_path, precision):
    ckpt, raw, _ = _setup(tmp_path)
    predict(ckpt, raw, str(tmp_path / "cpu.zarr"), block_shape=(8, 12, 12), progress=False)
    predict(ckpt, raw, str(tmp_path / "gpu.zarr"), block_shape=(8, 12, 12), batch_size=3, device="cuda",
            precision=precision, progress=False)
    cpu, gpu = open_volume(tmp_path / "cpu.zarr").read(), open_volume(tmp_path / "gpu.zarr").read()
    # float32 on the GPU may use TF32; bfloat16 keeps about 3 significant digits
    np.testing.assert_allclose(gpu, cpu, atol=2e-3 if precision == "float32" else 3e-2)
