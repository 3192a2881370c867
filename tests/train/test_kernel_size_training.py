"""A UNet with per-level kernel sizes trains, resumes and rebuilds from its checkpoint."""

from __future__ import annotations

import torch

from psc_seg.models import load_checkpoint
from psc_seg.pipelines.train import train

from .conftest import em_config


def test_per_level_kernel_sizes_train_resume_and_rebuild(tmp_path, em_volume):
    config = em_config(em_volume, iterations=2, validate_every=100, patch_shape=[4, 8, 8])
    config["model"]["kernel_size"] = [[1, 3, 3], 3]  # flat on top, 3^3 at the bottom
    config["data"]["validation"] = []
    run = tmp_path / "run"
    train(config, out=run, quiet=True)
    assert train(config, out=run, resume=True, iterations=3, quiet=True)["iteration"] == 3
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    model = checkpoint.model
    assert model.kernel_sizes == ((1, 3, 3), (3, 3, 3)) and checkpoint.kwargs["kernel_size"] == [[1, 3, 3], 3]
    assert checkpoint.metadata["input_shape"] == list(model.valid_input_shape((4, 8, 8)))
    with torch.no_grad():
        out = model(torch.rand(1, 1, *checkpoint.metadata["input_shape"]))
    assert out.shape == (1, 3, 4, 8, 8)
