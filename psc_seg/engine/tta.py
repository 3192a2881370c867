"""Mirror test-time augmentation: each block's prediction averaged over axis flips and transposes.

``flips``: the 8 combinations of flipping z, y and x. ``flips+transposes``: those, each also
with every permutation of the axes that have the same voxel size and that the network treats
alike (same shape step and context; e.g. y and x of anisotropic EM: 16 passes; all three of an
isotropic MRI volume: 48). A pass feeds the network the transformed block and maps its output
back:

* class probabilities (and any per-voxel output) are transformed back and averaged (before
  predict's argmax);
* affinities also change channel: a pass sees offset ``o`` as the vector ``u = L^-1 o`` of the
  original volume (``L`` the transform's flips and permutation). Where ``u`` is another
  channel's offset ``o'``, it is that channel; where ``u = -o'`` (a flipped z-affinity to
  voxel ``p - 1`` is an affinity to ``p + 1``) it is that channel shifted back by ``o'``:
  ``aff_o'[p] = pass[p + o']``. The shift needs the pass's output ``max |o|`` voxels beyond the
  block's write region on each side: blockwise predict plans that margin
  (:func:`psc_seg.engine.inference.plan_geometry`). Offsets that a transform does not map
  onto the offsets (``(-1, -2, 0)`` under a z flip) are refused.

Every pass of a block runs on the block's own read region, so blockwise results do not depend
on the block shape or the number of workers: the read regions start on one lattice of the
network's shape step and have one size modulo it, so the flipped passes' pooling windows are
one lattice too, anchored at the far end of the padded volume. (Where the volume's size fits
that lattice, e.g. a whole-volume block whose output size is the volume's, each flipped pass
is exactly the network's prediction of the flipped volume.)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from psc_seg.errors import UserError

TTA_MODES = ("none", "flips", "flips+transposes")
SAME_VOXEL_SIZE = 0.01  # relative difference below which two axes count as equally sampled


@dataclass(frozen=True)
class Transform:
    """Flip ``flips`` (spatial axes, 0 = z), then permute the spatial axes: axis ``i`` of the
    result is axis ``perm[i]`` of the flipped volume."""

    flips: tuple[int, ...]
    perm: tuple[int, int, int]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, Z, Y, X)`` -> the transformed tensor."""
        if self.flips:
            x = x.flip([2 + a for a in self.flips])
        return x.permute(0, 1, *(2 + p for p in self.perm))

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`apply` on a network output ``(N, C, Z, Y, X)``."""
        y = y.permute(0, 1, *(2 + self.perm.index(a) for a in range(3)))
        return y.flip([2 + a for a in self.flips]) if self.flips else y

    def back(self, offset: Sequence[int]) -> tuple[int, int, int]:
        """The original volume's vector that the transformed volume's ``offset`` stands for."""
        flipped = [0, 0, 0]
        for i, p in enumerate(self.perm):
            flipped[p] = int(offset[i])
        return tuple(-v if a in self.flips else v for a, v in enumerate(flipped))  # type: ignore[return-value]


@dataclass(frozen=True)
class MirrorTTA:
    """The passes of one TTA mode and, for affinities, where each output channel comes from.

    ``sources[t][j]``: for pass ``t`` and output channel ``j``, ``(i, shift)``: the pass's
    channel ``i`` transformed back, shifted so that ``out[p] = back[p + shift]`` (``shift`` is
    ``(0, 0, 0)`` or channel ``j``'s offset). None for per-voxel outputs (no channel moves)."""

    mode: str
    transforms: tuple[Transform, ...]
    sources: tuple[tuple[tuple[int, tuple[int, int, int]], ...], ...] | None

    def average(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The mean over the passes of ``forward`` (the network and its final activation, float32
        out) on ``x`` ``(N, C, Z, Y, X)``, each mapped back."""
        total = None
        for t, transform in enumerate(self.transforms):
            y = transform.invert(forward(transform.apply(x)))
            if self.sources is not None:
                y = torch.stack([_shifted(y[:, i], shift) for i, shift in self.sources[t]], dim=1)
            total = y.float().clone() if total is None else total.add_(y)
        return total.div_(len(self.transforms))


def _shifted(y: torch.Tensor, shift: tuple[int, int, int]) -> torch.Tensor:
    """``out[p] = y[p + shift]`` on ``(N, Z, Y, X)``; the ``|shift|`` voxels at the far side wrap
    around (predict's margin keeps them out of the written region)."""
    if not any(shift):
        return y
    return torch.roll(y, shifts=tuple(-s for s in shift), dims=(1, 2, 3))


def plan_tta(mode: str, *, offsets: Sequence[Sequence[int]] | None, voxel_size: Sequence[float] | None,
             model) -> MirrorTTA | None:
    """The :class:`MirrorTTA` of ``mode`` (None for ``"none"``).

    ``offsets``: the affinity offsets of the network's channels, or None for per-voxel outputs.
    ``voxel_size``: the input's ``(z, y, x)`` voxel size (None: unknown; then axes count as
    alike when the network treats them alike). ``model``: the network predict runs: axes
    whose ``shape_step`` or ``context`` differ are not permuted.
    UserError for an unknown mode or offsets that a transform does not map onto themselves."""
    if mode not in TTA_MODES:
        raise UserError(f"{{tta}} must be one of {', '.join(TTA_MODES)}, got {mode!r}", options=("tta",))
    if mode == "none":
        return None
    flips = [tuple(a for a in range(3) if bits >> a & 1) for bits in range(8)]
    perms = [(0, 1, 2)] if mode == "flips" else transposes(voxel_size, model)
    transforms = tuple(Transform(f, p) for p in perms for f in flips)
    sources = None
    if offsets is not None:
        offsets = [tuple(int(v) for v in o) for o in offsets]
        sources = tuple(_channel_sources(t, offsets, mode) for t in transforms)
    return MirrorTTA(mode, transforms, sources)


def transposes(voxel_size: Sequence[float] | None, model) -> list[tuple[int, int, int]]:
    """The axis permutations of ``flips+transposes``: those that map every axis to one with the
    same voxel size (within 1 %) that the network treats alike."""
    def alike(a: int, b: int) -> bool:
        same_net = model.shape_step[a] == model.shape_step[b] and model.context[a] == model.context[b]
        if voxel_size is None:
            return same_net
        va, vb = float(voxel_size[a]), float(voxel_size[b])
        return same_net and abs(va - vb) <= SAME_VOXEL_SIZE * max(va, vb)

    return [p for p in itertools.permutations(range(3)) if all(alike(a, p[a]) for a in range(3))]


def _channel_sources(transform: Transform, offsets: list[tuple[int, ...]], mode: str):
    seen = {transform.back(o): i for i, o in enumerate(offsets)}
    sources = []
    for offset in offsets:
        negated = tuple(-v for v in offset)
        if offset in seen:
            sources.append((seen[offset], (0, 0, 0)))
        elif negated in seen:
            sources.append((seen[negated], offset))
        else:
            raise UserError(f"{{tta}} {mode}: the affinity offsets {', '.join(map(str, offsets))} are not mapped onto "
                            f"themselves by flipping axes {transform.flips or '()'} and permuting them to "
                            f"{transform.perm}, so the flipped predictions cannot be averaged; predict without "
                            "{tta}", options=("tta",))
    return tuple(sources)


def tta_margin(tta: MirrorTTA | None) -> tuple[int, int, int]:
    """Voxels of output a pass of ``tta`` needs beyond the write region on each side, per axis:
    the largest shift of an affinity channel."""
    if tta is None or tta.sources is None:
        return (0, 0, 0)
    return tuple(max(abs(shift[a]) for sources in tta.sources for _, shift in sources)  # type: ignore[return-value]
                 for a in range(3))
