"""Blockwise inference: a network run over a volume block by block, and the writer of its outputs.

Data flow per block (:class:`BlockPredictor`): read the block's read ROI (mirrored outside the
volume), normalise it as the checkpoint says, run the network once under
``torch.inference_mode``, crop the output to the write ROI and hand it to the
:class:`PredictionWriter`, which casts it and writes it. Blocks never overlap in the output,
so there is no blending, and output chunks equal the block shape.

Geometry (:func:`plan_geometry`), per axis, for a block shape ``B`` (a multiple of the
model's ``shape_step``):

* valid-padding networks (UNet ``padding="valid"``): the network runs on the smallest valid
  output ``O >= B``, from an input of ``valid_input_shape(O)`` starting ``context`` voxels
  before the write ROI; output voxel 0 is the write ROI's first voxel, the last ``O - B``
  are cropped. Every input starts on the same ``shape_step`` lattice as the whole padded
  volume's would, so the result equals the network applied to the whole mirrored volume.
* same-padding networks (DenseNet, UNet ``padding="same"``): a halo of ``context`` voxels
  rounded up to ``shape_step`` is read on each side and cropped away. A same-padding UNet
  runs as its valid-padding twin (same weights, :meth:`~psc_seg.models.UNet.valid_twin`),
  which returns exactly the centre predict keeps without computing the halo's outputs.
* same-padding networks without a valid twin whose ``receptive_radius`` ``R`` is known (the
  DenseNet; :class:`ClippedGeometry`): the output is *defined* as the network applied once,
  with its own zero padding, to the whole volume mirror-padded by ``h`` = the halo above
  (``context`` rounded up to ``shape_step``) per side and further at the high end to
  ``P = round_up(V + 2 h, shape_step)`` voxels (the padded volume starts at ``-h``): what one
  whole-volume block computes. Each block reads its write ROI grown by ``R`` rounded up to
  ``shape_step``, clipped to ``[-h, P - h)``; every read ROI starts on the ``shape_step``
  lattice of the padded volume, and its zero padding matters only where it is the padded
  volume's own, so every kept voxel equals the whole-volume result (up to float
  reassociation) whatever the block shape. Read shapes, and crops, differ at the edges.
  Where the whole volume does not fit one block (:func:`exact_fits`), the caller may plan the
  halo geometry above instead (``plan_geometry(..., exact=False)``): bounded memory, not exact
  near block borders.

The stage around it (arguments, output files, resume records) is
:func:`psc_seg.pipelines.predict.predict`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from psc_seg.allocator import keep_freed_memory
from psc_seg.engine.blocks import Block, block_grid, read_mirrored
from psc_seg.engine.chunk_cache import ChunkCache
from psc_seg.engine.precision import cpu_bfloat16, input_dtype, to_bfloat16
from psc_seg.engine.roi import Roi
from psc_seg.errors import UserError
from psc_seg.io import normalize
from psc_seg.io.volume import Volume
from psc_seg.models import load_checkpoint
from psc_seg.models.shapes import round_up
from psc_seg.nn import make_activation, to_channels_last

DEFAULT_BLOCK = 64
# ClippedGeometry defaults: the whole volume in one block while its padded volume has at most
# this many voxels (the default DenseNet on CPU: 3.2 GB peak for 160^3, so about 5.5 GB at 192^3;
# smaller blocks would each read most of the volume again), else this block edge
WHOLE_VOLUME_VOXELS = 192**3
CLIPPED_BLOCK = 128
READ_CACHE_BYTES = 32 * 2**20  # decoded input chunks kept per process (a row of blocks' reads)
DTYPES = ("float32", "uint8")


@dataclass(frozen=True)
class BlockGeometry:
    """Per-axis ``(z, y, x)`` geometry of one block (see the module docstring).

    write_shape: the block's write ROI shape. read_shape: the network's input shape.
    context: the read ROI starts this many voxels before the write ROI.
    crop: the write ROI starts at this voxel of the network's output.
    """

    write_shape: tuple[int, int, int]
    read_shape: tuple[int, int, int]
    context: tuple[int, int, int]
    crop: tuple[int, int, int]

    def blocks(self, volume_shape: Sequence[int], roi: Roi | None = None) -> list[Block]:
        """The blocks tiling ``roi`` (default: the whole volume of ``volume_shape`` voxels), in
        C order; for an ``roi`` that does not start at voxel 0, plan the geometry with its
        ``origin`` (:func:`plan_geometry`)."""
        total = roi if roi is not None else Roi((0, 0, 0), tuple(volume_shape))
        return block_grid(total, write_shape=self.write_shape, context=self.context, read_shape=self.read_shape)

    def crop_of(self, block: Block) -> tuple[int, int, int]:
        """Where ``block``'s write ROI starts in the network's output of its read ROI."""
        return self.crop


@dataclass(frozen=True)
class ClippedGeometry(BlockGeometry):
    """Geometry of a same-padding network without a valid twin (see the module docstring):
    ``context`` (= ``crop``) is the receptive-field radius rounded up to ``step``, and
    ``read_shape`` the largest read shape; a block's read ROI is the write ROI grown by
    ``context``, clipped to the padded volume ``[-halo, round_up(V + 2 halo, step) - halo)``.
    Write ROIs and ``halo`` are multiples of ``step``, so read ROIs start on its lattice."""

    halo: tuple[int, int, int]
    step: tuple[int, int, int]

    def blocks(self, volume_shape: Sequence[int], roi: Roi | None = None) -> list[Block]:
        total = roi if roi is not None else Roi((0, 0, 0), tuple(volume_shape))
        low = tuple(-h for h in self.halo)
        high = tuple(p - h for p, h in zip(padded_extent(volume_shape, self.halo, self.step), self.halo))
        blocks = []
        for block in block_grid(total, write_shape=self.write_shape, context=self.context):
            # on the padded volume's step lattice (write ROIs of an roi need not start on it)
            begin = tuple(max(lo + (b - lo) // s * s, lo) for b, lo, s in zip(block.read_roi.begin, low, self.step))
            end = tuple(min(lo - (lo - e) // s * s, hi) for e, lo, hi, s in zip(block.read_roi.end, low, high, self.step))
            read = Roi(begin, tuple(e - b for b, e in zip(begin, end)))
            blocks.append(Block(block.block_id, read, block.write_roi))
        return blocks

    def crop_of(self, block: Block) -> tuple[int, int, int]:
        return tuple(w - r for w, r in zip(block.write_roi.begin, block.read_roi.begin))  # type: ignore[return-value]


def padded_extent(volume_shape: Sequence[int], halo: Sequence[int], step: Sequence[int]) -> tuple[int, ...]:
    """The shape of the volume mirror-padded by ``halo`` per side, and further at the high end
    to a multiple of ``step``: what a same-padding network's output is defined on."""
    return tuple(round_up([int(v) + 2 * h for v, h in zip(volume_shape, halo)], step))


def default_block_shape(model, volume_shape: Sequence[int], *, exact: bool = True) -> tuple[int, int, int]:
    """64 voxels per axis (fewer for a smaller volume), rounded up to the model's ``shape_step``.
    A network that reads its whole receptive field (:class:`ClippedGeometry`, ``exact``): the
    whole volume in one block where its padded volume has at most ``WHOLE_VOLUME_VOXELS``
    voxels, else ``CLIPPED_BLOCK`` voxels per axis."""
    step = model.shape_step
    if exact and reads_receptive_field(model):
        if exact_fits(model, volume_shape):
            return round_up(volume_shape, step)
        return round_up([min(CLIPPED_BLOCK, s) for s in volume_shape], step)
    return round_up([min(DEFAULT_BLOCK, s) for s in volume_shape], step)


def cap_block_shape(model, block_shape: Sequence[int], volume_shape: Sequence[int]) -> tuple[tuple[int, ...], str | None]:
    """``block_shape`` capped on each axis to the volume's size rounded up to the model's
    ``shape_step``, and a note saying so where it was (else None): a larger block computes
    only mirrored voxels it then crops, in memory that grows with the cube of its size (4096^3
    voxels: 65 GiB for the input alone). The blocks' output is the same either way."""
    block_shape = tuple(int(b) for b in block_shape)
    if len(block_shape) != 3:
        return block_shape, None  # plan_geometry says what is wrong
    cap = round_up(volume_shape, model.shape_step)
    capped = tuple(min(b, c) for b, c in zip(block_shape, cap))
    if capped == block_shape:
        return block_shape, None
    return capped, (f"block shape {' '.join(map(str, block_shape))} is larger than the "
                    f"{'x'.join(map(str, volume_shape))} volume; capped to {' '.join(map(str, capped))}")


def reads_receptive_field(model) -> bool:
    """Whether exact blockwise predict of ``model`` reads its whole receptive field
    (:class:`ClippedGeometry`): a same-padding network without a valid twin whose
    ``receptive_radius`` is known (the DenseNet)."""
    return (model.padding != "valid" and not getattr(model, "has_valid_twin", False)
            and getattr(model, "receptive_radius", None) is not None)


def exact_fits(model, volume_shape: Sequence[int]) -> bool:
    """Whether exact predict of ``model`` over ``volume_shape`` runs as one block of at most
    ``WHOLE_VOLUME_VOXELS`` padded voxels (bounded memory). Larger volumes make every block read
    up to (block + 2 x receptive radius)^3 voxels: for the DenseNet, tens of GB on a CPU."""
    step = model.shape_step
    padded = padded_extent(volume_shape, round_up(model.context, step), step)
    return bool(np.prod(padded, dtype=np.int64) <= WHOLE_VOLUME_VOXELS)


def plan_geometry(model, block_shape: Sequence[int], *, twin=None, exact: bool = True,
                  origin: Sequence[int] = (0, 0, 0), margin: Sequence[int] = (0, 0, 0)) -> BlockGeometry:
    """The :class:`BlockGeometry` of ``model`` for ``block_shape``; UserError naming the
    model's ``shape_step`` if the block shape is not a positive multiple of it. ``twin``: the
    valid twin of a same-padding UNet if the caller has built it (:func:`prepare_model`).
    ``exact=False``: a network that :func:`reads_receptive_field` reads only its ``context``
    halo around each block instead (not exact near block borders; bounded memory).
    ``origin``: the first voxel of the region tiled (an ROI's begin; write ROIs start at
    ``origin + k * block_shape``); valid-padding inputs still start on the whole volume's
    ``shape_step`` lattice, so an ROI's output equals that region of the whole volume's.
    ``margin``: the network's output must reach this many voxels beyond the write ROI on each
    side (mirror TTA's shifted affinities, :mod:`psc_seg.engine.tta`); a valid-padding network
    then starts its output whole ``shape_step`` lattice steps earlier (same lattice)."""
    block_shape = tuple(int(b) for b in block_shape)
    step = tuple(model.shape_step)
    shift = tuple(int(o) % s for o, s in zip(origin, step))
    if len(block_shape) != 3 or min(block_shape) < 1 or any(b % s for b, s in zip(block_shape, step)):
        axis = next((i for i, (b, s) in enumerate(zip(block_shape, step)) if b < 1 or b % s), 0)
        raise UserError(
            f"{{block_shape}} {' '.join(map(str, block_shape))} must be a multiple of the model's shape step "
            f"{step} (along {'zyx'[axis]}) so that blocks stitch exactly; e.g. {{block_shape}} "
            f"{' '.join(map(str, round_up([max(1, b) for b in block_shape], step)))}",
            options=("block_shape",),
        )
    margin = tuple(int(m) for m in margin)
    if model.padding == "valid":
        return _valid_geometry(model, block_shape, crop=shift, margin=margin)
    if getattr(model, "has_valid_twin", False):
        # prepare_model runs the valid twin: its input starts `crop` voxels earlier than a valid
        # model's would, so that its pooling windows are those of the same-padding network
        # on tiles that start on multiples of shape_step
        crop = tuple((p - c + o) % s for p, c, o, s in zip(model.pooling_offset, model.context, shift, step))
        return _valid_geometry(twin if twin is not None else model.valid_twin(), block_shape, crop=crop,
                               margin=margin)
    halo = round_up(model.context, step)
    clipped = exact and reads_receptive_field(model)
    context = round_up(model.receptive_radius, step) if clipped else halo
    read_shape = tuple(b + 2 * c for b, c in zip(block_shape, context))
    if tuple(model.output_shape(read_shape)) != read_shape:
        raise ValueError(f"same-padding model changes shape {read_shape}")
    if any(m > c for m, c in zip(margin, context)):
        raise ValueError(f"a margin of {margin} voxels exceeds the {context}-voxel context of the blocks")
    if clipped:
        return ClippedGeometry(block_shape, read_shape, context, context, halo, step)  # type: ignore[arg-type]
    return BlockGeometry(block_shape, read_shape, context, context)  # type: ignore[arg-type]


def _valid_geometry(model, block_shape: tuple[int, ...], *, crop: tuple[int, ...],
                    margin: tuple[int, ...] = (0, 0, 0)) -> BlockGeometry:
    """A valid-padding ``model`` computing ``block_shape`` voxels after ``crop`` ones (``crop``
    grown by whole shape steps to at least ``margin``), and at least ``margin`` after them."""
    crop = tuple(c + -(-max(0, m - c) // s) * s for c, m, s in zip(crop, margin, model.shape_step))
    output = model.valid_output_shape([b + c + m for b, c, m in zip(block_shape, crop, margin)])
    read_shape = tuple(model.valid_input_shape(output))
    context = tuple(c + k for c, k in zip(model.context, crop))
    if any(r - o != 2 * c for r, o, c in zip(read_shape, output, model.context)):
        raise ValueError(f"model context {model.context} does not match input {read_shape} -> output {output}")
    return BlockGeometry(block_shape, read_shape, context, crop)  # type: ignore[arg-type]


def prepare_model(model: torch.nn.Module, *, bfloat16: bool = False) -> torch.nn.Module:
    """The network predict runs for ``model``: in eval mode with channels_last_3d weights
    (faster convolutions on oneDNN CPUs and on cuDNN tensor cores; see
    :mod:`psc_seg.nn.fast`); for a same-padding UNet, its valid-padding twin with the same
    weights where that is exact (:meth:`psc_seg.models.UNet.valid_twin`): it computes only the
    centre of each tile that predict keeps, not the halo it crops away. ``bfloat16``: cast
    as CPU bfloat16 runs it (:func:`~psc_seg.engine.precision.to_bfloat16`).
    The network's own final sigmoid or softmax is taken off: :class:`BlockPredictor` applies
    the task's activation to the float32 output (bfloat16 sigmoids would round every
    affinity above 0.996 to 1.0, and waterz would then see plateaus where there were ridges)."""
    if getattr(model, "has_valid_twin", False):
        model = model.valid_twin()
    if isinstance(getattr(model, "final", None), (torch.nn.Sigmoid, torch.nn.Softmax)):
        model.final = torch.nn.Identity()  # the predictor applies it, in float32 (BlockPredictor)
    model = to_channels_last(model.eval())
    return to_bfloat16(model) if bfloat16 else model


class PredictionWriter:
    """The output side of blockwise predict, with two verbs in the manner of MONAI's ``Merger``:
    :meth:`aggregate` writes one block's network output, :meth:`finalize` marks every output
    volume complete once all blocks are in.

    ``outputs``: ``{"affinities": volume}`` for ``kind="affinities"``, ``{"probabilities":
    volume, "labels": volume}`` for ``kind="semantic"`` (labels: the argmax over classes).
    ``dtype``: ``"float32"``, or ``"uint8"`` storing ``round(255 * clip(p, 0, 1))``.
    ``origin``: the input voxel at which the outputs start (an ROI's begin; ``roi`` of
    :meth:`aggregate` is in the input's voxels).
    Picklable for dask workers (volumes pickle); workers aggregate, the caller finalizes.
    """

    def __init__(self, outputs: dict[str, Volume], *, kind: str, dtype: str,
                 origin: Sequence[int] = (0, 0, 0)) -> None:
        if kind not in ("affinities", "semantic"):
            raise ValueError(f"kind must be affinities or semantic, got {kind!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.outputs, self.kind, self.dtype = outputs, kind, dtype
        self._to_output = tuple(-int(o) for o in origin)
        self.is_finalized = False

    def aggregate(self, values: np.ndarray, roi: Roi) -> None:
        """Write ``values`` ``(C, Z, Y, X)``, the activated network output over ``roi`` (the
        input's voxels) exactly."""
        if self.is_finalized:
            raise RuntimeError("aggregate after finalize: the outputs are already complete")
        roi = roi.shift(self._to_output)
        if self.kind == "semantic":
            self.outputs["labels"].write(roi, values.argmax(axis=0))
            self.outputs["probabilities"].write(roi, self._cast(values))
        else:
            self.outputs["affinities"].write(roi, self._cast(values))

    def finalize(self) -> None:
        """Mark every output volume complete (and assemble buffered formats: NIfTI, TIFF, npy)."""
        for volume in self.outputs.values():
            volume.finalize()
        self.is_finalized = True

    def _cast(self, values: np.ndarray) -> np.ndarray:
        if self.dtype == "uint8":
            return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return values


_MODELS: dict[tuple, torch.nn.Module] = {}


class BlockPredictor:
    """The per-block function: read (mirrored), normalise, forward, crop, hand to ``writer``.

    ``model``: the network as :func:`prepare_model` returns it, or None to load it from
    ``checkpoint``. Picklable for dask workers: the model is not pickled but loaded from the checkpoint once
    per process (and ``torch.set_num_threads(threads)`` applied there).

    CPU: the blocks of a task go through the network as one batch, channels_last_3d. CUDA:
    the blocks of a task flow one by one through a pipeline (pinned host buffers; the upload
    of block i+1 on a side stream overlaps the forward of block i; results come back with
    non-blocking copies while the next block computes and are written meanwhile), under
    autocast in ``precision`` (bfloat16 / float16) unless it is float32. CPU bfloat16: the
    network's weights and inputs are bfloat16 (:mod:`psc_seg.engine.precision`). Either way
    the output is cast to float32 before predict's final activation.

    ``tta``: a :class:`~psc_seg.engine.tta.MirrorTTA` (each block's output is the mean of its
    passes), or None.
    """

    def __init__(self, *, checkpoint: str, model: torch.nn.Module | None, device: str, geometry: BlockGeometry,
                 source: Volume, writer: PredictionWriter, norm: dict[str, Any], activation: str | None,
                 threads: int | None, precision: str = "float32", tta=None) -> None:
        self.checkpoint, self.device, self.geometry = checkpoint, device, geometry
        self.source, self.writer, self.norm = source, writer, norm
        self.threads, self.precision, self.tta = threads, precision, tta
        self._bfloat16 = cpu_bfloat16(precision, device)
        self._final = make_activation(activation)
        self.check_finite = np.issubdtype(source.dtype, np.floating)
        # neighbouring blocks' reads (with context) share storage chunks: decode each about once
        self._reader = ChunkCache(source, max_bytes=READ_CACHE_BYTES)
        self._model = model  # already through prepare_model; None: loaded once per worker process
        self._copy_stream = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None, "_copy_stream": None}

    def model(self) -> torch.nn.Module:
        if self._model is None:
            key = (self.checkpoint, os.path.getmtime(self.checkpoint), self.device, self._bfloat16)
            if key not in _MODELS:
                if self.threads:  # a worker process of our LocalCluster (psc_seg.allocator)
                    torch.set_num_threads(self.threads)
                    keep_freed_memory()
                _MODELS[key] = prepare_model(load_checkpoint(self.checkpoint, map_location=self.device).model,
                                             bfloat16=self._bfloat16)
            self._model = _MODELS[key]
        return self._model

    def read(self, block) -> np.ndarray:
        """The normalised network input of ``block``: ``(C, Z, Y, X)`` float32."""
        x = normalize(read_mirrored(self._reader, block.read_roi), self.norm)
        if self.check_finite and not np.isfinite(x).all():
            raise UserError(f"input {self.source.spec!r} has NaN or infinite values in {block.read_roi}; "
                            "clean it before predicting")
        return x[None] if x.ndim == 3 else x

    def __call__(self, blocks) -> int:
        blocks = blocks if isinstance(blocks, list) else [blocks]
        model = self.model()
        inputs = [self.read(b) for b in blocks]
        if self.device.startswith("cuda"):
            for block, y in zip(blocks, self._forward_cuda(model, inputs)):
                self.write(block, y)
        else:
            # blocks of one read shape go through the network as one batch (edge blocks of a
            # ClippedGeometry have other shapes)
            shapes: dict[tuple, list[int]] = {}
            for i, x in enumerate(inputs):
                shapes.setdefault(x.shape, []).append(i)
            for group in shapes.values():
                y = self.forward_cpu(model, np.stack([inputs[i] for i in group]))
                for k, i in enumerate(group):
                    self.write(blocks[i], y[k])
        return len(blocks)

    def _infer(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The activated float32 output of ``model`` on ``x`` (under inference mode), averaged
        over the TTA passes if any."""
        def forward(x: torch.Tensor) -> torch.Tensor:
            y = model(x).float()
            return y if self._final is None else self._final(y)

        return forward(x) if self.tta is None else self.tta.average(forward, x)

    def forward_cpu(self, model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
        """``(B, C, Z, Y, X)`` float32 -> the activated network output ``(B, C', Z', Y', X')``
        float32 (a channels-last strided array: no copy back to NCDHW)."""
        x = torch.from_numpy(batch)
        with torch.inference_mode():
            return self._infer(model, to_channels_last(x.to(input_dtype(model)))).numpy()

    def _forward_cuda(self, model: torch.nn.Module, inputs: list[np.ndarray]):
        """Yield the activated output ``(C', Z', Y', X')`` of each input (see the class
        docstring for the overlap of copies, compute and writes)."""
        device = torch.device(self.device)
        compute = torch.cuda.current_stream(device)
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(device)
        copy = self._copy_stream
        amp = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.precision)

        def upload(array: np.ndarray):
            host = torch.from_numpy(array[None]).pin_memory()
            with torch.cuda.stream(copy):
                x = host.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last_3d)
                ready = torch.cuda.Event()
                ready.record(copy)
            return x, ready

        following = upload(inputs[0])
        pending = None
        for i in range(len(inputs)):
            x, ready = following
            compute.wait_event(ready)
            x.record_stream(compute)  # allocated on the copy stream, used on the compute stream
            if i + 1 < len(inputs):
                following = upload(inputs[i + 1])  # overlaps the forward below
            autocast = torch.autocast("cuda", dtype=amp) if amp is not None else contextlib.nullcontext()
            with torch.inference_mode(), autocast:
                y = self._infer(model, x)
            host_y = torch.empty(y.shape, dtype=torch.float32, pin_memory=True)
            host_y.copy_(y, non_blocking=True)
            done = torch.cuda.Event()
            done.record(compute)
            if pending is not None:  # the previous block is written while this one computes
                pending[1].synchronize()
                yield pending[0].numpy()[0]
            pending = (host_y, done)
        pending[1].synchronize()
        yield pending[0].numpy()[0]

    def write(self, block, y: np.ndarray) -> None:
        """Crop the network output ``y`` ``(C', Z', Y', X')`` to ``block``'s write ROI and hand it
        to the writer."""
        cz, cy, cx = self.geometry.crop_of(block)
        wz, wy, wx = block.write_roi.shape
        self.writer.aggregate(np.ascontiguousarray(y[:, cz:cz + wz, cy:cy + wy, cx:cx + wx]), block.write_roi)
