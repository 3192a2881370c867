"""Every registered model x conv spec builds and trains a step, with pinned parameter
counts; UNet shape arithmetic; the DenseNet's receptive radius."""

import pytest
import torch

from psc_seg.cli.models import COMPARED_SPECS
from psc_seg.models import build_model, count_parameters, list_models, model_entry
from psc_seg.pipelines.models import model_table

SPECS = ["conv3d", "psc(1,1)", "psc(2,2)", "psc(2,3)", "psc(3,2)"]

PAPER_DENSENET = model_entry("densenet").variants["paper"][1]
TINY = {
    "unet": ("unet", dict(num_fmaps=3, fmap_inc_factor=2, downsample_factors=[[1, 2, 2]], upsample="transposed")),
    "densenet": ("densenet", dict(stem_channels=4, growth_rate=3, block_layers=[1, 1, 1, 1], bottleneck_factor=2)),
    # the paper's layout (five blocks of four layers...) at tiny widths
    "densenet (paper)": ("densenet", {**PAPER_DENSENET, "stem_channels": 4, "growth_rate": 2}),
    "resnet": ("resnet", dict(in_channels=1, num_classes=3, layers=[1, 1, 1, 1], widths=[4, 4, 8, 8])),
}


def test_registry_lists_the_three_models():
    assert list_models() == ["densenet", "resnet", "unet"]


@pytest.mark.parametrize("conv", SPECS)
@pytest.mark.parametrize("tiny", list(TINY))
def test_forward_backward_tiny(tiny, conv):
    torch.manual_seed(0)
    name, kwargs = TINY[tiny]
    model = build_model(name, conv=conv, **kwargs)
    if name == "unet":
        shape = model.valid_input_shape(model.valid_output_shape((4, 4, 4)))
        x = torch.randn(1, 1, *shape)
        expected = (1, 3, *model.output_shape(shape))
    elif name == "densenet":
        size = model.shape_step[0]  # batch 2: BatchNorm at the 1-voxel coarsest level
        x = torch.randn(2, 1, size, size, size)
        expected = (2, 4, size, size, size)
    else:
        x = torch.randn(2, 1, 4, 16, 16)
        expected = (2, 3)
    y = model(x)
    assert tuple(y.shape) == expected
    y.float().square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# Every row of `psc-seg models list` (the README's table), pinned.
PARAMETERS = {
    "unet": {"conv3d": 21404859, "psc(1,1)": 10391387, "psc(2,2)": 11924659, "psc(2,3)": 18459519,
             "psc(3,2)": 10330635},
    "densenet": {"conv3d": 830220, "psc(1,1)": 517180, "psc(2,2)": 773076, "psc(2,3)": 989052, "psc(3,2)": 854770},
    "densenet (paper)": {"conv3d": 5136126, "psc(1,1)": 3382194, "psc(2,2)": 4528900, "psc(2,3)": 4912564,
                         "psc(3,2)": 5255761},
    "resnet": {"conv3d": 63681104, "psc(1,1)": 29053520, "psc(2,2)": 47191386, "psc(2,3)": 71076836,
               "psc(3,2)": 43354302},
}


def test_parameter_counts_of_every_model_and_spec():
    rows = model_table(COMPARED_SPECS)
    counts = {row["name"] if row["variant"] is None else f"{row['name']} ({row['variant']})": row["parameters"]
              for row in rows}
    assert counts == PARAMETERS
    # the paper's DenseNet: 5.2M with conv3d (within 10 %)
    assert abs(counts["densenet (paper)"]["conv3d"] - 5.2e6) < 0.52e6


def test_paper_unet_parameter_counts():
    """The authors' EM UNet: about 21.4M with conv3d; PmSCn cuts it to <= 0.65x."""
    counts = {}
    for spec in ["conv3d", "psc(1,1)", "psc(2,2)"]:
        with torch.device("meta"):
            counts[spec] = count_parameters(build_model("unet", conv=spec))
    assert abs(counts["conv3d"] - 21.4e6) < 0.1e6
    assert counts["psc(1,1)"] <= 0.65 * counts["conv3d"]
    assert counts["psc(2,2)"] <= 0.65 * counts["conv3d"]


def test_paper_unet_shapes():
    with torch.device("meta"):
        model = build_model("unet")
    assert model.output_shape((132, 132, 132)) == (44, 44, 44)  # the authors' 132^3 -> 44^3
    assert model.valid_input_shape((44, 44, 44)) == (132, 132, 132)
    assert model.context == (44, 44, 44)
    assert model.shape_step == (8, 8, 8)


def test_unet_valid_shapes_match_forward():
    model = build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[1, 2, 2], [2, 2, 2]])
    fitting = 0
    for size in range(30, 62):
        try:
            out = model.output_shape((size, size, size))
        except ValueError:
            continue
        fitting += 1
        with torch.no_grad():
            assert tuple(model(torch.zeros(1, 1, size, size, size)).shape[2:]) == out
        assert model.valid_input_shape(out) == (size, size, size)
    assert fitting >= 4


def test_unet_bad_input_names_shape_factor_and_level():
    model = build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[2, 2, 2], [2, 2, 2]])
    with pytest.raises(ValueError, match=r"axis z.*level 1 has size 11.*downsample factor 2"):
        model.output_shape((34, 34, 34))
    with pytest.raises(ValueError, match=r"axis x.*level 0 has size 27.*44 \+ k\*4"):
        model.output_shape((44, 44, 31))
    with pytest.raises(ValueError, match="nearest valid output shape"):
        model.valid_input_shape((5, 5, 5))


def test_unet_psc_n3_shrinks_like_three_convs():
    model = build_model("unet", conv="psc(2,3)", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[])
    assert model.output_shape((20, 20, 20)) == (14, 14, 14)  # one PSC(2,3): 3 x (3 - 1)


def test_same_padding_unet_keeps_shape():
    model = build_model("unet", padding="same", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[2, 2, 2]])
    assert model(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 3, 8, 8, 8)
    with pytest.raises(ValueError, match="multiple of 2"):
        model.output_shape((7, 8, 8))


def test_unknown_model_argument_is_named():
    with pytest.raises(ValueError, match="num_fmap.*accepted"):
        build_model("unet", num_fmap=3)
    with pytest.raises(ValueError, match="registered models"):
        build_model("vnet")


def _same_vs_twin(same, start):
    """Max |twin - same| / max |same| over the twin's output when its input starts at
    ``start`` (per axis) in a same-padding tile."""
    twin = same.valid_twin()
    out = twin.valid_output_shape((8, 8, 8))
    n = twin.valid_input_shape(out)
    size = [((p + k + s - 1) // s) * s + s for p, k, s in zip(start, n, same.shape_step)]
    x = torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = same(x)
        centre = twin(x[(..., *(slice(p, p + k) for p, k in zip(start, n)))])
    expected = full[(..., *(slice(p + c, p + c + o) for p, c, o in zip(start, same.context, out)))]
    assert centre.shape == expected.shape
    return ((centre - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("conv", ["conv3d", "psc(2,2)"])
@pytest.mark.parametrize("upsample", ["nearest", "transposed"])
def test_valid_twin_reproduces_the_same_padding_centre(conv, upsample):
    # the same weights without padding give the same-padding network's output wherever its
    # zero padding does not reach, if the twin's pooling windows are the same-padding net's
    torch.manual_seed(0)
    same = build_model("unet", num_fmaps=3, fmap_inc_factor=2, downsample_factors=[[1, 2, 2], [2, 2, 2]],
                       conv=conv, upsample=upsample, padding="same", norm="batch", final_activation=None).eval()
    with torch.no_grad():
        for p in same.parameters():  # larger weights: the coarse levels visibly change the output
            p.mul_(2.0)
        for p in [*same.bottom.parameters(), *same.upsample_layers.parameters()]:
            p.mul_(3.0)
        for m in same.modules():
            if isinstance(m, torch.nn.BatchNorm3d):  # non-trivial running statistics
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    twin = same.valid_twin()
    assert twin.padding == "valid" and not twin.training and twin.context == same.context
    assert same.pooling_offset == (2 + 1 * 2, 2 + 2 * 2, 2 + 2 * 2)  # span 4 per level, factors (1,2,2), (2,2,2)
    aligned = [(-p) % s for p, s in zip(same.pooling_offset, same.shape_step)]
    assert _same_vs_twin(same, aligned) < 1e-6
    # one voxel off along y: other pooling windows, another function (so the check above bites)
    assert _same_vs_twin(same, [aligned[0], aligned[1] + 1, aligned[2]]) > 1e-3




def test_valid_twin_follows_dtype_and_mode():
    same = build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[2, 2, 2]], padding="same")
    twin = same.double().train().valid_twin()
    assert twin.head.weight.dtype == torch.float64 and twin.training
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), same.state_dict().values()))


@pytest.mark.parametrize("conv,options", [
    ("conv3d", {}), ("psc(2,2)", {}), ("psc(1,1)", {}),
    # the paper's layout: no bottleneck, grouped layers with a remainder, interpolating heads
    ("psc(2,3)", dict(block_layers=[4, 1], bottleneck_factor=0, compression=1.0, upsample="trilinear")),
    ("psc(2,2)", dict(block_layers=[3, 2], bottleneck_factor=0, compression=1.0, upsample="nearest")),
])
def test_densenet_receptive_radius_is_measured_reach(conv, options):
    # the gradient of output voxels of every phase with respect to the input: the farthest
    # input voxel that counts lies `receptive_radius` voxels away, along each axis (ReLUs made
    # identities so that no dead unit hides a path)
    torch.manual_seed(0)
    model = build_model("densenet", conv=conv, **{
        **dict(num_classes=2, stem_channels=2, growth_rate=2, block_layers=[1, 2], bottleneck_factor=1, dropout=0.0),
        **options}).double().eval()
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(module, name, torch.nn.Identity())
    size, step = 64, model.shape_step[0]
    x = torch.rand(1, 1, size, size, size, dtype=torch.float64, requires_grad=True)
    reach = 0
    for o in range(size // 2 - step, size // 2):  # one output row of each phase, far from the tile's border
        model(x)[0, :, o, o, o].sum().backward()
        support = x.grad[0, 0].abs() > 0
        x.grad = None
        for axis in range(3):
            rows = support.any(dim=tuple(a for a in range(3) if a != axis)).nonzero().flatten()
            reach = max(reach, o - rows.min().item(), rows.max().item() - o)
    assert reach < size // 2 - step  # the measurement is not clipped by the tile
    assert model.receptive_radius == (reach, reach, reach)
    assert model.context == model.shape_step  # the padding predict's output is defined with


def test_default_densenet_receptive_radius():
    # psc(2,2): grouped dense layers reach as far as the convs they replace; the stem's three
    # convs are one PSC(2,2), one voxel less
    with torch.device("meta"):
        assert build_model("densenet", conv="conv3d").receptive_radius == (146, 146, 146)
        assert build_model("densenet", conv="psc(2,2)").receptive_radius == (145, 145, 145)
        assert build_model("densenet", conv="conv3d", **PAPER_DENSENET).receptive_radius == (298, 298, 298)
        assert build_model("densenet", conv="psc(2,2)", **PAPER_DENSENET).receptive_radius == (297, 297, 297)
