"""Per-axis kernel sizes (``kernel_size: [1, 3, 3]``, or one per level) for anisotropic EM:
PSC streams, UNet shape arithmetic and context, checkpoints, the training config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from psc_seg.errors import UserError
from psc_seg.models import build_model, load_checkpoint, save_checkpoint
from psc_seg.nn import PSC, make_convs, psc_parameter_count, receptive_span, subspace_width
from psc_seg.train.config import load_config
from psc_seg.train.model import build_training_model

FACTORS = [[1, 2, 2], [2, 2, 2]]
KERNELS = [[1, 3, 3], [[1, 3, 3], [1, 3, 3], 3], [[1, 3, 3], 3, [3, 5, 5]]]


@pytest.mark.parametrize("n", [1, 2])
def test_psc_streams_take_their_planes_sizes(n):
    block = PSC(2, 6, m=3, n=n, kernel_size=(1, 3, 5), padding="valid", activation=None)
    assert block.kernel_size == (1, 3, 5) and block.line_lengths == (1, 2 * n + 1, 4 * n + 1)
    planes = [(1, 3, 5), (1, 1, 5), (1, 3, 1)]
    lines = [(1, 1, 1), (1, 2 * n + 1, 1), (1, 1, 4 * n + 1)]
    for stream, plane, line in zip(block.streams, planes, lines):
        convs = [c for c in stream if isinstance(c, nn.Conv3d)]
        assert [c.kernel_size for c in convs] == [plane] * n + [line]
    x = torch.randn(1, 2, 7, 11, 13)
    assert block(x).shape == (1, 6, 7, 11 - 2 * n, 13 - 4 * n)  # n stacked (1, 3, 5) convs
    assert receptive_span(block) == (0, 2 * n, 4 * n)
    same = PSC(2, 6, m=3, n=n, kernel_size=(1, 3, 5), padding="same")
    assert same(x).shape == (1, 6, 7, 11, 13)


@pytest.mark.parametrize("kernel", [(1, 3, 3), (3, 1, 5), (5, 3, 3)])
@pytest.mark.parametrize("m,n", [(1, 1), (2, 2), (3, 3)])
def test_psc_parameter_count_per_axis(kernel, m, n):
    with torch.device("meta"):
        block = PSC(12, 36, m=m, n=n, kernel_size=kernel)
    assert sum(p.numel() for p in block.parameters()) == psc_parameter_count(12, 36, m=m, n=n, kernel_size=kernel)
    # stream s's width balances its plane and line against the 3D kernel (Eq. 5 per axis)
    K = kernel[0] * kernel[1] * kernel[2]
    for axis, width in enumerate(block.subspace_widths):
        M = max((36 * 12 * K) // (12 * K // kernel[axis] + 36 * kernel[axis]), max(kernel))
        assert width == min(36, M // m) == subspace_width(12, 36, m=m, kernel_size=kernel, line_axis=axis)


def test_psc_impulse_response_spans_the_declared_field():
    torch.manual_seed(0)
    block = PSC(1, 3, m=3, n=2, kernel_size=(1, 3, 5), activation=None, bias=False)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(p.abs() + 0.1)  # positive weights: nothing cancels
        x = torch.zeros(1, 1, 9, 15, 21)
        x[0, 0, 4, 7, 10] = 1.0
        response = block(x)[0]
    for stream in range(3):
        nonzero = response[stream] != 0
        extent = [int(nonzero.any(dim=tuple(a for a in range(3) if a != axis)).sum()) for axis in range(3)]
        assert extent == [1, 5, 9]  # n (k - 1) + 1 along each axis, for every stream


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("conv", ["conv3d", "psc(2,2)", "psc(2,1)"])
def test_unet_shape_arithmetic_matches_forward(conv, kernel):
    torch.manual_seed(0)
    model = build_model("unet", conv=conv, num_fmaps=2, fmap_inc_factor=2, downsample_factors=FACTORS,
                        kernel_size=kernel)
    for want in [(1, 1, 1), (4, 8, 8), (6, 9, 13)]:
        out = model.valid_output_shape(want)
        shape = model.valid_input_shape(out)
        assert model.output_shape(shape) == out
        with torch.no_grad():
            assert tuple(model(torch.zeros(1, 1, *shape)).shape[2:]) == out
        assert [i - o for i, o in zip(shape, out)] == [2 * c for c in model.context]
    # each box (two convs, or one PSC(m,2)) shrinks an axis by s = 2 (k - 1), k the level's size
    # along it; context = s_0 + f_0 s_1 + f_0 f_1 s_2 / 2 (down and up boxes, then the bottom)
    for axis in range(3):
        s = [2 * (k[axis] - 1) for k in model.kernel_sizes]
        f0, f1 = FACTORS[0][axis], FACTORS[1][axis]
        assert model.context[axis] == s[0] + f0 * s[1] + f0 * f1 * s[2] // 2


def test_unet_1x3x3_everywhere_has_no_z_context_and_is_2d():
    model = build_model("unet", conv="psc(2,2)", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[1, 2, 2]],
                        kernel_size=[1, 3, 3])
    assert model.context == (0, 8, 8) and model.valid_input_shape((3, 8, 8)) == (3, 24, 24)
    x = torch.randn(1, 1, 3, 24, 24)
    with torch.no_grad():
        whole = model(x)
        sections = torch.cat([model(x[:, :, z:z + 1]) for z in range(3)], dim=2)
    assert torch.allclose(whole, sections, atol=1e-6)  # every z section on its own


@pytest.mark.parametrize("bad", [2, [1, 3], [1, 4, 3], [[1, 3, 3], 3], [[1, 3, 3], 3, 3, 3], "3", [[1, 3], 3, 3],
                                 True, [0, 3, 3], [1.0, 3, 3]])
def test_bad_unet_kernel_sizes_name_what_is_accepted(bad):
    with pytest.raises(ValueError, match=r"unet: kernel_size must be an odd int, three odd ints \(z, y, x\), or one "
                                         r"of those per level \(3 levels: len\(downsample_factors\) \+ 1\)") as info:
        build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=FACTORS, kernel_size=bad)
    assert str(info.value).endswith(f"got {bad!r}")
    with pytest.raises(ValueError, match="kernel_size must be an odd int"):
        make_convs("conv3d", 1, 2, kernel_size=[3, 3, 2])


def test_checkpoint_rebuilds_the_per_level_kernels(tmp_path):
    torch.manual_seed(0)
    model = build_model("unet", conv="psc(2,2)", num_fmaps=2, fmap_inc_factor=2, downsample_factors=FACTORS,
                        kernel_size=((1, 3, 3), [1, 3, 3], 3))
    save_checkpoint(tmp_path / "m.pt", model, metadata={})
    loaded = load_checkpoint(tmp_path / "m.pt").model
    assert loaded.kernel_sizes == model.kernel_sizes == ((1, 3, 3), (1, 3, 3), (3, 3, 3))
    x = torch.randn(1, 1, *model.valid_input_shape(model.valid_output_shape((4, 8, 8))))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def _config(**model) -> dict:
    volume = {"raw": "raw.h5:/raw", "labels": "raw.h5:/gt"}
    return {"model": {"name": "unet", "conv": "psc(2,2)", "num_fmaps": 2, "fmap_inc_factor": 2,
                      "downsample_factors": FACTORS, **model},
            "data": {"train": [volume]}}


def test_kernel_size_through_set_builds_the_training_model():
    for value, levels in (("[1,3,3]", ((1, 3, 3),) * 3), ("[[1,3,3],[1,3,3],3]", ((1, 3, 3),) * 2 + ((3, 3, 3),))):
        config = load_config(_config(), [f"model.kernel_size={value}"])
        model = build_training_model(config)
        assert model.kernel_sizes == levels
    for value, got in (("[2,3,3]", "[2, 3, 3]"), ("[1,3]", "[1, 3]"), ("[[1,3,3],3]", "[[1, 3, 3], 3]")):
        with pytest.raises(UserError, match=r"^config section 'model': unet: kernel_size must be") as info:
            build_training_model(load_config(_config(), [f"model.kernel_size={value}"]))
        assert str(info.value).endswith(f"got {got}") and "\n" not in str(info.value)
    densenet = {"model": {"name": "densenet", "kernel_size": [1, 3, 3]}, "task": {"kind": "semantic", "num_classes": 4},
                "data": {"train": [{"raw": "t1.nii.gz", "labels": "seg.nii.gz"}]}, "train": {"loss": "ce"}}
    with pytest.raises(UserError, match="densenet: kernel_size must be one odd int.*for the unet"):
        build_training_model(load_config(densenet))
