"""Predict's compute precision: float32, or bfloat16 where the hardware computes it.

* CUDA: ``bfloat16`` / ``float16`` run under autocast; ``auto`` is bfloat16 where the GPU
  supports it, else float16.
* CPU: ``bfloat16`` runs the network with bfloat16 weights and activations (oneDNN
  convolutions accumulate in float32 and round each layer's output to bfloat16), except a
  UNet's full-resolution level, which stays float32 (:func:`to_bfloat16`); the final sigmoid
  or softmax is applied in float32. ``float16`` is refused (no CPU computes it faster).
  ``auto`` picks bfloat16 only where the CPU lists bfloat16 instructions (``amx_bf16``: Intel
  AMX, Sapphire Rapids and later; ``avx512_bf16``: Cooper Lake, AMD Zen 4 and later) *and* a
  short calibration (:func:`calibrate`: the network on one block-sized input, each precision
  timed) shows it at least ``MIN_SPEEDUP`` times faster for this network; otherwise float32.
  A CPU without those instructions computes bfloat16 in software, several times slower than
  float32, so ``auto`` never picks it there and never calibrates. The environment variable
  ``PSC_SEG_AUTO_BF16=0`` makes ``auto`` float32 everywhere (results that do not depend on
  the machine; psc-seg's tests set it).

The choice (:class:`PrecisionChoice`) is printed by predict and stored in its output's
provenance, with the CPU's model name and bfloat16 flags.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cache

import torch

from psc_seg.errors import UserError

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
MIN_SPEEDUP = 1.25  # auto's bfloat16 must be at least this much faster than float32
AUTO_BF16_VARIABLE = "PSC_SEG_AUTO_BF16"  # "0": auto never picks bfloat16
CALIBRATION_EDGE = 48  # calibration output edge (voxels, capped by the block), before shape rounding


@cache
def cpu_info() -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and which of ``BF16_FLAGS`` it lists (Linux ``/proc/cpuinfo``, its
    first processor; elsewhere the platform's processor name and no flags)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    return name, tuple(flag for flag in BF16_FLAGS if flag in flags)


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions that PyTorch's oneDNN uses."""
    from psc_seg.nn.fast import onednn_bf16

    return bool(cpu_info()[1]) and onednn_bf16()


@dataclass(frozen=True)
class PrecisionChoice:
    """What predict computes in (``used``), what was asked (``requested``) and why."""

    used: str
    requested: str
    reason: str
    measured: bool = False  # a calibration decided

    @property
    def worth_a_note(self) -> bool:
        """Whether predict says how it chose (anything but plain float32 is told)."""
        return self.used != "float32" or self.measured

    def provenance(self, device: str) -> dict:
        record = asdict(self)
        if not device.startswith("cuda"):
            name, flags = cpu_info()
            record["cpu"] = {"model": name, "bf16_flags": list(flags)}
        return record

    def __str__(self) -> str:
        return f"precision {self.used} ({self.reason})"


def check_precision(precision: str, device: str) -> None:
    """UserError for an unknown precision, or float16 on CPU (checked before any work)."""
    if precision not in PRECISIONS:
        raise UserError(f"{{precision}} must be one of {', '.join(PRECISIONS)}, got {precision!r}",
                        options=("precision",))
    if precision == "float16" and not device.startswith("cuda"):
        raise UserError("{precision} float16 is for --device cuda; on CPU use float32, bfloat16 or auto",
                        options=("precision",))


def choose_precision(precision: str, device: str, *, model: torch.nn.Module | None = None,
                     shape: Sequence[int] | None = None,
                     measure: Callable[[torch.nn.Module, Sequence[int]], dict[str, float]] | None = None
                     ) -> PrecisionChoice:
    """The precision predict computes in for ``precision`` on ``device`` (see the module
    docstring). CPU ``auto`` on a CPU with bfloat16 instructions calibrates ``model`` (as
    :func:`~psc_seg.engine.inference.prepare_model` returns it for float32) on an input of
    ``shape`` (``(Z, Y, X)``) with ``measure`` (default :func:`calibrate`)."""
    check_precision(precision, device)
    if device.startswith("cuda"):
        if precision != "auto":
            return PrecisionChoice(precision, precision, "as asked; autocast on CUDA")
        used = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return PrecisionChoice(used, "auto", f"autocast; this GPU {'has' if used == 'bfloat16' else 'lacks'} bfloat16")
    if precision != "auto":
        if precision == "bfloat16" and not cpu_computes_bf16():
            return PrecisionChoice(precision, precision, "as asked; this CPU has no bfloat16 instructions, "
                                                         "so it is emulated and slower than float32")
        return PrecisionChoice(precision, precision, "as asked")
    if os.environ.get(AUTO_BF16_VARIABLE, "") == "0":
        return PrecisionChoice("float32", "auto", f"bfloat16 switched off by {AUTO_BF16_VARIABLE}=0")
    if not cpu_computes_bf16():
        return PrecisionChoice("float32", "auto", "this CPU has no bfloat16 instructions (amx_bf16, avx512_bf16)")
    seconds = (measure or calibrate)(model, shape)
    speedup = seconds["float32"] / seconds["bfloat16"]
    used = "bfloat16" if speedup >= MIN_SPEEDUP else "float32"
    return PrecisionChoice(used, "auto", measured=True, reason=f"bfloat16 measured {speedup:.2f}x float32's speed for this network on "
                                         f"this CPU ({', '.join(cpu_info()[1])}); "
                                         f"{'faster' if used == 'bfloat16' else f'below the {MIN_SPEEDUP}x auto asks'}")


def calibration_shape(model: torch.nn.Module, block_shape: Sequence[int]) -> tuple[int, int, int]:
    """The input shape :func:`calibrate` times: the network's input for an output of the block
    shape capped to ``CALIBRATION_EDGE`` voxels per axis (a second or so per pass on 2 cores)."""
    output = model.valid_output_shape([min(int(b), CALIBRATION_EDGE) for b in block_shape])
    return tuple(model.valid_input_shape(output))  # type: ignore[return-value]


def calibrate(model: torch.nn.Module, shape: Sequence[int], *, pairs: int = 3, min_seconds: float = 1.0,
              max_pairs: int = 15) -> dict[str, float]:
    """Median seconds of one forward pass of ``model`` (float32, prepared for predict) on a
    random ``(1, C, *shape)`` input, in float32 and in bfloat16. After a warm-up pass of each,
    the two run in alternation (so that a load that comes and goes hits both alike), at least
    ``pairs`` times and until ``min_seconds`` have passed (at most ``max_pairs``)."""
    from psc_seg.nn import to_channels_last

    generator = torch.Generator().manual_seed(0)
    x = torch.randn((1, getattr(model, "in_channels", 1), *shape), generator=generator)
    fast = to_bfloat16(copy.deepcopy(model))
    runs = {"float32": (model, to_channels_last(x)), "bfloat16": (fast, to_channels_last(x.to(input_dtype(fast))))}
    times: dict[str, list[float]] = {name: [] for name in runs}
    started = time.perf_counter()
    with torch.inference_mode():
        for net, xx in runs.values():
            net(xx)
        while True:
            for name, (net, xx) in runs.items():
                start = time.perf_counter()
                net(xx)
                times[name].append(time.perf_counter() - start)
            done = len(times["float32"])
            if done >= max_pairs or (done >= pairs and time.perf_counter() - started >= min_seconds):
                break
    return {name: statistics.median(values) for name, values in times.items()}


def to_bfloat16(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (in place) as CPU bfloat16 runs it: a UNet's levels below full resolution in
    bfloat16, its full-resolution level in float32 (:meth:`~psc_seg.models.UNet.coarse_levels_to`:
    faster and more accurate than all of it in bfloat16); other networks wholly in bfloat16."""
    if hasattr(model, "coarse_levels_to"):
        return model.coarse_levels_to(torch.bfloat16)
    return model.to(torch.bfloat16)


def input_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype ``model`` takes its input in: that of its first weights."""
    return next(model.parameters()).dtype


def cpu_bfloat16(precision: str, device: str) -> bool:
    """Whether the network itself is cast (:func:`to_bfloat16`): CPU bfloat16. CUDA casts
    nothing (autocast)."""
    return precision == "bfloat16" and not device.startswith("cuda")
