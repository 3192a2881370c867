"""psc_seg.nn.fast: the fast CPU paths give the numbers of the plain PyTorch modules."""

import itertools

import pytest
import torch
from torch import nn

from psc_seg.models import build_model
from psc_seg.nn import PSC
from psc_seg.nn.fast import onednn_bf16, cat_channels, conv3d, fast_paths, is_channels_last, max_pool3d, to_channels_last


def _plain(module, x):
    with fast_paths(False):
        return module(x.contiguous())


@pytest.mark.parametrize("c_in,kernel,padding,stride", [
    (1, (3, 3, 3), 0, 1), (1, (1, 3, 3), 1, 1), (2, (3, 1, 3), 0, 2), (5, (5, 1, 1), (2, 0, 0), 1),
    (4, (1, 1, 1), 0, 1),
])
@pytest.mark.parametrize("activation", [None, nn.ReLU(), nn.LeakyReLU(0.005), nn.ELU()])
def test_conv3d_equals_the_module_and_stays_channels_last(c_in, kernel, padding, stride, activation):
    torch.manual_seed(0)
    conv = nn.Conv3d(c_in, 6, kernel, padding=padding, stride=stride)
    x = torch.randn(2, c_in, 9, 10, 11)
    with torch.no_grad():
        want = conv(x) if activation is None else activation(conv(x))
        got = conv3d(conv, to_channels_last(x), activation=activation)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert is_channels_last(got)  # also for one input channel (widened): NDHWC out, not NCDHW


def test_conv3d_keeps_gradients_with_a_widened_single_channel_input():
    torch.manual_seed(0)
    conv = nn.Conv3d(1, 4, 3, padding=1)
    x = torch.randn(1, 1, 8, 8, 8, requires_grad=True)
    conv3d(conv, x).square().sum().backward()
    grad_w, grad_x = conv.weight.grad.clone(), x.grad.clone()
    conv.zero_grad()
    x.grad = None
    conv(x).square().sum().backward()
    torch.testing.assert_close(grad_w, conv.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(grad_x, x.grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("m,n", list(itertools.product((1, 2, 3), (1, 2))))
@pytest.mark.parametrize("c_in,padding,stride", [(1, "valid", 1), (5, "same", 1), (3, "same", 2)])
def test_psc_fast_equals_plain_in_inference_and_training(m, n, c_in, padding, stride):
    torch.manual_seed(0)
    block = PSC(c_in, 7, m=m, n=n, padding=padding, stride=stride, activation="leaky_relu")
    x = torch.randn(2, c_in, 12, 11, 10)
    with torch.no_grad():
        want = _plain(block, x)
        got = to_channels_last(block)(to_channels_last(x))
        fused = block.forward_fused(to_channels_last(x), activation=nn.ReLU())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, torch.relu(want), atol=1e-5, rtol=1e-5)
    # training: same loss and parameter gradients on both paths
    block(to_channels_last(x)).square().mean().backward()
    fast_grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    _plain(block, x).square().mean().backward()
    for fast, plain in zip(fast_grads, (p.grad for p in block.parameters())):
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-4)


def test_cat_channels_equals_torch_cat_for_crops_and_mixed_layouts():
    a = to_channels_last(torch.randn(2, 3, 8, 9, 10))[:, :, 1:7, 2:8, 0:9]  # a strided crop
    b = to_channels_last(torch.randn(2, 4, 6, 6, 9))
    got = cat_channels([a, b])
    torch.testing.assert_close(got, torch.cat([a, b], dim=1), rtol=0, atol=0)
    assert is_channels_last(got)
    c = torch.randn(2, 2, 6, 6, 9)  # NCDHW: falls back to torch.cat
    torch.testing.assert_close(cat_channels([b, c]), torch.cat([b, c], dim=1), rtol=0, atol=0)


def test_cat_channels_gradient_is_the_slices_of_the_output_gradient():
    base = to_channels_last(torch.randn(2, 3, 8, 9, 10)).requires_grad_()
    b = to_channels_last(torch.randn(2, 4, 6, 6, 9)).requires_grad_()
    weight = torch.randn(2, 7, 6, 6, 9)
    (cat_channels([base[:, :, 1:7, 2:8, 0:9], b]) * weight).sum().backward()
    got = base.grad.clone(), b.grad.clone()
    base.grad, b.grad = None, None
    (torch.cat([base[:, :, 1:7, 2:8, 0:9], b], dim=1) * weight).sum().backward()
    torch.testing.assert_close(got[0], base.grad, rtol=0, atol=0)
    torch.testing.assert_close(got[1], b.grad, rtol=0, atol=0)


@pytest.mark.parametrize("conv,upsample", [("conv3d", "nearest"), ("psc(1,1)", "transposed"), ("psc(2,2)", "nearest"),
                                           ("psc(3,2)", "nearest")])
def test_unet_channels_last_fast_equals_the_plain_network(conv, upsample):
    """Also checks the 1x1x1 conv moved before the nearest upsampling (same numbers)."""
    torch.manual_seed(0)
    model = build_model("unet", conv=conv, num_fmaps=4, fmap_inc_factor=3, upsample=upsample,
                        downsample_factors=[[2, 2, 2], [1, 2, 2]], activation="leaky_relu").eval()
    shape = model.valid_input_shape(model.valid_output_shape((6, 8, 8)))
    x = torch.randn(1, 1, *shape)
    with torch.inference_mode():
        want = _plain(model, x)
        got = to_channels_last(model)(to_channels_last(x))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)



@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("factor,shape", [((2, 2, 2), (8, 10, 12)), ((1, 2, 3), (5, 9, 13)), (3, (7, 6, 9))])
def test_max_pool3d_equals_the_module(dtype, factor, shape):
    torch.manual_seed(0)
    pool = nn.MaxPool3d(factor, stride=factor)
    x = to_channels_last(torch.randn(2, 5, *shape)).to(dtype)
    x[0, 1, 0, 0, 0] = float("nan")
    with torch.inference_mode():
        got = max_pool3d(pool, x)
        want = pool(x.contiguous())
    assert got.dtype == dtype and is_channels_last(got)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    y = x.detach().requires_grad_()  # training: the module itself (its gradient at ties)
    torch.testing.assert_close(max_pool3d(pool, y), want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.skipif(not onednn_bf16(), reason="oneDNN computes no bfloat16 on this CPU")
@pytest.mark.parametrize("conv", ["conv3d", "psc(2,2)"])
def test_bfloat16_unet_fast_equals_plain_and_float32(conv):
    torch.manual_seed(0)
    model = build_model("unet", conv=conv, num_fmaps=4, fmap_inc_factor=3,
                        downsample_factors=[[2, 2, 2], [1, 2, 2]]).eval()
    shape = model.valid_input_shape(model.valid_output_shape((6, 8, 8)))
    x = torch.rand(1, 1, *shape)
    with torch.inference_mode():
        want32 = model(to_channels_last(x))
        model = to_channels_last(model).to(torch.bfloat16)
        want = _plain(model, x.to(torch.bfloat16)).float()
        got = model(to_channels_last(x.to(torch.bfloat16))).float()
    torch.testing.assert_close(got, want, atol=1e-2, rtol=0)  # both round each layer to bf16
    torch.testing.assert_close(got, want32, atol=1e-2, rtol=0)  # sigmoid outputs
