"""The PmSCn block: Parallel Separable 3D Convolution (Gonda et al., BMVC 2018).

``PSC(in, out, m=m, n=n)`` replaces ``Conv3d(in, out, d)`` (n = 1) or a group of n consecutive
d^3 convolutions (n >= 2). m parallel streams read the same input; stream s runs n 2D
convolutions in one plane and one 1D convolution along the remaining axis::

    stream 0:  (1,d,d) in (y,x)  ...  then (L,1,1) along z
    stream 1:  (d,1,d) in (z,x)  ...  then (1,L,1) along y
    stream 2:  (d,d,1) in (z,y)  ...  then (1,1,L) along x

    x ──┬── 2D(in->M_s), act, [2D(M_s->M_s), act] x (n-1), 1D(M_s->out_0) ──┐
        ├── ...                                                           ├─ concat -> (N, out, Z, Y, X)
        └── ...                                     1D(M_s->out_{m-1}) ──┘

with ``L = n (d - 1) + 1`` so that the receptive field (and, unpadded, the shrinkage) equals
that of n stacked d^3 convolutions. A per-axis kernel ``(kz, ky, kx)`` (``(1, 3, 3)`` for
anisotropic EM) gives each 2D kernel its plane's sizes and each 1D conv ``n (k - 1) + 1`` for
its axis's k: the receptive field is that of n stacked ``(kz, ky, kx)`` convolutions. The block ends in a convolution: the host model puts its
usual norm/activation after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import torch
from torch import nn

from psc_seg.nn.fast import cat_channels, conv3d, fast_dtype, run_sequential, widen_single_channel
from psc_seg.nn.layers import make_activation, make_norm

# For each stream: the axis (0=z, 1=y, 2=x) of its 1D convolution; the 2D plane is the other two.
STREAM_LINE_AXIS = (0, 1, 2)


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} must be an int or three ints (z, y, x), got {value}")
    return value  # type: ignore[return-value]


def kernel_triple(kernel_size: int | Sequence[int]) -> tuple[int, int, int]:
    """``kernel_size`` as ``(kz, ky, kx)``: an int is the same on every axis; each size must be
    an odd positive int (a size of 1 convolves nothing along its axis, e.g. ``(1, 3, 3)`` for
    anisotropic EM). Anything else is a ValueError."""
    def whole(value) -> bool:
        return isinstance(value, Integral) and not isinstance(value, bool)

    sizes = [kernel_size] * 3 if whole(kernel_size) else kernel_size
    if not (isinstance(sizes, Sequence) and not isinstance(sizes, str) and len(sizes) == 3
            and all(whole(k) and k >= 1 and k % 2 for k in sizes)):
        raise ValueError(f"kernel_size must be an odd int or three odd ints (z, y, x), got {kernel_size!r}")
    return tuple(int(k) for k in sizes)  # type: ignore[return-value]


def subspace_width(in_channels: int, out_channels: int, *, m: int, kernel_size: int | Sequence[int],
                   line_axis: int = 0) -> int:
    """Width ``M_s`` of every 2D convolution of the stream whose 1D convolution runs along
    ``line_axis`` (Eq. 5 of the paper, authors' rounding), for a ``(kz, ky, kx)`` kernel (an
    int d: d^3, the same width for every stream).

    With ``K = kz ky kx`` the 3D kernel's size, ``k = kernel_size[line_axis]`` the line's and
    ``P = K / k`` the plane's: ``M = floor(out * in * K / (in * P + out * k))`` (so that the
    stream's 2D and 1D convs have about the parameters of the d^3 conv), ``M = max(M,
    max(kernel_size))``, ``M_s = min(out, floor(M / m))``. For d^3: ``M = floor(out * in * d^3
    / (in * d^2 + out * d))``.
    """
    kernel = kernel_triple(kernel_size)
    volume = kernel[0] * kernel[1] * kernel[2]
    line = kernel[line_axis]
    M = (out_channels * in_channels * volume) // (in_channels * (volume // line) + out_channels * line)
    M = max(M, max(kernel))
    return min(out_channels, M // m)


def stream_out_channels(out_channels: int, m: int) -> list[int]:
    """Output channels of each stream: ``out // m``, one more for the first ``out % m``."""
    return [out_channels // m + (1 if s < out_channels % m else 0) for s in range(m)]


def psc_parameter_count(
    in_channels: int, out_channels: int, *, m: int = 1, n: int = 1, kernel_size: int | Sequence[int] = 3,
    bias: bool = True,
) -> int:
    """Number of parameters of ``PSC(in, out, m=m, n=n, kernel_size=...)`` without norms (an int
    d or ``(kz, ky, kx)``)."""
    kernel = kernel_triple(kernel_size)
    total = 0
    for axis, out_s in zip(STREAM_LINE_AXIS, stream_out_channels(out_channels, m)):
        M_s = subspace_width(in_channels, out_channels, m=m, kernel_size=kernel, line_axis=axis)
        plane = kernel[0] * kernel[1] * kernel[2] // kernel[axis]
        L = n * (kernel[axis] - 1) + 1
        total += in_channels * M_s * plane + (n - 1) * M_s * M_s * plane + M_s * out_s * L
        if bias:
            total += n * M_s + out_s
    return total


class PSC(nn.Module):
    """Parallel separable 3D convolution, a drop-in for ``Conv3d(in, out, d)``.

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C_out; the block always returns exactly this many.
        m: number of parallel streams (1, 2 or 3); stream s has the orientation of the table
            in the module docstring. m = 1, n = 1 is R(2+1)D.
        n: number of 2D convolutions per stream; the block replaces n stacked d^3 convs.
        kernel_size: d (odd), or per axis ``(kz, ky, kx)`` (each odd): the block stands for n
            convs of that kernel. Stream s's 2D kernel takes the sizes of its plane's axes and
            its 1D conv has length ``L = n (k - 1) + 1`` for its line axis's size k, so every
            stream sees ``n (k_a - 1) + 1`` voxels along each axis a. Any odd sizes work: with
            ``(1, 3, 3)`` stream 0 is 2D in (y, x) with a pointwise 1D conv along z, and the
            2D kernels of streams 1 and 2 are 1 x 3 (lines along x and y). Each stream's width
            follows its kernels (:func:`subspace_width`).
        padding: ``"same"`` (2D convs pad (k-1)/2 per axis in their plane, the 1D conv n(k-1)/2
            along its line) or ``"valid"`` (no padding: each axis shrinks by n(k-1)).
        stride: int or (z, y, x); the first 2D conv takes the in-plane stride, the 1D conv the
            stride along its line.
        activation: activation between the convs inside a stream (``"relu"``,
            ``"leaky_relu"``, ``"elu"``, ``None``...). Nothing follows the last (1D) conv.
        norm: optional norm before each inner activation (``"batch"``, ``"instance"``,
            ``"group"``, ``None``).
        bias: whether the convolutions have a bias.

    Shapes: input ``(N, C_in, Z, Y, X)`` -> output ``(N, C_out, Z', Y', X')``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        m: int = 1,
        n: int = 1,
        kernel_size: int | Sequence[int] = 3,
        padding: str = "same",
        stride: int | Sequence[int] = 1,
        activation: str | None = "relu",
        norm: str | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if m not in (1, 2, 3):
            raise ValueError(f"PSC: m must be 1, 2 or 3 (number of streams), got {m}")
        if n < 1:
            raise ValueError(f"PSC: n must be >= 1 (2D convs per stream), got {n}")
        kernel = kernel_triple(kernel_size)
        if padding not in ("same", "valid"):
            raise ValueError(f"PSC: padding must be 'same' or 'valid', got {padding!r}")
        if out_channels < m:
            raise ValueError(f"PSC: out_channels ({out_channels}) must be >= m ({m})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.m, self.n, self.kernel_size, self.padding = m, n, kernel, padding
        self.stride = _triple(stride, "stride")
        # per axis: the length of a 1D conv along it; per stream: the width of its 2D convs
        self.line_lengths = tuple(n * (k - 1) + 1 for k in kernel)
        self.subspace_widths = tuple(
            subspace_width(in_channels, out_channels, m=m, kernel_size=kernel, line_axis=axis)
            for axis in STREAM_LINE_AXIS[:m]
        )
        self.streams = nn.ModuleList(
            self._make_stream(axis, out_s, M_s, activation=activation, norm=norm, bias=bias)
            for axis, out_s, M_s in zip(STREAM_LINE_AXIS, stream_out_channels(out_channels, m), self.subspace_widths)
        )

    def _make_stream(
        self, line_axis: int, out_s: int, M_s: int, *, activation: str | None, norm: str | None, bias: bool
    ) -> nn.Sequential:
        n, L = self.n, self.line_lengths[line_axis]
        same = self.padding == "same"
        plane_kernel = list(self.kernel_size)
        plane_kernel[line_axis] = 1
        plane_pad = [(k - 1) // 2 if same else 0 for k in plane_kernel]
        plane_stride = list(self.stride)
        plane_stride[line_axis] = 1
        line_kernel = [1, 1, 1]
        line_kernel[line_axis] = L
        line_pad = [0, 0, 0]
        line_pad[line_axis] = (L - 1) // 2 if same else 0
        line_stride = [1, 1, 1]
        line_stride[line_axis] = self.stride[line_axis]

        layers: list[nn.Module] = []
        channels = self.in_channels
        for i in range(n):
            layers.append(
                nn.Conv3d(
                    channels,
                    M_s,
                    tuple(plane_kernel),
                    stride=tuple(plane_stride) if i == 0 else 1,
                    padding=tuple(plane_pad),
                    bias=bias,
                )
            )
            if norm is not None:
                layers.append(make_norm(norm, M_s))
            act = make_activation(activation)
            if act is not None:
                layers.append(act)
            channels = M_s
        layers.append(
            nn.Conv3d(M_s, out_s, tuple(line_kernel), stride=tuple(line_stride), padding=tuple(line_pad), bias=bias)
        )
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_fused(x)

    def forward_fused(self, x: torch.Tensor, *, activation: nn.Module | None = None) -> torch.Tensor:
        """``activation(self(x))``: the host's activation (an elementwise module or None) is
        applied to each stream's output before the concatenation, fused into the stream's
        last convolution where :mod:`psc_seg.nn.fast` can. :func:`psc_seg.nn.fast.run_sequential`
        calls this method on any layer that has it, with the activation that follows."""
        # a one-channel input is widened once for all streams (see psc_seg.nn.fast)
        widened = None
        if self.in_channels == 1 and fast_dtype(x):
            widened = widen_single_channel(x)
        outs = []
        for stream in self.streams:
            y = run_sequential(stream[:-1], x, widened=widened)
            outs.append(conv3d(stream[-1], y, activation=activation))
        return outs[0] if len(outs) == 1 else cat_channels(outs)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, m={self.m}, n={self.n}, "
            f"kernel_size={self.kernel_size}, padding={self.padding!r}, stride={self.stride}, "
            f"M_s={self.subspace_widths}, L={self.line_lengths}"
        )
