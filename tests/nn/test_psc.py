"""The PmSCn block: shapes, orientations, parameter counts, gradients."""

import itertools

import pytest
import torch
from torch import nn

from psc_seg.nn import PSC, psc_parameter_count, stream_out_channels, subspace_width


@pytest.mark.parametrize("m,n", list(itertools.product((1, 2, 3), (1, 2, 3))))
@pytest.mark.parametrize("d", [3, 5])
def test_output_shape_same_and_valid(m, n, d):
    x = torch.randn(2, 4, 13, 14, 15)
    same = PSC(4, 7, m=m, n=n, kernel_size=d, padding="same")
    assert same(x).shape == (2, 7, 13, 14, 15)
    valid = PSC(4, 7, m=m, n=n, kernel_size=d, padding="valid")
    shrink = n * (d - 1)
    assert valid(x).shape == (2, 7, 13 - shrink, 14 - shrink, 15 - shrink)
    assert valid.line_lengths == (n * (d - 1) + 1,) * 3


@pytest.mark.parametrize("m,n", [(1, 1), (2, 2), (3, 3), (3, 1)])
def test_stride_two(m, n):
    block = PSC(3, 6, m=m, n=n, stride=2)
    assert block(torch.randn(1, 3, 16, 12, 10)).shape == (1, 6, 8, 6, 5)
    anisotropic = PSC(3, 6, m=m, n=n, stride=(1, 2, 2))
    assert anisotropic(torch.randn(1, 3, 16, 12, 10)).shape == (1, 6, 16, 6, 5)


def test_kernel_shapes_and_orientation():
    d, n = 3, 2
    block = PSC(2, 9, m=3, n=n, kernel_size=d)
    L = n * (d - 1) + 1
    expected_plane = [(1, d, d), (d, 1, d), (d, d, 1)]
    expected_line = [(L, 1, 1), (1, L, 1), (1, 1, L)]
    for stream, plane, line in zip(block.streams, expected_plane, expected_line):
        convs = [mod for mod in stream if isinstance(mod, nn.Conv3d)]
        assert len(convs) == n + 1
        assert all(c.kernel_size == plane for c in convs[:-1])
        assert convs[-1].kernel_size == line


@pytest.mark.parametrize("stream_index", [0, 1, 2])
def test_impulse_response_lies_in_plane_times_line(stream_index):
    """With a box 1D kernel the stream's impulse response is its 2D kernel repeated along the
    stream's line axis, and zero beyond L: the 2D kernel is in the plane, the 1D on the line."""
    torch.manual_seed(0)
    block = PSC(1, 3, m=3, n=1, kernel_size=3, activation=None, bias=False)
    stream = block.streams[stream_index]
    plane_conv, line_conv = stream[0], stream[-1]
    with torch.no_grad():
        plane_conv.weight.copy_(torch.rand_like(plane_conv.weight) + 0.1)
        line_conv.weight.fill_(1.0)
    x = torch.zeros(1, 1, 9, 9, 9)
    x[0, 0, 4, 4, 4] = 1.0
    with torch.no_grad():
        response = block(x)[0, stream_index]  # stream s owns channel s (out_s = 1)
    axis = stream_index  # line axis of stream s
    nonzero = response.abs() > 0
    extent = [int(nonzero.any(dim=tuple(a for a in range(3) if a != ax)).sum()) for ax in range(3)]
    assert extent[axis] == 3  # L = 3 along the line
    assert all(extent[a] == 3 for a in range(3) if a != axis)  # d = 3 in the plane
    slices = response.movedim(axis, 0)
    assert torch.allclose(slices[3], slices[4]) and torch.allclose(slices[4], slices[5])
    # the in-plane pattern is the flipped 2D kernel (cross-correlation of an impulse)
    kernel2d = plane_conv.weight[0, 0].squeeze(axis).flip(0, 1)
    assert torch.allclose(slices[4][3:6, 3:6], kernel2d)


@pytest.mark.parametrize(
    "c_in,c_out,m,n,d",
    [(1, 24, 1, 1, 3), (24, 24, 2, 2, 3), (72, 216, 3, 2, 3), (16, 7, 3, 3, 5), (5, 3, 3, 1, 3), (648, 648, 2, 3, 3)],
)
def test_parameter_count_matches_formula(c_in, c_out, m, n, d):
    with torch.device("meta"):
        block = PSC(c_in, c_out, m=m, n=n, kernel_size=d)
    counted = sum(p.numel() for p in block.parameters())
    assert counted == psc_parameter_count(c_in, c_out, m=m, n=n, kernel_size=d)
    # the formula written out by hand, Eq. 5 of the paper with the authors' rounding
    M = max((c_out * c_in * d**3) // (c_in * d**2 + c_out * d), d)
    M_s = min(c_out, M // m)
    L = n * (d - 1) + 1
    by_hand = sum(
        c_in * M_s * d * d + (n - 1) * M_s * M_s * d * d + M_s * o * L + n * M_s + o
        for o in stream_out_channels(c_out, m)
    )
    assert counted == by_hand
    assert block.subspace_widths == (M_s,) * m
    assert M_s == subspace_width(c_in, c_out, m=m, kernel_size=d) == subspace_width(c_in, c_out, m=m, kernel_size=(d,) * 3)


def test_output_split_covers_all_channels():
    assert stream_out_channels(7, 3) == [3, 2, 2]
    assert stream_out_channels(8, 2) == [4, 4]
    block = PSC(4, 7, m=3)
    assert [s[-1].out_channels for s in block.streams] == [3, 2, 2]


def test_gradients_reach_every_stream():
    torch.manual_seed(0)
    block = PSC(3, 8, m=3, n=2)
    block(torch.randn(2, 3, 8, 8, 8)).square().mean().backward()
    for stream in block.streams:
        for param in stream.parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0
