"""Segment's defaults follow what validation chose for the checkpoint that predicted the
affinities (issue 12, case 4): the threshold and scoring stored with the checkpoint."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.io import open_volume
from psc_seg.models import build_model, save_checkpoint
from psc_seg.pipelines.predict import predict
from psc_seg.pipelines.segment import segment

TASK = {"kind": "affinities", "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]}


@pytest.fixture
def predicted(tmp_path):
    """Affinities predicted by a checkpoint whose validation chose threshold 0.7, hist_quant_75."""
    torch.manual_seed(0)
    model = build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[2, 2, 2]], padding="valid")
    checkpoint = save_checkpoint(tmp_path / "best.pt", model, metadata={
        "task": TASK, "normalize": {"kind": "uint8"}, "segment": {"threshold": 0.7, "scoring": "hist_quant_75"}})
    np.save(tmp_path / "raw.npy", np.random.default_rng(0).integers(0, 256, (24, 28, 32), dtype=np.uint8))
    affs = str(tmp_path / "affs.zarr")
    predict(checkpoint, str(tmp_path / "raw.npy"), affs, block_shape=(12, 12, 12), progress=False)
    return checkpoint, affs


def _config(spec):
    return open_volume(spec).attrs["psc_seg"]["provenance"]["config"]


def test_segment_takes_the_threshold_and_scoring_validation_chose(tmp_path, predicted, notes):
    checkpoint, affs = predicted
    (out,) = segment(affs, str(tmp_path / "seg.zarr"), progress=False)
    config = _config(out)
    assert (config["thresholds"], config["threshold"], config["scoring"]) == ([0.7], 0.7, "hist_quant_75")
    assert notes.take() == [f"using threshold 0.7 and scoring hist_quant_75 chosen by validation of {checkpoint}"]
    # given values win; a scoring other than validation's keeps the default threshold
    (out,) = segment(affs, str(tmp_path / "given.zarr"), thresholds=[0.4], scoring="mean", progress=False)
    assert (_config(out)["thresholds"], _config(out)["scoring"], notes.take()) == ([0.4], "mean", [])
    (out,) = segment(affs, str(tmp_path / "t.zarr"), thresholds=[0.4], progress=False)
    assert (_config(out)["thresholds"], _config(out)["scoring"]) == ([0.4], "hist_quant_75")
    (out,) = segment(affs, str(tmp_path / "s.zarr"), scoring="mean", progress=False)
    assert (_config(out)["thresholds"], _config(out)["scoring"]) == ([0.5], "mean")
    # cc was not validated: its defaults stay
    (out,) = segment(affs, str(tmp_path / "cc.zarr"), decoder="cc", progress=False)
    assert _config(out)["thresholds"] == [0.5]


def test_segment_cli_says_so_and_falls_back_when_the_checkpoint_is_gone(tmp_path, predicted):
    checkpoint, affs = predicted
    runner = CliRunner()
    result = runner.invoke(app, ["segment", affs, str(tmp_path / "seg.zarr"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"note: using threshold 0.7 and scoring hist_quant_75 chosen by validation of {checkpoint}" in result.output
    checkpoint.unlink()
    result = runner.invoke(app, ["segment", affs, str(tmp_path / "gone.zarr"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "note: " in result.output and "threshold 0.5" in result.output and "hist_quant_50" in result.output
    config = _config(str(tmp_path / "gone.zarr"))
    assert (config["thresholds"], config["scoring"]) == ([0.5], "hist_quant_50")
