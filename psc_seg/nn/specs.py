"""Conv specs: the spec that picks conv3d or PmSCn, and the convolutions it stands for.

A conv spec is one of ``"conv3d"``, ``"psc(m,n)"`` (m in 1..3 streams, n >= 1 2D convs per
stream) or ``"r2plus1d"`` (= ``psc(1,1)``). Models build their convolutions through
:func:`make_convs`, which applies the replacement rule of DESIGN.md section 2 (in a dense block
through :func:`dense_groups`);
:func:`receptive_span` and :func:`valid_shrink` give what one of those convolutions does to
the size of each axis. This module sits above :mod:`psc_seg.nn.psc`; the activation and norm
factories are in :mod:`psc_seg.nn.layers`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from psc_seg.nn.psc import PSC, kernel_triple

ACCEPTED_SPECS = '"conv3d", "psc(m,n)" with m in 1..3 and n >= 1 (e.g. "psc(2,2)"), or "r2plus1d"'


@dataclass(frozen=True)
class ConvSpec:
    """A parsed conv spec: ``kind`` is ``"conv3d"`` or ``"psc"``; m streams, n 2D convs each."""

    kind: str
    m: int = 1
    n: int = 1

    def __str__(self) -> str:
        return "conv3d" if self.kind == "conv3d" else f"psc({self.m},{self.n})"


_PSC_RE = re.compile(r"^\s*psc\s*\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)\s*$", re.IGNORECASE)


def parse_conv_spec(spec: str | ConvSpec) -> ConvSpec:
    """Parse ``"conv3d"``, ``"psc(m,n)"`` or ``"r2plus1d"``; anything else is a ValueError."""
    if isinstance(spec, ConvSpec):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"conv spec must be a string, got {spec!r}; accepted: {ACCEPTED_SPECS}")
    text = spec.strip().lower()
    if text == "conv3d":
        return ConvSpec("conv3d")
    if text == "r2plus1d":
        return ConvSpec("psc", 1, 1)
    match = _PSC_RE.match(text)
    if match is None:
        raise ValueError(f"bad conv spec {spec!r}; accepted: {ACCEPTED_SPECS}")
    m, n = int(match.group(1)), int(match.group(2))
    if m not in (1, 2, 3) or n < 1:
        raise ValueError(f"bad conv spec {spec!r} (m={m}, n={n}); accepted: {ACCEPTED_SPECS}")
    return ConvSpec("psc", m, n)


def make_convs(
    spec: str | ConvSpec,
    in_channels: int,
    out_channels: int,
    *,
    num_convs: int = 1,
    kernel_size: int | Sequence[int] = 3,
    padding: str = "same",
    stride: int | Sequence[int] = 1,
    activation: str | None = "relu",
    bias: bool = True,
) -> list[nn.Module]:
    """The convolutions that stand for a group of ``num_convs`` consecutive d^3 convs
    ``in -> out -> ... -> out`` (no pooling between them), by the replacement rule:

    - ``conv3d``: ``num_convs`` plain ``Conv3d``;
    - ``psc(m,1)``: each conv becomes its own ``PSC(m, 1)``;
    - ``psc(m,n)``, n >= 2: the whole group becomes one ``PSC(m, n)``.

    ``kernel_size``: d, or ``(kz, ky, kx)`` per axis (each odd; :func:`~psc_seg.nn.psc.kernel_triple`).
    The host puts its norm/activation after each returned module; ``activation`` is what
    a PSC uses between its inner convs. ``stride`` goes to the first module.
    """
    parsed = parse_conv_spec(spec)
    kernel_size = kernel_triple(kernel_size)
    pad = tuple((k - 1) // 2 if padding == "same" else 0 for k in kernel_size)
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    if parsed.kind == "psc" and parsed.n >= 2:
        return [
            PSC(in_channels, out_channels, m=parsed.m, n=parsed.n, kernel_size=kernel_size, padding=padding,
                stride=stride, activation=activation, bias=bias)
        ]
    convs: list[nn.Module] = []
    for i in range(num_convs):
        c_in = in_channels if i == 0 else out_channels
        s = stride if i == 0 else 1
        if parsed.kind == "conv3d":
            convs.append(nn.Conv3d(c_in, out_channels, kernel_size, stride=s, padding=pad, bias=bias))
        else:
            convs.append(
                PSC(c_in, out_channels, m=parsed.m, n=1, kernel_size=kernel_size, padding=padding, stride=s,
                    activation=activation, bias=bias)
            )
    return convs


def dense_groups(spec: str | ConvSpec, num_layers: int) -> list[ConvSpec]:
    """The replacement rule in a dense block of ``num_layers`` single-conv layers: the spec of
    each group of consecutive layers that becomes one block, its ``n`` the group's depth.

    ``conv3d`` and ``psc(m,1)``: one group per layer; ``psc(m,n)``, n >= 2: groups of n layers,
    each one ``PSC(m,n)`` producing the n layers' channels at once, and a remainder of r < n
    layers one ``PSC(m,r)`` (4 layers with ``psc(2,3)``: ``psc(2,3)``, ``psc(2,1)``)."""
    parsed = parse_conv_spec(spec)
    if parsed.kind == "conv3d" or parsed.n == 1:
        return [parsed] * num_layers
    full, rest = divmod(num_layers, parsed.n)
    return [parsed] * full + ([ConvSpec("psc", parsed.m, rest)] if rest else [])


def receptive_span(module: nn.Module) -> tuple[int, int, int]:
    """Receptive field of ``module`` (a Conv3d or PSC) minus one, per axis ``(z, y, x)``: how
    much each axis would shrink through it without padding."""
    if isinstance(module, PSC):
        return tuple(module.n * (k - 1) for k in module.kernel_size)  # type: ignore[return-value]
    if isinstance(module, nn.Conv3d):
        return tuple(k - 1 for k in module.kernel_size)  # type: ignore[return-value]
    raise TypeError(f"not a convolution: {type(module).__name__}")


def valid_shrink(module: nn.Module) -> tuple[int, int, int]:
    """How much each axis ``(z, y, x)`` shrinks through ``module`` (a Conv3d or PSC) as padded."""
    padded = module.padding == "same" if isinstance(module, PSC) else module.padding != (0, 0, 0)
    return (0, 0, 0) if padded else receptive_span(module)
