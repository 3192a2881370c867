"""Predict checks its input against what the checkpoint says of the training data: value range
against the normalisation, voxel size, channels; each refusal names both sides and the override."""

import numpy as np
import pytest
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.errors import UserError
from psc_seg.io import create_volume, open_volume, volume_exists
from psc_seg.pipelines.predict import predict

from .conftest import tiny_checkpoint

def _volume(path, data, voxel_size=(8, 8, 8), unit="nanometer"):
    vol = create_volume(path, shape=data.shape, dtype=data.dtype, voxel_size=voxel_size,
                        unit=unit if voxel_size else None)
    vol.write(None, data)
    vol.finalize()
    return str(path)


def _raw(dtype=np.uint8, high=256, shape=(16, 16, 16)):
    return np.random.default_rng(0).integers(0, high, size=shape).astype(dtype)


def test_uint16_input_to_a_uint8_network_is_refused_unless_normalized_otherwise(tmp_path, checkpoint, notes):
    raw = _volume(tmp_path / "em16.zarr", _raw(np.uint16, 51000))
    out = str(tmp_path / "affs.zarr")
    with pytest.raises(UserError, match=r"uint16 values \d+ to 5\d+, but the network was trained on uint8.*"
                                        r"normalize zscore\|percentile"):
        predict(checkpoint, raw, out, progress=False)
    assert not volume_exists(out)  # refused before any output exists
    predict(checkpoint, raw, out, normalize="zscore", progress=False)
    assert any("as zscore (given)" in note for note in notes.take())
    stored = open_volume(out).attrs["psc_seg"]["provenance"]["config"]["normalize"]
    assert stored["kind"] == "zscore" and stored["std"] > 0


def test_float_input_scaled_to_one_is_refused_for_a_uint8_network(tmp_path, checkpoint):
    raw = _volume(tmp_path / "scaled.zarr", _raw(np.float32) / 255)
    with pytest.raises(UserError, match=r"already scaled to \[0, 1\].*near 0"):
        predict(checkpoint, raw, str(tmp_path / "affs.zarr"), progress=False)


def test_voxel_size_far_from_training_is_refused_unless_ignored(tmp_path, checkpoint, notes):
    raw = _volume(tmp_path / "aniso.zarr", _raw(), voxel_size=(40, 4, 4))
    with pytest.raises(UserError, match=r"voxel size 40x4x4 \(z, y, x\) but the network was trained at 8x8x8.*"
                                        r"ignore_voxel_size"):
        predict(checkpoint, raw, str(tmp_path / "a.zarr"), progress=False)
    predict(checkpoint, raw, str(tmp_path / "a.zarr"), ignore_voxel_size=True, progress=False)
    assert notes.take() == ["voxel-size check skipped (ignore_voxel_size)"]
    close = _volume(tmp_path / "close.zarr", _raw(), voxel_size=(9, 8, 7))  # within 25 %: no word
    predict(checkpoint, close, str(tmp_path / "c.zarr"), progress=False)
    assert notes.take() == []
    unknown = _volume(tmp_path / "unknown.zarr", _raw(), voxel_size=None)
    predict(checkpoint, unknown, str(tmp_path / "u.zarr"), progress=False)
    (note,) = notes.take()
    assert "has no voxel size" in note and "skipped" in note


def test_channel_count_is_checked_before_any_output(tmp_path, checkpoint):
    raw = _volume(tmp_path / "two.zarr", np.stack([_raw(), _raw()]))
    out = str(tmp_path / "affs.zarr")
    with pytest.raises(UserError, match="has 2 channel.* model expects 1"):
        predict(checkpoint, raw, out, progress=False)
    assert not volume_exists(out)


def test_cli_refusal_is_one_line_and_notes_go_to_stderr(tmp_path, checkpoint):
    runner = CliRunner()
    raw = _volume(tmp_path / "aniso.zarr", _raw(), voxel_size=(40, 4, 4))
    result = runner.invoke(app, ["predict", str(checkpoint), raw, str(tmp_path / "a.zarr"), "-q"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error:") and "--ignore-voxel-size" in line
    result = runner.invoke(app, ["predict", str(checkpoint), raw, str(tmp_path / "a.zarr"), "-q",
                                 "--ignore-voxel-size"])
    assert result.exit_code == 0, result.output
    assert "note: voxel-size check skipped" in result.stderr


def test_a_checkpoint_trained_at_one_millimetre_is_checked(tmp_path, notes):
    """1 x 1 x 1 with a unit is a voxel size (MRI at 1 mm), not the "unknown" of a bare format."""
    ckpt = tiny_checkpoint(tmp_path / "mm.pt", voxel_size=[1.0, 1.0, 1.0], voxel_unit="millimeter")
    coarse = _volume(tmp_path / "coarse.zarr", _raw(), voxel_size=(2, 2, 2), unit="millimeter")
    with pytest.raises(UserError, match=r"voxel size 2x2x2 .* trained at 1x1x1"):
        predict(ckpt, coarse, str(tmp_path / "a.zarr"), progress=False)
    same = _volume(tmp_path / "same.zarr", _raw(), voxel_size=(1, 1, 1), unit="millimeter")
    predict(ckpt, same, str(tmp_path / "b.zarr"), progress=False)
    assert notes.take() == []
