"""The DenseNet's dense blocks under the replacement rule: n consecutive dense layers are one
PSC(m,n) block with the n convs' receptive field and channels; shapes per block, both layouts."""

import pytest
import torch

from psc_seg.models import build_model, model_entry
from psc_seg.models.densenet import DenseLayer
from psc_seg.nn import PSC, ConvSpec, dense_groups, parse_conv_spec

PAPER_DENSENET = model_entry("densenet").variants["paper"][1]


def test_dense_groups_follow_the_replacement_rule():
    def depths(spec, layers):
        return [str(group) for group in dense_groups(spec, layers)]

    assert depths("conv3d", 4) == ["conv3d"] * 4
    assert depths("r2plus1d", 3) == ["psc(1,1)"] * 3
    assert depths("psc(2,2)", 4) == ["psc(2,2)", "psc(2,2)"]
    assert depths("psc(2,3)", 4) == ["psc(2,3)", "psc(2,1)"]  # a remainder of 1 layer: a block of depth 1
    assert depths("psc(3,3)", 5) == ["psc(3,3)", "psc(3,2)"]
    assert depths("psc(2,2)", 1) == ["psc(2,1)"]
    assert depths("psc(2,4)", 0) == []


def _linear(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` in float64 eval mode with every ReLU an identity (no dead unit hides a path)."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(parent, name, torch.nn.Identity())
    return module.double().eval()


def _reach(layers: list[torch.nn.Module], in_channels: int, size: int = 21) -> tuple[int, int]:
    """Along each axis, how far from an input impulse the channels ``layers`` add respond."""
    x = torch.zeros(1, in_channels, size, size, size, dtype=torch.float64)
    impulse = x.clone()
    impulse[0, :, size // 2, size // 2, size // 2] = 1.0
    with torch.no_grad():
        response = (torch.nn.Sequential(*layers)(impulse) - torch.nn.Sequential(*layers)(x))[0, in_channels:]
    support = response.abs().amax(dim=0) > 1e-12
    reach = []
    for axis in range(3):
        rows = support.any(dim=tuple(a for a in range(3) if a != axis)).nonzero().flatten()
        reach.append(max(size // 2 - rows.min().item(), rows.max().item() - size // 2))
    assert max(reach) < size // 2  # not clipped by the tile
    return tuple(reach)


@pytest.mark.parametrize("spec,kernel_size", [("psc(2,2)", 3), ("psc(2,3)", 3), ("psc(3,2)", 3), ("psc(1,2)", 5)])
@pytest.mark.parametrize("bottleneck", [0, 8])
def test_a_grouped_block_reaches_as_far_as_the_layers_it_replaces(spec, kernel_size, bottleneck):
    # impulse response: the block's new channels respond exactly as far from the impulse as
    # the last of n single conv3d dense layers does
    torch.manual_seed(0)
    group, in_channels, growth = parse_conv_spec(spec), 5, 2
    block = _linear(DenseLayer(in_channels, group.n * growth, bottleneck=bottleneck, dropout=0.0, conv=group,
                               kernel_size=kernel_size))
    assert isinstance(block.body[-2], PSC) and block.body[-2].n == group.n
    singles = [_linear(DenseLayer(in_channels + i * growth, growth, bottleneck=bottleneck, dropout=0.0,
                                  conv=ConvSpec("conv3d"), kernel_size=kernel_size)) for i in range(group.n)]
    expected = (group.n * (kernel_size - 1) // 2,) * 3
    assert _reach(singles, in_channels) == expected
    assert _reach([block], in_channels) == expected


@pytest.mark.parametrize("conv", ["conv3d", "psc(1,1)", "psc(2,2)", "psc(2,3)", "psc(3,2)"])
@pytest.mark.parametrize("layout", ["bui", "paper"])
def test_dense_block_shapes_and_channels(conv, layout):
    # each dense block adds block_layers x growth channels whatever the grouping, at its
    # resolution; its layers are the groups of the replacement rule, each adding n x growth
    growth, stem = 3, 4
    options = {**(dict(compression=0.5) if layout == "bui" else PAPER_DENSENET), "block_layers": [4, 3, 2]}
    model = build_model("densenet", conv=conv, **{**options, "stem_channels": stem, "growth_rate": growth}).eval()
    seen = []
    hooks = [block.register_forward_hook(lambda m, args, out: seen.append((args[0].shape, out.shape)))
             for block in model.blocks]
    with torch.no_grad():
        out = model(torch.randn(1, 1, 16, 24, 8))
    for hook in hooks:
        hook.remove()
    assert out.shape == (1, 4, 16, 24, 8)
    channels = stem
    for index, (num_layers, block, (before, after)) in enumerate(zip([4, 3, 2], model.blocks, seen)):
        groups = dense_groups(conv, num_layers)
        assert [layer.body[-2].out_channels for layer in block] == [g.n * growth for g in groups]
        assert sum(g.n for g in groups) == num_layers
        scale = 2 ** (index + 1)
        assert tuple(before[2:]) == tuple(after[2:]) == (16 // scale, 24 // scale, 8 // scale)
        assert before[1] == channels and after[1] == channels + num_layers * growth
        channels = int(after[1] * options["compression"])


def test_paper_layout_has_no_bottleneck_and_interpolating_heads():
    with torch.device("meta"):
        model = build_model("densenet", conv="psc(2,3)", **PAPER_DENSENET)
    assert model.shape_step == (32, 32, 32) and len(model.blocks) == 5
    first = model.blocks[0][0]
    assert [type(m).__name__ for m in first.body] == ["BatchNorm3d", "ReLU", "PSC", "Dropout3d"]
    assert all(isinstance(head[-1], torch.nn.Upsample) and head[-1].mode == "trilinear" for head in model.heads)
    assert all(t[2].in_channels == t[2].out_channels == t[3].out_channels for t in model.transitions)  # no compression


def test_bad_densenet_options_are_one_line_errors():
    with pytest.raises(ValueError, match="upsample must be one of transposed, nearest, trilinear"):
        build_model("densenet", upsample="bilinear")
    with pytest.raises(ValueError, match="bottleneck_factor must be an int >= 0"):
        build_model("densenet", bottleneck_factor=-1)
