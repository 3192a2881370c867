"""Faster CPU execution of the convolutions psc-seg models are made of (same numbers, allclose).

Measured on a 2-core AVX-512 oneDNN CPU (``benchmarks/blocks.py``, ``benchmarks/RESULTS.md``),
these decide how fast a PmSCn or conv3d network runs, more than its FLOPs:

* **Memory format.** oneDNN convolutions run several times faster on ``channels_last_3d``
  (N, Z, Y, X, C in memory) than on NCDHW tensors. :func:`to_channels_last` converts a model
  or a tensor; a single-channel tensor is both at once, and convolutions then return NCDHW,
  which the next (small-channel) layer pays for, so :func:`conv3d` keeps outputs NDHWC.
* **PyTorch's backend heuristic.** ``F.conv3d`` sends a CPU conv to the slow unfold+GEMM
  kernel (``slow_conv3d_forward``) when ``N * C * Z * Y <= 20480``, a rule made for 2D images:
  a UNet's first layer (C = 1) and its coarsest level (36 channels at 23^3) fall into it and
  run 3-7x slower there. :func:`conv3d` calls oneDNN directly at inference.
* **One input channel.** oneDNN has no fast kernel for C_in = 1 (about 1 GFLOP/s); the same
  conv on two channels (the input twice, the second weight zero) runs about 6x faster.
* **Extra passes.** A ReLU / LeakyReLU after a conv is fused into it (a oneDNN post-op,
  :func:`run_sequential`), and :func:`cat_channels` replaces ``torch.cat``'s slow
  channels-last kernel (PSC streams, UNet skips).
* **Max pooling.** ``F.max_pool3d`` on channels-last tensors is slow, in bfloat16 most of all
  (a UNet's 2x2x2 pooling of 12 x 100^3: 7.8 ms float32, 26 ms bfloat16, one thread);
  :func:`max_pool3d` takes elementwise maxima of strided views, one axis at a time (3.6 ms
  and 3.0 ms).

* **Page faults.** glibc serves every allocation above 32 MiB (a 12-channel float32 feature
  map of 100^3 voxels is 48 MiB) with a fresh ``mmap`` and returns it with ``munmap`` when the
  tensor dies, so each forward pass faults in and zeroes those pages again: a 7 -> 12 (3,1,1)
  conv at 102^3 took 23 ms instead of 4.7 ms. :func:`psc_seg.allocator.keep_freed_memory`
  makes glibc keep freed memory for reuse; the ``psc-seg`` command and predict's worker
  processes call it (``PSC_SEG_MALLOC=system`` opts out).

:func:`conv3d` applies these to one ``nn.Conv3d``; it falls back to the module itself for
anything else (CUDA, other dtypes, dilated or grouped convs, string padding). bfloat16
tensors (predict's ``--precision bfloat16`` on CPU) take the same paths where oneDNN
computes bfloat16 (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: AVX-512 or AMX). With one
thread PyTorch also sends every 1x1x1 conv to the slow kernel (13x slower than oneDNN for
36 -> 12 channels at 68^3), so those go through oneDNN as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _triple

CHANNELS_LAST = torch.channels_last_3d
_ENABLED = [True]


@contextmanager
def fast_paths(enabled: bool) -> Iterator[None]:
    """Switch :func:`conv3d`'s fast paths off (``False``: plain ``conv(x)``) or on, e.g. to
    measure what they bring (``benchmarks/blocks.py``)."""
    before = _ENABLED[0]
    _ENABLED[0] = bool(enabled)
    try:
        yield
    finally:
        _ENABLED[0] = before


def to_channels_last(obj):
    """A 5D tensor (or every 5D parameter of a module, in place) in ``channels_last_3d``."""
    if isinstance(obj, nn.Module):
        return obj.to(memory_format=CHANNELS_LAST)
    if obj.dim() == 5:
        return obj.contiguous(memory_format=CHANNELS_LAST)
    return obj


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is a 5D tensor laid out as ``channels_last_3d`` (and not only trivially)."""
    return x.dim() == 5 and x.size(1) > 1 and x.is_contiguous(memory_format=CHANNELS_LAST)


def fast_enabled() -> bool:
    """Whether the fast paths are on (see :func:`fast_paths`)."""
    return _ENABLED[0]


def onednn_bf16() -> bool:
    """Whether PyTorch's oneDNN computes bfloat16 on this CPU (AVX-512 or AMX)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# bfloat16 where oneDNN computes it (AVX-512 or AMX; elsewhere PyTorch's own kernels run it)
_FAST_DTYPES = (torch.float32, torch.bfloat16) if onednn_bf16() else (torch.float32,)


def fast_dtype(x: torch.Tensor) -> bool:
    """Whether ``x`` is a CPU tensor of a dtype the fast paths take (float32; bfloat16 where
    oneDNN computes it) and the fast paths are on."""
    return _ENABLED[0] and x.device.type == "cpu" and x.dtype in _FAST_DTYPES


def _eligible(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    return (
        fast_dtype(x)
        and conv.weight.dtype == x.dtype
        and x.dim() == 5
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.dilation == (1, 1, 1)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def widen_single_channel(x: torch.Tensor) -> torch.Tensor:
    """``(N, 1, Z, Y, X)`` -> ``(N, 2, Z, Y, X)`` channels_last, the input twice (one copy
    pass); used with a weight whose second input channel is zero (:func:`conv3d`)."""
    return x.expand(-1, 2, -1, -1, -1).contiguous(memory_format=CHANNELS_LAST)


def _fusable(activation: nn.Module | None) -> tuple[str, list[float]] | None:
    """oneDNN post-op name and scalars for an activation module it can fuse, else None."""
    if type(activation) is nn.ReLU:
        return "relu", []
    if type(activation) is nn.LeakyReLU:
        return "leaky_relu", [float(activation.negative_slope)]
    return None


def _pointwise_op():
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):  # a build without oneDNN's fused entry point
        return None


_CONV_POINTWISE = _pointwise_op()


def conv3d(conv: nn.Conv3d, x: torch.Tensor, *, widened: torch.Tensor | None = None,
           activation: nn.Module | None = None) -> torch.Tensor:
    """``activation(conv(x))`` (or ``conv(x)``), computed the fastest known way on CPU (see
    the module docstring); at inference a ReLU / LeakyReLU is fused into the oneDNN
    convolution (no extra pass over the output).

    Args:
        conv: the convolution (its parameters are used as they are; nothing is cached).
        x: ``(N, C_in, Z, Y, X)``.
        widened: for ``C_in = 1``, ``widen_single_channel(x)`` if the caller already made it
            (a PSC block's streams share one).
        activation: an activation module applied to the output, or None.

    Returns ``(N, C_out, Z', Y', X')``, equal to ``activation(conv(x))`` up to float rounding;
    NDHWC when the fast path ran.
    """
    if not _eligible(conv, x):
        y = conv(x)
        return y if activation is None else activation(y)
    weight, bias = conv.weight, conv.bias
    if conv.in_channels == 1:
        x = widen_single_channel(x) if widened is None else widened
        weight = torch.cat([weight, torch.zeros_like(weight)], dim=1).contiguous(memory_format=CHANNELS_LAST)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        # oneDNN's direct entry points have no autograd formula; F.conv3d picks oneDNN here
        # anyway once the input has two channels, and keeps the gradients
        y = F.conv3d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return y if activation is None else activation(y)
    if not is_channels_last(x):
        x = x.contiguous(memory_format=CHANNELS_LAST)
    if not weight.is_contiguous(memory_format=CHANNELS_LAST):
        weight = weight.contiguous(memory_format=CHANNELS_LAST)
    args = (x, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    fused = _fusable(activation)
    if fused is not None and _CONV_POINTWISE is not None:
        return _CONV_POINTWISE(*args, fused[0], fused[1], "")
    y = torch.mkldnn_convolution(*args)
    return y if activation is None else activation(y)


def run_sequential(layers: nn.Sequential, x: torch.Tensor, *, widened: torch.Tensor | None = None) -> torch.Tensor:
    """``layers(x)`` with every ``nn.Conv3d`` through :func:`conv3d` and the activation that
    follows a conv fused into it; ``widened`` goes to the first layer if it is a
    single-input-channel conv.

    A layer that has a ``forward_fused(x, *, activation)`` method (a PSC block, which fuses
    the activation into its streams' last convs) is run through it, with the activation that
    follows it (so this module does not import :mod:`psc_seg.nn.psc`)."""
    items = list(layers)
    i = 0
    while i < len(items):
        layer = items[i]
        following = items[i + 1] if i + 1 < len(items) else None
        activation = following if _fusable(following) is not None else None
        if type(layer) is nn.Conv3d:
            x = conv3d(layer, x, widened=widened if i == 0 else None, activation=activation)
        elif hasattr(layer, "forward_fused"):
            x = layer.forward_fused(x, activation=activation)
        else:
            activation = None
            x = layer(x)
        i += 2 if activation is not None else 1
    return x


def max_pool3d(pool: nn.MaxPool3d, x: torch.Tensor) -> torch.Tensor:
    """``pool(x)``; at inference, for a CPU channels-last ``x`` and a pooling whose windows
    tile the volume (stride = kernel, no padding or dilation, floor mode), computed as
    elementwise maxima of the strided views along each axis in turn (see the module
    docstring): the same numbers (NaN propagates as in ``F.max_pool3d``), NDHWC."""
    kernel = _triple(pool.kernel_size)
    if not (_ENABLED[0] and x.device.type == "cpu" and is_channels_last(x) and _triple(pool.stride) == kernel
            and _triple(pool.padding) == (0, 0, 0) and _triple(pool.dilation) == (1, 1, 1)
            and not pool.ceil_mode and not pool.return_indices and max(kernel) > 1
            and not (torch.is_grad_enabled() and x.requires_grad)):
        return pool(x)
    for axis, k in zip((2, 3, 4), kernel):
        if k > 1:
            size = x.size(axis) // k * k
            views = [x.narrow(axis, 0, size)[(slice(None),) * axis + (slice(i, None, k),)] for i in range(k)]
            x = views[0]
            for view in views[1:]:
                x = torch.maximum(x, view)
    return x


def cat_channels(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors, dim=1)`` for ``(N, C_i, Z, Y, X)`` tensors. When they are NDHWC
    (views such as center crops included), the result is built NDHWC by copying each into its
    channel slice of one buffer: several times faster than ``torch.cat``'s channels-last
    kernel (measured 1.3 ms vs 12 ms for two 6-channel 64^3 tensors on 2 threads). Its
    gradient is the channel slices of the output's gradient (views, nothing copied)."""
    first = tensors[0]
    if not (_ENABLED[0] and first.dim() == 5 and first.device.type == "cpu"
            and all(t.dim() == 5 and t.stride(1) == 1 and t.size(1) > 1 for t in tensors)):
        return torch.cat(tensors, dim=1)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _CatChannels.apply(*tensors)
    return _cat_channels_last(tensors)


def _cat_channels_last(tensors) -> torch.Tensor:
    n, _, z, y, x = tensors[0].shape
    out = tensors[0].new_empty((n, z, y, x, sum(t.size(1) for t in tensors)))
    start = 0
    for t in tensors:
        out[..., start:start + t.size(1)] = t.permute(0, 2, 3, 4, 1)
        start += t.size(1)
    return out.permute(0, 4, 1, 2, 3)


class _CatChannels(torch.autograd.Function):
    """:func:`cat_channels` under autograd: writing into slices of a buffer would make autograd
    zero-fill and copy a full-size gradient for the buffer (``CopySlices``); here the backward
    hands each input its slice of the gradient."""

    @staticmethod
    def forward(ctx, *tensors: torch.Tensor) -> torch.Tensor:
        ctx.channels = [t.size(1) for t in tensors]
        return _cat_channels_last(tensors)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return tuple(grad.split(ctx.channels, dim=1))
