"""Config schema, presets, --set overrides and the patch-shape check."""

from __future__ import annotations

import pytest
import yaml

from psc_seg.errors import UserError
from psc_seg.train.config import apply_override, list_presets, load_config
from psc_seg.train.model import build_training_model, check_patch_shape

PAPER_VARIANTS = ("conv3d", "p1sc1", "p2sc2", "p2sc3")
DATA = ["data.train=[{raw: train.zarr/raw, labels: train.zarr/labels}]"]  # presets hold no data


def test_presets_are_shipped_and_valid():
    presets = list_presets()
    for variant in PAPER_VARIANTS:
        assert f"em/unet-{variant}" in presets
        assert f"mri/densenet-{variant}" in presets
        assert f"mri/densenet-paper-{variant}" in presets
    assert {"em/demo-small", "mri/demo-small"} <= set(presets)
    for name in presets:
        config = load_config(name, DATA)
        assert config.train.iterations >= 1


@pytest.mark.parametrize("variant,conv", [("conv3d", "conv3d"), ("p1sc1", "psc(1,1)"), ("p2sc2", "psc(2,2)"),
                                          ("p2sc3", "psc(2,3)")])
def test_em_presets_are_the_paper_unet(variant, conv):
    config = load_config(f"em/unet-{variant}", DATA)
    assert config.model.conv == conv
    assert config.model.builder_kwargs()["num_fmaps"] == 24
    assert config.model.builder_kwargs()["fmap_inc_factor"] == 3
    assert (config.train.lr, tuple(config.train.betas), config.train.weight_decay) == (1e-4, (0.99, 0.999), 5e-6)
    assert config.task.out_channels == 3


@pytest.mark.parametrize("variant,conv", [("conv3d", "conv3d"), ("p1sc1", "psc(1,1)"), ("p2sc2", "psc(2,2)"),
                                          ("p2sc3", "psc(2,3)")])
def test_mri_paper_presets_are_the_registered_paper_densenet(variant, conv):
    # the presets spell out the registry's "paper" variant (what `psc-seg models list` counts)
    from psc_seg.models import model_entry

    config = load_config(f"mri/densenet-paper-{variant}", DATA)
    assert config.model.conv == conv
    paper = model_entry("densenet").variants["paper"][1]
    kwargs = config.model.builder_kwargs()
    assert {key: kwargs[key] for key in paper} == paper
    import torch

    with torch.device("meta"):
        model = build_training_model(config)
    assert check_patch_shape(model, config.train.patch_shape) == (64, 64, 64)


def test_paper_unet_patch_44_needs_input_132():
    config = load_config("em/unet-p2sc2", DATA)
    import torch

    with torch.device("meta"):
        model = build_training_model(config)
    assert check_patch_shape(model, (44, 44, 44)) == (132, 132, 132)


def test_preset_demo_small_builds_and_checks():
    em = load_config("em/demo-small", DATA)
    model = build_training_model(em)
    assert (model.in_channels, model.out_channels) == (1, 3)
    assert check_patch_shape(model, em.train.patch_shape) == (48, 88, 88)
    mri = load_config("mri/demo-small", DATA)
    model = build_training_model(mri)
    assert model.out_channels == 4 and model.padding == "same"
    assert check_patch_shape(model, mri.train.patch_shape) == (32, 32, 32)


def test_misspelt_key_names_it_the_allowed_keys_and_a_close_one():
    with pytest.raises(UserError) as info:
        load_config("em/demo-small", [*DATA, "train.patch_shap=[4,8,8]"])
    message = str(info.value)
    assert "'train.patch_shap'" in message
    assert "did you mean 'train.patch_shape'" in message
    assert "allowed keys here:" in message and "batch_size" in message
    assert "\n" not in message


def test_unknown_section_and_unknown_model_argument():
    with pytest.raises(UserError, match="did you mean 'augment'"):
        load_config("em/demo-small", [*DATA, "augmnet.flip=false"])
    with pytest.raises(UserError, match="'model.num_fmap' is not an argument of model 'unet'; did you mean 'model.num_fmaps'"):
        build_training_model(load_config("em/demo-small", [*DATA, "model.num_fmap=4"]))


def test_set_overrides_by_dotted_path_with_yaml_values(tmp_path):
    config = load_config("em/demo-small", [*DATA,
        "train.iterations=7", "train.patch_shape=[2, 4, 4]", "data.train.0.raw=a.zarr/raw",
        "augment.elastic.enabled=true", "model.num_fmaps=5",
    ])
    assert config.train.iterations == 7
    assert config.train.patch_shape == (2, 4, 4)
    assert config.data.train[0].raw == "a.zarr/raw"
    assert config.augment.elastic.enabled is True
    assert config.model.builder_kwargs()["num_fmaps"] == 5
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.as_dict()))
    assert load_config(path).as_dict() == config.as_dict()


@pytest.mark.parametrize("item,match", [
    ("train.iterations", "expected key.path=value"),
    ("data.train.3.raw=x", "is a list of 1"),
    ("train.lr.x=1", "is a value, not a section"),
    ("train.lr=[", "not valid YAML"),
])
def test_bad_overrides(item, match):
    raw = load_config("em/demo-small", DATA).as_dict()
    with pytest.raises(UserError, match=match):
        apply_override(raw, item)


def test_wrong_types_and_task_mismatch_are_one_line_errors():
    with pytest.raises(UserError, match=r"config key 'train.lr'.*got 'fast'"):
        load_config("em/demo-small", [*DATA, "train.lr=fast"])
    with pytest.raises(UserError, match="train.loss 'ce' does not fit task affinities; use one of bce, mse"):
        load_config("em/demo-small", [*DATA, "train.loss=ce"])
    with pytest.raises(UserError, match="semantic needs task.num_classes"):
        load_config("em/demo-small", [*DATA, "task={kind: semantic}", "train.loss=ce"])


def test_unknown_preset_proposes_the_closest():
    with pytest.raises(UserError, match="did you mean 'em/unet-p2sc2'"):
        load_config("em/unet-p2cs2")


def test_patch_shape_error_proposes_the_nearest_valid_one():
    model = build_training_model(load_config("em/demo-small", DATA))
    # valid outputs step by (2, 4, 4) from (2, 4, 4) ... 16 and 32 are valid
    with pytest.raises(UserError) as info:
        check_patch_shape(model, (15, 33, 31))
    assert "nearest valid one is [16, 32, 32]" in str(info.value)
    assert "--set train.patch_shape=[16,32,32]" in str(info.value)


def test_kaiming_init_keeps_the_weight_scale_of_psc_convs():
    import torch

    from psc_seg.train.model import initialize

    torch.manual_seed(0)
    config = load_config("em/demo-small", [*DATA, "model.num_fmaps=16"])
    model = build_training_model(config)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d) and m.weight.numel() > 2000]
    assert convs
    for conv in convs:
        fan_in = conv.weight[0].numel()
        assert abs(conv.weight.std().item() * (fan_in / 2) ** 0.5 - 1) < 0.15
        assert conv.bias is None or not conv.bias.any()
    default = build_training_model(load_config("em/demo-small", [*DATA, "model.num_fmaps=16", "train.init=default"]))
    conv = next(m for m in default.modules() if isinstance(m, torch.nn.Conv3d) and m.weight.numel() > 2000)
    assert conv.weight.std().item() * (conv.weight[0].numel() / 2) ** 0.5 < 0.7  # torch's default is smaller
    with pytest.raises(ValueError, match="unknown init scheme"):
        initialize(default, "xavier")
