"""Layer factories by name: activations and norms (a leaf of :mod:`psc_seg.nn`: it imports
only torch).

The conv spec that picks conv3d or PmSCn, and :func:`~psc_seg.nn.specs.make_convs`, live in
:mod:`psc_seg.nn.specs`.
"""

from __future__ import annotations

from torch import nn

_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    # the slope of the authors' EM UNet
    "leaky_relu": lambda: nn.LeakyReLU(0.005, inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "gelu": lambda: nn.GELU(),
    "sigmoid": lambda: nn.Sigmoid(),
    "softmax": lambda: nn.Softmax(dim=1),
}


def make_activation(name: str | None) -> nn.Module | None:
    """An activation by name (``relu``, ``leaky_relu`` (slope 0.005), ``elu``, ``gelu``,
    ``sigmoid``, ``softmax`` over channels), or None for ``None`` / ``"none"``."""
    if name is None or name == "none":
        return None
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)} or None") from None


def make_norm(name: str | None, channels: int) -> nn.Module | None:
    """A 3D norm by name: ``batch``, ``instance`` (affine), ``group`` (8 groups or fewer), or None."""
    if name is None or name == "none":
        return None
    if name == "batch":
        return nn.BatchNorm3d(channels)
    if name == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if name == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm {name!r}; choose one of 'batch', 'instance', 'group' or None")
