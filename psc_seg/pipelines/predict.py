"""``psc-seg predict``: run a checkpoint's network over a volume block by block.

Data flow per block (:class:`BlockPredictor`): read the block's read ROI (mirrored outside the
volume), normalise it as the checkpoint says, run the network once under
``torch.inference_mode``, crop the output to the write ROI, write it. Blocks never overlap
in the output, so there is no blending, and output chunks equal the block shape.

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

Outputs (``OUTPUT`` names the main one):

* affinities (UNet): ``OUTPUT`` is ``(C, Z, Y, X)``, one channel per offset.
* semantic (DenseNet): class probabilities ``(K, Z, Y, X)`` and argmax labels ``(Z, Y, X)``:
  ``OUTPUT/probabilities`` and ``OUTPUT/labels`` in a zarr container or HDF5 group; for
  ``.nii[.gz]`` / ``.tif`` / ``.npy``, the labels at ``OUTPUT`` and the probabilities at
  ``<stem>_probabilities<suffix>`` (NIfTI outputs keep a NIfTI input's affine and header).

``dtype="uint8"`` stores ``round(255 * p)`` (attribute ``value_scale = 1/255``). Finished
blocks are recorded with the main output (see :mod:`psc_seg.engine.resume`), keyed by a
hash of the checkpoint file, the input, the block shape, the output dtype and the resolved
normalisation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psc_seg.affinities import DEFAULT_OFFSETS
from psc_seg.allocator import keep_freed_memory
from psc_seg.device import resolve_device
from psc_seg.engine import BlockRecord, ChunkCache, Roi, block_grid, file_hash, read_mirrored, run_blockwise
from psc_seg.errors import UserError
from psc_seg.io import (
    create_volume, normalize, open_volume, parse_spec, resolve_normalization, volume_complete,
    volume_exists,
)
from psc_seg.io.volume import Volume
from psc_seg.models import load_checkpoint
from psc_seg.models.shapes import round_up
from psc_seg.nn import make_activation, to_channels_last

DEFAULT_BLOCK = 64
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


def default_block_shape(model, volume_shape: Sequence[int]) -> tuple[int, int, int]:
    """64 voxels per axis (fewer for a smaller volume), rounded up to the model's ``shape_step``."""
    return round_up([min(DEFAULT_BLOCK, s) for s in volume_shape], model.shape_step)


def plan_geometry(model, block_shape: Sequence[int], *, twin=None) -> BlockGeometry:
    """The :class:`BlockGeometry` of ``model`` for ``block_shape``; UserError naming the
    model's ``shape_step`` if the block shape is not a positive multiple of it. ``twin``: the
    valid twin of a same-padding UNet if the caller has built it (:func:`prepare_model`)."""
    block_shape = tuple(int(b) for b in block_shape)
    step = tuple(model.shape_step)
    if len(block_shape) != 3 or min(block_shape) < 1 or any(b % s for b, s in zip(block_shape, step)):
        axis = next((i for i, (b, s) in enumerate(zip(block_shape, step)) if b < 1 or b % s), 0)
        raise UserError(
            f"--block-shape {' '.join(map(str, block_shape))} must be a multiple of the model's shape step "
            f"{step} (along {'zyx'[axis]}) so that blocks stitch exactly; e.g. --block-shape "
            f"{' '.join(map(str, round_up([max(1, b) for b in block_shape], step)))}"
        )
    if model.padding == "valid":
        return _valid_geometry(model, block_shape, crop=(0, 0, 0))
    if getattr(model, "has_valid_twin", False):
        # prepare_model runs the valid twin: its input starts `crop` voxels earlier than a valid
        # model's would, so that its pooling windows are those of the same-padding network
        # on tiles that start on multiples of shape_step
        crop = tuple((p - c) % s for p, c, s in zip(model.pooling_offset, model.context, step))
        return _valid_geometry(twin if twin is not None else model.valid_twin(), block_shape, crop=crop)
    halo = round_up(model.context, step)
    read_shape = tuple(b + 2 * h for b, h in zip(block_shape, halo))
    if tuple(model.output_shape(read_shape)) != read_shape:
        raise ValueError(f"same-padding model changes shape {read_shape}")
    return BlockGeometry(block_shape, read_shape, halo, halo)  # type: ignore[arg-type]


def _valid_geometry(model, block_shape: tuple[int, ...], *, crop: tuple[int, ...]) -> BlockGeometry:
    """A valid-padding ``model`` computing ``block_shape`` voxels after ``crop`` ones."""
    output = model.valid_output_shape([b + c for b, c in zip(block_shape, crop)])
    read_shape = tuple(model.valid_input_shape(output))
    context = tuple(c + k for c, k in zip(model.context, crop))
    if any(r - o != 2 * c for r, o, c in zip(read_shape, output, model.context)):
        raise ValueError(f"model context {model.context} does not match input {read_shape} -> output {output}")
    return BlockGeometry(block_shape, read_shape, context, crop)  # type: ignore[arg-type]


def resolve_task(checkpoint) -> dict[str, Any]:
    """The checkpoint's task (``{"kind": "affinities", "offsets": ...}`` or ``{"kind":
    "semantic", "num_classes": K}``), defaulting to the 3 standard affinities for 3 outputs."""
    task = dict(checkpoint.metadata.get("task") or {})
    out_channels = getattr(checkpoint.model, "out_channels", None) or checkpoint.kwargs.get("num_classes")
    if not task:
        if checkpoint.name == "densenet":
            task = {"kind": "semantic", "num_classes": int(out_channels)}
        elif out_channels == 3:
            task = {"kind": "affinities", "offsets": DEFAULT_OFFSETS}
        else:
            raise UserError(f"checkpoint has no task metadata and {out_channels} outputs; retrain with psc-seg train "
                            "or add metadata['task']")
    if task["kind"] == "affinities":
        task.setdefault("offsets", DEFAULT_OFFSETS)
    elif task["kind"] == "semantic":
        task.setdefault("num_classes", int(out_channels))
    else:
        raise UserError(f"unknown task kind {task['kind']!r} in the checkpoint; expected affinities or semantic")
    return task


def output_specs(output: str, task: dict[str, Any]) -> dict[str, str]:
    """Where each output goes: ``{"affinities": ...}`` or ``{"probabilities": ..., "labels": ...}``."""
    s = parse_spec(output)
    if task["kind"] == "affinities":
        if s.format == "hdf5" and not s.inner:
            return {"affinities": f"{s.path}:/affinities"}
        return {"affinities": str(output)}
    if s.format == "zarr":
        base = f"{s.path}/{s.inner}" if s.inner else str(s.path)
        return {"probabilities": f"{base}/probabilities", "labels": f"{base}/labels"}
    if s.format == "hdf5":
        base = f"{s.path}:/{s.inner}" if s.inner else f"{s.path}:"
        return {"probabilities": f"{base}/probabilities", "labels": f"{base}/labels"}
    name = s.path.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else s.path.suffix
    stem = name[: len(name) - len(suffix)]
    return {"probabilities": str(s.path.with_name(f"{stem}_probabilities{suffix}")), "labels": str(output)}


_MODELS: dict[tuple, torch.nn.Module] = {}
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def resolve_precision(precision: str, device: str) -> str:
    """The compute precision: ``"float32"`` on CPU; on CUDA ``"auto"`` is bfloat16 autocast
    where the GPU supports it, else float16 autocast."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not device.startswith("cuda"):
        if precision in ("bfloat16", "float16"):
            raise UserError(f"--precision {precision} is for --device cuda; on CPU predict runs in float32")
        return "float32"
    if precision == "auto":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return precision


def prepare_model(model: torch.nn.Module) -> torch.nn.Module:
    """The network predict runs for ``model``: in eval mode with channels_last_3d weights
    (faster convolutions on oneDNN CPUs and on cuDNN tensor cores; see
    :mod:`psc_seg.nn.fast`); for a same-padding UNet, its valid-padding twin with the same
    weights where that is exact (:meth:`psc_seg.models.UNet.valid_twin`): it computes only the
    centre of each tile that predict keeps, not the halo it crops away."""
    if getattr(model, "has_valid_twin", False):
        model = model.valid_twin()
    return to_channels_last(model.eval())


class BlockPredictor:
    """The per-block function: read (mirrored), normalise, forward, crop, write.

    Picklable for dask workers: the model is not pickled but loaded from the checkpoint once
    per process (and ``torch.set_num_threads(threads)`` applied there).

    CPU: the blocks of a task go through the network as one batch, channels_last_3d. CUDA:
    the blocks of a task flow one by one through a pipeline (pinned host buffers; the upload
    of block i+1 on a side stream overlaps the forward of block i; results come back with
    non-blocking copies while the next block computes and are written meanwhile), under
    autocast in ``precision`` (bfloat16 / float16) unless it is float32.
    """

    def __init__(self, *, checkpoint: str, model: torch.nn.Module | None, device: str, geometry: BlockGeometry,
                 source: Volume, outputs: dict[str, Volume], norm: dict[str, Any], task: dict[str, Any],
                 activation: str | None, dtype: str, threads: int | None, precision: str = "float32") -> None:
        self.checkpoint, self.device, self.geometry = checkpoint, device, geometry
        self.source, self.outputs, self.norm, self.task = source, outputs, norm, task
        self.activation, self.dtype, self.threads = activation, dtype, threads
        self.precision = precision
        self._final = make_activation(activation)
        self.check_finite = np.issubdtype(source.dtype, np.floating)
        # neighbouring blocks' reads (with context) share storage chunks: decode each about once
        self._reader = ChunkCache(source, max_bytes=READ_CACHE_BYTES)
        self._model = prepare_model(model) if model is not None else None
        self._copy_stream = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None, "_copy_stream": None}

    def model(self) -> torch.nn.Module:
        if self._model is None:
            key = (self.checkpoint, os.path.getmtime(self.checkpoint), self.device)
            if key not in _MODELS:
                if self.threads:  # a worker process of our LocalCluster (psc_seg.allocator)
                    torch.set_num_threads(self.threads)
                    keep_freed_memory()
                _MODELS[key] = prepare_model(load_checkpoint(self.checkpoint, map_location=self.device).model)
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
            y = self.forward_cpu(model, np.stack(inputs))
            for i, block in enumerate(blocks):
                self.write(block, y[i])
        return len(blocks)

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        return y if self._final is None else self._final(y)

    def forward_cpu(self, model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
        """``(B, C, Z, Y, X)`` float32 -> the activated network output ``(B, C', Z', Y', X')``
        (a channels-last strided array: no copy back to NCDHW)."""
        with torch.inference_mode():
            y = self._activate(model(to_channels_last(torch.from_numpy(batch))))
            return y.float().numpy()

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
                y = self._activate(model(x)).float()
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
        """Crop the network output ``y`` ``(C', Z', Y', X')`` to ``block``'s write ROI and write it."""
        cz, cy, cx = self.geometry.crop
        wz, wy, wx = block.write_roi.shape
        values = np.ascontiguousarray(y[:, cz:cz + wz, cy:cy + wy, cx:cx + wx])
        if self.task["kind"] == "semantic":
            self.outputs["labels"].write(block.write_roi, values.argmax(axis=0))
            self.outputs["probabilities"].write(block.write_roi, self._cast(values))
        else:
            self.outputs["affinities"].write(block.write_roi, self._cast(values))

    def _cast(self, values: np.ndarray) -> np.ndarray:
        if self.dtype == "uint8":
            return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return values


def _activation(checkpoint, task: dict[str, Any]) -> str | None:
    final = checkpoint.kwargs.get("final_activation")
    if task["kind"] == "affinities":
        return None if final == "sigmoid" else "sigmoid"
    return None if final == "softmax" else "softmax"


def _same_volume(a: str, b: str) -> bool:
    sa, sb = parse_spec(a), parse_spec(b)
    return sa.path.resolve() == sb.path.resolve() and sa.inner.strip("/") == sb.inner.strip("/")


def predict(
    checkpoint: str | os.PathLike,
    input: str,
    output: str,
    *,
    block_shape: Sequence[int] | None = None,
    workers: int = 0,
    scheduler: str | None = None,
    device: str = "cpu",
    batch_size: int = 1,
    dtype: str = "float32",
    precision: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict ``output`` from ``input`` with the network in ``checkpoint``, block by block.

    Args:
        checkpoint: a psc-seg checkpoint (.pt).
        input: input volume spec, ``(Z, Y, X)`` or ``(C, Z, Y, X)``.
        output: output volume spec (see the module docstring for what is written where).
        block_shape: write ROI shape ``(z, y, x)``, a multiple of the model's ``shape_step``;
            default 64 per axis (see :func:`default_block_shape`).
        workers: local dask worker processes (0: in this process).
        scheduler: address of an existing dask scheduler instead of ``workers``.
        device: "cpu" or "cuda".
        batch_size: blocks per forward pass.
        dtype: "float32" or "uint8" (quantised ``round(255 p)``).
        precision: compute precision (:func:`resolve_precision`): "auto" (float32 on CPU,
            bfloat16 or float16 autocast on CUDA), "float32", "bfloat16", "float16".
        resume: continue an unfinished output made with the same settings.
        overwrite: replace an existing output.
        progress: tqdm bar over blocks.

    Returns a summary: outputs, blocks total / computed / skipped, seconds, voxels per second.
    """
    if resume and overwrite:
        raise UserError("give either --resume or --overwrite, not both")
    if workers and scheduler:
        raise UserError("give either --workers or --scheduler, not both")
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    resolve_device(device)
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    precision = resolve_precision(precision, device)
    ckpt = load_checkpoint(checkpoint, map_location=device)
    model = ckpt.model
    task = resolve_task(ckpt)
    source = open_volume(input)
    in_channels = getattr(model, "in_channels", 1)
    if (source.channels or 1) != in_channels:
        raise UserError(f"input {input!r} has {source.channels or 1} channel(s) but the model expects {in_channels}")
    shape = source.spatial_shape
    block_shape = tuple(block_shape) if block_shape else default_block_shape(model, shape)
    runner = prepare_model(model)  # the network that runs (a same-padding UNet's valid twin)
    geometry = plan_geometry(model, block_shape, twin=runner)
    norm = resolve_normalization(ckpt.metadata.get("normalize"), source)
    specs = output_specs(output, task)
    main = next(iter(specs))
    if any(_same_volume(input, s) for s in specs.values()):
        raise UserError(f"output {output!r} is the input volume; choose another output")
    settings = {
        "checkpoint_sha256": file_hash(checkpoint),
        "input": {"spec": str(Path(parse_spec(input).path).resolve()) + ":" + parse_spec(input).inner,
                  "shape": list(source.shape), "dtype": str(source.dtype)},
        "block_shape": list(geometry.write_shape),
        "dtype": dtype,
        "normalize": norm,
        "outputs": specs,
    }
    if precision != "float32":  # float32 runs keep the settings (and resume records) they had
        settings["precision"] = precision

    exists = any(volume_exists(s) for s in specs.values())
    if exists and not (resume or overwrite):
        raise UserError(f"output {output!r} already exists; pass --resume to continue an unfinished run "
                        "or --overwrite to replace it")
    if exists and resume:
        if volume_complete(specs[main]):
            record = BlockRecord(open_volume(specs[main]).sidecar_dir("blocks"))
            if not record.matches(settings):
                raise UserError(f"output {output!r} is complete but was written with other settings; "
                                "pass --overwrite to replace it")
            total = len(block_grid(Roi((0, 0, 0), shape), write_shape=geometry.write_shape))
            return _summary(specs, total=total, computed=0, skipped=total, seconds=0.0, voxels=0)
        outputs = {name: open_volume(s, mode="r+") for name, s in specs.items()}
        record = BlockRecord.open(outputs[main].sidecar_dir("blocks"), settings, what=f"output {output!r}")
    else:
        outputs = _create_outputs(specs, task, source=source, dtype=dtype, geometry=geometry, settings=settings,
                                  checkpoint=str(checkpoint), overwrite=overwrite)
        record = BlockRecord.create(outputs[main].sidecar_dir("blocks"), settings)

    parallel = bool(workers or scheduler)
    # our LocalCluster's workers share this machine's cores; a user's --scheduler workers are left as they are
    threads = max(1, (os.cpu_count() or 1) // workers) if workers else None
    predictor = BlockPredictor(
        checkpoint=str(Path(checkpoint).resolve()), model=None if parallel else runner, device=device,
        geometry=geometry, source=source, outputs=outputs, norm=norm, task=task, activation=_activation(ckpt, task),
        dtype=dtype, threads=threads, precision=precision,
    )
    blocks = block_grid(Roi((0, 0, 0), shape), write_shape=geometry.write_shape, context=geometry.context,
                        read_shape=geometry.read_shape)
    stats = run_blockwise(blocks, predictor, workers=workers, scheduler=scheduler,
                          batch_size=batch_size if batch_size > 1 else None, record=record, progress=progress,
                          desc="predict")
    for vol in outputs.values():
        vol.finalize()
    return _summary(specs, total=stats.total, computed=stats.computed, skipped=stats.skipped,
                    seconds=stats.seconds, voxels=stats.voxels)


def _create_outputs(specs: dict[str, str], task: dict[str, Any], *, source: Volume, dtype: str,
                    geometry: BlockGeometry, settings: dict, checkpoint: str, overwrite: bool) -> dict[str, Volume]:
    shape = source.spatial_shape
    attrs: dict[str, Any] = {"task": task}
    if dtype == "uint8":
        attrs["value_scale"] = 1.0 / 255.0
    provenance = {"config": {"checkpoint": checkpoint, **settings, "block_geometry": asdict(geometry)}}
    common = dict(chunks=geometry.write_shape, reference=source, provenance=provenance, overwrite=overwrite)
    outputs = {}
    if task["kind"] == "affinities":
        outputs["affinities"] = create_volume(specs["affinities"], shape=(len(task["offsets"]), *shape),
                                              dtype=dtype, attrs=attrs, **common)
    else:
        k = int(task["num_classes"])
        outputs["probabilities"] = create_volume(specs["probabilities"], shape=(k, *shape), dtype=dtype,
                                                 attrs=attrs, **common)
        outputs["labels"] = create_volume(specs["labels"], shape=shape, dtype=np.uint8 if k <= 256 else np.uint16,
                                          attrs={"task": task}, **common)
    return outputs


def _summary(specs: dict[str, str], *, total: int, computed: int, skipped: int, seconds: float,
             voxels: int) -> dict[str, Any]:
    return {"outputs": specs, "blocks": total, "computed": computed, "skipped": skipped, "seconds": seconds,
            "voxels_per_second": voxels / seconds if seconds > 0 else 0.0}
