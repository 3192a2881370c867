"""Shape checks shared by the models' shape API (``output_shape``, ``valid_output_shape``...)."""

from __future__ import annotations

from collections.abc import Sequence


def check_divisible(model: str, shape: Sequence[int], step: Sequence[int]) -> tuple[int, int, int]:
    """``shape`` as a tuple if each axis divides by ``step``; else a ValueError naming the axis."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"{model}: shape must be (z, y, x), got {shape}")
    for axis, (size, st) in enumerate(zip(shape, step)):
        if size % st:
            raise ValueError(
                f"{model}: input shape {shape} does not divide by the total downsampling {tuple(step)} "
                f"along axis {'zyx'[axis]}; use a multiple of {st}"
            )
    return shape  # type: ignore[return-value]


def round_up(shape: Sequence[int], step: Sequence[int]) -> tuple[int, int, int]:
    """Each axis of ``shape`` rounded up to a multiple of ``step``."""
    return tuple(-(-int(s) // st) * st for s, st in zip(shape, step))  # type: ignore[return-value]
