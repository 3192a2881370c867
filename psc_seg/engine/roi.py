"""``Roi``: an axis-aligned box in voxels, ``(z, y, x)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def _triple(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value, value, value)
    out = tuple(int(v) for v in value)
    if len(out) != 3:
        raise ValueError(f"{name} must have 3 values (z, y, x), got {tuple(value)}")
    return out


@dataclass(frozen=True)
class Roi:
    """Region of interest: ``offset`` (first voxel) and ``shape``, each ``(z, y, x)`` in voxels.

    The end is exclusive: ``Roi((0, 0, 0), (4, 4, 4))`` covers voxels 0..3 on every axis.
    Offsets may be negative (a read ROI reaching outside the volume).
    """

    offset: tuple[int, ...]
    shape: tuple[int, ...]

    def __init__(self, offset: Sequence[int], shape: Sequence[int]) -> None:
        offset, shape = _triple(offset, "offset"), _triple(shape, "shape")
        if min(shape) < 0:
            raise ValueError(f"Roi shape must be >= 0, got {shape}")
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "shape", shape)

    @property
    def begin(self) -> tuple[int, ...]:
        return self.offset

    @property
    def end(self) -> tuple[int, ...]:
        return tuple(o + s for o, s in zip(self.offset, self.shape))

    @property
    def size(self) -> int:
        """Number of voxels."""
        z, y, x = self.shape
        return z * y * x

    @property
    def empty(self) -> bool:
        return self.size == 0

    def grow(self, amount_neg: int | Sequence[int], amount_pos: int | Sequence[int] | None = None) -> Roi:
        """Grown by ``amount_neg`` voxels before the begin and ``amount_pos`` (default: the
        same) after the end, per axis; negative amounts shrink."""
        neg = _triple(amount_neg, "amount")
        pos = neg if amount_pos is None else _triple(amount_pos, "amount")
        return Roi(tuple(o - n for o, n in zip(self.offset, neg)),
                   tuple(s + n + p for s, n, p in zip(self.shape, neg, pos)))

    def shift(self, by: Sequence[int]) -> Roi:
        return Roi(tuple(o + b for o, b in zip(self.offset, _triple(by, "shift"))), self.shape)

    def intersect(self, other: Roi) -> Roi:
        """The common part (an empty ROI at the clipped begin if they do not overlap)."""
        begin = tuple(max(a, b) for a, b in zip(self.begin, other.begin))
        end = tuple(min(a, b) for a, b in zip(self.end, other.end))
        return Roi(begin, tuple(max(0, e - b) for b, e in zip(begin, end)))

    def contains(self, other: Roi) -> bool:
        return all(a <= b for a, b in zip(self.begin, other.begin)) and all(
            a >= b for a, b in zip(self.end, other.end))

    def snap(self, step: int | Sequence[int], *, mode: str = "grow") -> Roi:
        """Begin and end moved to multiples of ``step``: ``"grow"`` outwards, ``"shrink"`` inwards."""
        step = _triple(step, "step")
        if mode not in ("grow", "shrink"):
            raise ValueError(f"snap mode must be 'grow' or 'shrink', got {mode!r}")
        if mode == "grow":
            begin = tuple((b // s) * s for b, s in zip(self.begin, step))
            end = tuple(-(-e // s) * s for e, s in zip(self.end, step))
        else:
            begin = tuple(-(-b // s) * s for b, s in zip(self.begin, step))
            end = tuple(max(bb, (e // s) * s) for e, s, bb in zip(self.end, step, begin))
        return Roi(begin, tuple(e - b for b, e in zip(begin, end)))

    def to_slices(self) -> tuple[slice, ...]:
        """``(z, y, x)`` slices (only meaningful for a ROI inside the array)."""
        return tuple(slice(b, e) for b, e in zip(self.begin, self.end))

    def relative_to(self, other: Roi) -> Roi:
        """This ROI in the coordinates of ``other`` (whose begin becomes 0)."""
        return Roi(tuple(a - b for a, b in zip(self.offset, other.offset)), self.shape)

    def __repr__(self) -> str:
        return f"Roi(offset={self.offset}, shape={self.shape})"
