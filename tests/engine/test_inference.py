"""psc_seg.engine.inference: block geometry, the prediction writer."""

from __future__ import annotations

import numpy as np
import pytest

from psc_seg.engine import Roi
from psc_seg.engine.inference import PredictionWriter, plan_geometry
from psc_seg.errors import UserError
from psc_seg.io import create_volume, open_volume
from psc_seg.models import build_model


def test_same_padding_halo_is_cropped():
    # without a twin (instance norm: statistics of the whole tile) the halo is read and cropped
    model = build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[2, 2, 2], [2, 2, 2]],
                        padding="same", norm="instance")
    geometry = plan_geometry(model, (32, 20, 20))
    assert geometry.context == geometry.crop == (20, 20, 20) and geometry.read_shape == (72, 60, 60)


def test_margin_moves_a_valid_output_by_whole_steps():
    """Mirror TTA's margin: the output starts whole shape steps before the write ROI (the same
    input lattice) and reaches at least the margin past its end."""
    model = build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[1, 2, 2], [2, 2, 2]])
    plain = plan_geometry(model, (16, 32, 32))
    wide = plan_geometry(model, (16, 32, 32), margin=(1, 1, 1))
    assert plain.crop == (0, 0, 0) and wide.crop == model.shape_step == (2, 4, 4)
    assert all((w - p) % s == 0 for w, p, s in zip(wide.context, plain.context, model.shape_step))
    out = model.output_shape(wide.read_shape)
    assert all(o >= c + b + 1 for o, c, b in zip(out, wide.crop, (16, 32, 32)))


def test_writer_semantic_uint8_labels_and_finalize(tmp_path):
    # two blocks of hand-made probabilities: labels are the argmax, probabilities round(255 p)
    probs = create_volume(tmp_path / "out.zarr/probabilities", shape=(2, 2, 2, 4), dtype="uint8", chunks=(2, 2, 2))
    labels = create_volume(tmp_path / "out.zarr/labels", shape=(2, 2, 4), dtype="uint8", chunks=(2, 2, 2))
    writer = PredictionWriter({"probabilities": probs, "labels": labels}, kind="semantic", dtype="uint8")
    p = np.zeros((2, 2, 2, 4), np.float32)
    p[0, ..., :2], p[0, ..., 2:] = 0.8, 0.2
    p[1] = 1.0 - p[0]
    p[1, 0, 0, 2] = 1.5  # clipped to 1
    writer.aggregate(p[..., :2], Roi((0, 0, 0), (2, 2, 2)))
    writer.aggregate(p[..., 2:], Roi((0, 0, 2), (2, 2, 2)))
    assert not writer.is_finalized
    writer.finalize()
    assert writer.is_finalized
    np.testing.assert_array_equal(open_volume(tmp_path / "out.zarr/labels").read(), [[[0, 0, 1, 1]] * 2] * 2)
    stored = open_volume(tmp_path / "out.zarr/probabilities").read()
    assert stored[0, 0, 0].tolist() == [204, 204, 51, 51] and stored[1, 0, 0].tolist() == [51, 51, 255, 204]
    with pytest.raises(RuntimeError, match="after finalize"):
        writer.aggregate(p[..., :2], Roi((0, 0, 0), (2, 2, 2)))
    with pytest.raises(ValueError, match="kind must be"):
        PredictionWriter({}, kind="instances", dtype="uint8")
    with pytest.raises(ValueError, match="dtype must be"):
        PredictionWriter({}, kind="semantic", dtype="float16")
