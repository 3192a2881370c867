"""Checkpoints rebuild the model from the file alone; bad files are clear errors."""

import pytest
import torch

from psc_seg.errors import UserError
from psc_seg.models import build_model, load_checkpoint, save_checkpoint


def test_roundtrip_rebuilds_identical_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("unet", conv="psc(2,2)", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[1, 2, 2]])
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, metadata={"task": {"kind": "affinities"}})
    assert not list((tmp_path / "sub").glob("*.tmp"))
    ckpt = load_checkpoint(path)
    assert ckpt.name == "unet" and ckpt.kwargs["conv"] == "psc(2,2)"
    assert ckpt.metadata == {"task": {"kind": "affinities"}}
    assert not ckpt.model.training
    x = torch.randn(1, 1, *model.valid_input_shape(model.valid_output_shape((4, 4, 4))))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), ckpt.model(x))


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(UserError, match="not a psc-seg checkpoint"):
        load_checkpoint(foreign)
    model = build_model("densenet", stem_channels=4, growth_rate=2, block_layers=[1, 1], bottleneck_factor=2)
    truncated = tmp_path / "truncated.pt"
    save_checkpoint(truncated, model)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(truncated)


def test_a_densenet_checkpoint_of_the_ungrouped_layout_is_a_one_line_error(tmp_path):
    # before dense layers were grouped, a psc(2,2) DenseNet had one PSC(2,2) per dense layer;
    # its checkpoint describes a model that is now built with one PSC(2,2) per two layers
    from torch import nn

    from psc_seg.models.densenet import DenseLayer
    from psc_seg.nn import parse_conv_spec

    model = build_model("densenet", conv="psc(2,2)", stem_channels=4, growth_rate=2, block_layers=[2, 2],
                        bottleneck_factor=2, dropout=0.0)
    for index, block in enumerate(model.blocks):  # the old layout: two single layers, a PSC(2,2) each
        channels = block[0].body[0].num_features
        model.blocks[index] = nn.Sequential(*[
            DenseLayer(channels + i * 2, 2, bottleneck=4, dropout=0.0, conv=parse_conv_spec("psc(2,2)"), kernel_size=3)
            for i in range(2)])
    old = save_checkpoint(tmp_path / "old.pt", model)
    with pytest.raises(UserError) as info:
        load_checkpoint(old)
    message = str(info.value)
    assert "\n" not in message
    assert "does not fit the densenet" in message and "unexpected (first blocks.0.1.body." in message
    assert "of another shape (first blocks.0.0.body." in message and "must be trained again" in message
