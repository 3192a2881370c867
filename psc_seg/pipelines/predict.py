"""``psc-seg predict``: run a checkpoint's network over a volume block by block.

The network's side (geometry, precision, the model cache, the per-block read / forward /
write and the :class:`~psc_seg.engine.inference.PredictionWriter`) is
:mod:`psc_seg.engine.inference`; this module is the stage: arguments in, checks, files out.

Outputs (``OUTPUT`` names the main one):

* affinities (UNet): ``OUTPUT`` is ``(C, Z, Y, X)``, one channel per offset.
* semantic (DenseNet): class probabilities ``(K, Z, Y, X)`` and argmax labels ``(Z, Y, X)``:
  ``OUTPUT/probabilities`` and ``OUTPUT/labels`` in a zarr container or HDF5 group; for
  ``.nii[.gz]`` / ``.tif`` / ``.npy``, the labels at ``OUTPUT`` and the probabilities at
  ``<stem>_probabilities<suffix>`` (NIfTI outputs keep a NIfTI input's affine and header).

``dtype="uint8"`` stores ``round(255 * p)`` (attribute ``value_scale = 1/255``). Finished
blocks are recorded with the main output (see :mod:`psc_seg.engine.resume`), keyed by a
hash of the checkpoint file, the input, the block shape, the output dtype, the resolved
normalisation, (unless float32) the compute precision, (if any) the mirror TTA mode and (for a
DenseNet's exact tiling) the geometry. The provenance also records how the precision was
chosen (:class:`~psc_seg.engine.precision.PrecisionChoice`: asked, used, why, the CPU).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from psc_seg.affinities import DEFAULT_OFFSETS
from psc_seg.device import resolve_device
from psc_seg.engine import file_hash, prepare_outputs, run_blockwise
from psc_seg.engine.resume import stored_settings
from psc_seg.engine.executor import check_executor, shared_cluster
from psc_seg.engine.pyramid import build_pyramids
from psc_seg.engine.region import check_mask, mask_blocks, mask_identity, resolve_roi
from psc_seg.engine.roi import Roi
from psc_seg.engine.resume import check_finished
from psc_seg.engine.inference import (
    DTYPES, BlockGeometry, BlockPredictor, ClippedGeometry, PredictionWriter, cap_block_shape, default_block_shape,
    exact_fits, plan_geometry, prepare_model, reads_receptive_field,
)
from psc_seg.engine.precision import (
    PrecisionChoice, calibration_shape, check_precision, choose_precision, cpu_bfloat16, to_bfloat16,
)
from psc_seg.engine.tta import plan_tta, tta_margin
from psc_seg.errors import Interrupted, UserError, check_exclusive, note
from psc_seg.io import (
    check_apart, check_image, check_value_range, create_volume, open_volume, parse_spec, resolve_normalization,
)
from psc_seg.io.crop import CroppedVolume
from psc_seg.io.normalize import KINDS as NORMALIZE_KINDS
from psc_seg.io.volume import Volume, known_voxel_size
from psc_seg.models import load_checkpoint
from psc_seg.models.shapes import round_up


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
        base = s.node
        return {"probabilities": f"{base}/probabilities", "labels": f"{base}/labels"}
    if s.format == "hdf5":
        base = f"{s.path}:/{s.inner}" if s.inner else f"{s.path}:"
        return {"probabilities": f"{base}/probabilities", "labels": f"{base}/labels"}
    name = s.path.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else s.path.suffix
    stem = name[: len(name) - len(suffix)]
    return {"probabilities": str(s.path.with_name(f"{stem}_probabilities{suffix}")), "labels": str(output)}


def _activation(task: dict[str, Any]) -> str:
    """The activation predict applies to the network's float32 output (the network's own final
    sigmoid or softmax is taken off by :func:`~psc_seg.engine.inference.prepare_model`)."""
    return "sigmoid" if task["kind"] == "affinities" else "softmax"


VOXEL_SIZE_TOLERANCE = 0.25  # relative difference per axis between input and training data


def check_input(source: Volume, metadata: dict[str, Any], *, normalize: str | None = None,
                ignore_voxel_size: bool = False) -> dict[str, Any]:
    """The resolved normalisation for ``source``, after checking
    ``source`` against what the checkpoint's ``metadata`` says of the training data.

    UserError, naming both sides and the override: values that do not fit the stored
    normalisation (:func:`~psc_seg.io.check_value_range`; ``normalize`` replaces it by that
    kind, estimated on ``source``), or a voxel size more than 25 % from the training data's
    on any axis (``ignore_voxel_size`` proceeds). A voxel size unknown on either side skips
    that check with a :class:`~psc_seg.errors.Note`, as does an override. (1, 1, 1 without a
    unit is what formats hold when nobody set one: unknown; checkpoints record the unit as
    ``voxel_unit``.)
    """
    if normalize is not None:
        if normalize not in NORMALIZE_KINDS:
            raise UserError(f"{{normalize}} must be one of {', '.join(NORMALIZE_KINDS)}, got {normalize!r}",
                            options=("normalize",))
        norm = resolve_normalization({"kind": normalize}, source)
        note(f"normalising the input as {normalize} (given), not as the checkpoint says "
             f"({(metadata.get('normalize') or {}).get('kind', 'by dtype')})")
    else:
        stored = metadata.get("normalize")
        if stored:
            check_value_range(stored, source)
        norm = resolve_normalization(stored, source)
    trained = metadata.get("voxel_size")
    trained = tuple(float(v) for v in trained) if trained else None
    if ignore_voxel_size:
        note("voxel-size check skipped (ignore_voxel_size)")
    elif trained is None or not known_voxel_size(trained, metadata.get("voxel_unit")):
        note("the checkpoint records no voxel size of its training data; voxel-size check skipped")
    elif not source.has_voxel_size:
        note(f"input {source.spec!r} has no voxel size in its metadata; the check against the training "
             f"data's {_size(trained)} was skipped")
    elif any(abs(v / t - 1) > VOXEL_SIZE_TOLERANCE for v, t in zip(source.voxel_size, trained)):
        raise UserError(f"input {source.spec!r} has voxel size {_size(source.voxel_size)} but the network was "
                        f"trained at {_size(trained)} (more than {VOXEL_SIZE_TOLERANCE:.0%} apart on an axis); "
                        "resample the volume, or pass {ignore_voxel_size} to predict anyway",
                        options=("ignore_voxel_size",))
    return norm


def _size(voxel_size: Sequence[float]) -> str:
    return "x".join(f"{v:g}" for v in voxel_size) + " (z, y, x)"


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
    normalize: str | None = None,
    ignore_voxel_size: bool = False,
    allow_incomplete: bool = False,
    exact_tiling: bool = False,
    roi: str | None = None,
    roi_voxels: str | None = None,
    mask: str | None = None,
    pyramid: bool = True,
    tta: str = "none",
) -> dict[str, Any]:
    """Predict ``output`` from ``input`` with the network in ``checkpoint``, block by block.

    Args:
        checkpoint: a psc-seg checkpoint (.pt).
        input: input volume spec, ``(Z, Y, X)`` or ``(C, Z, Y, X)``.
        output: output volume spec (see the module docstring for what is written where).
        block_shape: write ROI shape ``(z, y, x)``, a multiple of the model's ``shape_step``,
            capped to the volume with a note (:func:`~psc_seg.engine.inference.cap_block_shape`);
            default 64 per axis; for a DenseNet the whole volume while it is small (see
            :func:`~psc_seg.engine.inference.default_block_shape`).
        workers: local dask worker processes (0: in this process).
        scheduler: address of an existing dask scheduler instead of ``workers``.
        device: "cpu" or "cuda".
        batch_size: blocks per forward pass.
        dtype: "float32" or "uint8" (quantised ``round(255 p)``).
        precision: compute precision (:mod:`psc_seg.engine.precision`): "auto" (CPU: bfloat16
            where the CPU has bfloat16 instructions and a calibration shows it faster for this
            network, else float32; CUDA: bfloat16 or float16 autocast), "float32", "bfloat16",
            "float16" (CUDA only). A resumed ``auto`` run keeps the precision it started with.
        resume: continue an unfinished output made with the same settings.
        overwrite: replace an existing output.
        progress: tqdm bar over blocks.
        normalize: normalise the input as this kind (``uint8``, ``zscore``, ``percentile``,
            statistics estimated on the input) instead of as the checkpoint says; stored with
            the output. Without it, an input whose values do not fit the checkpoint's
            normalisation is refused (:func:`check_input`).
        ignore_voxel_size: predict although the input's voxel size differs from the training
            data's by more than 25 % on an axis.
        allow_incomplete: predict from an input psc-seg marked unfinished (a note says so);
            without it, it is refused (:func:`~psc_seg.engine.resume.check_finished`).
        exact_tiling: for a network whose receptive field is wider than its halo (the
            DenseNet), read the whole receptive field around every block even where the volume
            is too large for one block (exact, costly); by default that is done only where the
            whole volume fits one block (:func:`~psc_seg.engine.inference.exact_fits`), and
            otherwise a note says the result is not exact near block borders.
        roi: compute only this region, ``"z0:z1,y0:y1,x0:x1"`` in the input's world units
            (e.g. nm; ends exclusive, on voxel borders); the output covers exactly it and is
            placed where it lies (offset = input offset + ROI begin). Blocks read their
            context from the input around it (mirrored only outside the input), so the
            output equals that region of a whole-volume prediction
            (:func:`~psc_seg.engine.region.resolve_roi`).
        roi_voxels: the same in voxel indices; excludes ``roi``.
        mask: a 3D volume, nonzero where to predict, at its own voxel size (an integer
            multiple of the input's, or a divisor) and offset: only the blocks whose write ROI
            touches its nonzero voxels are computed; the others stay 0 and are recorded as
            done (:func:`~psc_seg.engine.region.mask_blocks`).
        pyramid: zarr outputs are OME-Zarr multiscale pyramids (:mod:`psc_seg.io.pyramid`:
            affinities and probabilities by mean, argmax labels by mode), built blockwise
            once level 0 is written, like it (``workers``, ``scheduler``, resumable); an
            output is complete with its last level. False: level 0 only. Other formats have
            no pyramid.
        tta: mirror test-time augmentation (:mod:`psc_seg.engine.tta`): "none", "flips" (the
            mean over the 8 axis flips) or "flips+transposes" (also the axis permutations that
            the voxel size and the network allow); affinity channels are mapped and shifted
            back, class probabilities averaged before the argmax.

    Returns a summary: outputs, precision (what was used and why), blocks total / computed / skipped (done before) / masked
    (outside ``mask``, left at 0), seconds, voxels per second.
    Ctrl-C raises :class:`~psc_seg.errors.Interrupted` saying how many blocks are kept (the
    output stays unfinished; ``resume`` continues it).
    Checks skipped or overridden, and an unfinished input used, are told as
    :class:`~psc_seg.errors.Note` warnings (the CLI prints them as ``note: ...``).
    """
    check_exclusive(resume=resume, overwrite=overwrite)
    check_executor(workers, scheduler)  # every option is checked before any output is made
    if dtype not in DTYPES:
        raise UserError(f"{{dtype}} must be one of {', '.join(DTYPES)}, got {dtype!r}", options=("dtype",))
    resolve_device(device)
    if batch_size < 1:
        raise UserError(f"{{batch_size}} must be >= 1, got {batch_size}", options=("batch_size",))
    check_precision(precision, device)
    ckpt = load_checkpoint(checkpoint, map_location=device)
    model = ckpt.model
    task = resolve_task(ckpt)
    source = open_volume(input)
    check_image(source)
    note(check_finished(source, "input", allow_incomplete=allow_incomplete))
    in_channels = getattr(model, "in_channels", 1)
    if (source.channels or 1) != in_channels:
        raise UserError(f"input {input!r} has {source.channels or 1} channel(s) but the model expects {in_channels}")
    shape = source.spatial_shape
    region = resolve_roi(source, roi=roi, roi_voxels=roi_voxels)
    total = region or Roi((0, 0, 0), shape)  # the input voxels the output covers
    specs = output_specs(output, task)
    check_apart(input, specs.values())
    mask_volume = None
    if mask is not None:
        check_apart(mask, specs.values())
        mask_volume = open_volume(mask)
        check_mask(mask_volume, source, total)
    exact = exact_tiling or not reads_receptive_field(model) or exact_fits(model, total.shape)
    if block_shape:
        block_shape, capped = cap_block_shape(model, block_shape, total.shape)
        note(capped)
    else:
        block_shape = default_block_shape(model, total.shape, exact=exact)
    runner = prepare_model(model)  # the network that runs (a same-padding UNet's valid twin)
    voxel_size = source.voxel_size if source.has_voxel_size else (ckpt.metadata.get("voxel_size") or None)
    mirror = plan_tta(tta, offsets=task.get("offsets") if task["kind"] == "affinities" else None,
                      voxel_size=voxel_size, model=runner)
    geometry = plan_geometry(model, block_shape, twin=runner, exact=exact, origin=total.begin,
                             margin=tta_margin(mirror))
    if not exact:
        reach = 2 * max(round_up(model.receptive_radius, model.shape_step))
        note(f"not exact near block borders: the {type(model).__name__}'s receptive field "
             f"({max(model.receptive_radius)} voxels) is wider than the {max(geometry.context)}-voxel halo each block "
             f"reads, because exact tiling of a {'x'.join(map(str, total.shape))} volume would read up to (block + {reach})^3 "
             "voxels per block; set exact_tiling (psc-seg predict --exact-tiling) for the exact result")
    norm = check_input(source, ckpt.metadata, normalize=normalize, ignore_voxel_size=ignore_voxel_size)
    source_spec = parse_spec(input)
    settings = {
        "checkpoint_sha256": file_hash(checkpoint),
        "input": {"spec": (source_spec.url or str(source_spec.path.resolve())) + ":" + source_spec.inner,
                  "shape": list(source.shape), "dtype": str(source.dtype)},
        "block_shape": list(geometry.write_shape),
        "dtype": dtype,
        "normalize": norm,
        "outputs": specs,
    }
    if isinstance(geometry, ClippedGeometry):  # reads differ from the fixed-halo blocks before it: no resume across
        settings["geometry"] = "clipped-receptive-field"
    # a resumed auto run keeps the precision its record holds (none there: float32): its blocks alike
    stored = stored_settings(specs) if resume and precision == "auto" else None
    choice = (PrecisionChoice(stored.get("precision", "float32"), "auto", "the precision of the run being resumed")
              if stored is not None else
              choose_precision(precision, device, model=runner, shape=calibration_shape(runner, geometry.write_shape)))
    if choice.worth_a_note:  # float32 without a calibration: the summary says it
        note(f"computing in {choice}")
    if choice.used != "float32":  # float32 runs keep the settings (and resume records) they had
        settings["precision"] = choice.used
    if mirror is not None:
        settings["tta"] = mirror.mode
    if region is not None:
        settings["roi"] = {"offset": list(region.begin), "shape": list(region.shape)}  # input voxels
    if not pyramid:  # outputs with a pyramid keep the settings (and resume records) they had
        settings["pyramid"] = False

    checkpoint = str(Path(checkpoint).resolve())
    blocks = geometry.blocks(shape, total)
    masked: list[int] = []
    if mask_volume is not None:
        chosen = mask_blocks(mask_volume, source, blocks)
        masked = sorted(set(b.block_id for b in blocks) - set(chosen))
        mask_spec = parse_spec(mask)
        settings["mask"] = mask_identity(mask_volume, str(mask_spec.path.resolve()) + ":" + mask_spec.inner, chosen)
    reference = source if region is None else CroppedVolume(source, region.begin, region.shape)
    with prepare_outputs(
        specs, settings, resume=resume, overwrite=overwrite,
        create=lambda where: _create_outputs(where, task, source=reference, dtype=dtype, geometry=geometry,
                                             settings=settings, checkpoint=checkpoint, pyramid=pyramid,
                                             precision=choice.provenance(device)),
    ) as prepared:
        if prepared.done:
            return _summary(specs, total=len(blocks), computed=0, skipped=len(blocks) - len(masked),
                            masked=len(masked), seconds=0.0, voxels=0, precision=choice)
        parallel = bool(workers or scheduler)
        # our LocalCluster's workers share this machine's cores; a user's --scheduler workers are left as they are
        threads = max(1, (os.cpu_count() or 1) // workers) if workers else None
        writer = PredictionWriter(prepared.volumes, kind=task["kind"], dtype=dtype, origin=total.begin)
        predictor = BlockPredictor(
            checkpoint=checkpoint, device=device,
            model=None if parallel else to_bfloat16(runner) if cpu_bfloat16(choice.used, device) else runner,
            geometry=geometry, source=source, writer=writer, norm=norm, activation=_activation(task),
            threads=threads, precision=choice.used, tta=mirror,
        )
        with shared_cluster(workers, scheduler) as where:  # the blocks, then the pyramid
            try:
                stats = run_blockwise(blocks, predictor, batch_size=batch_size if batch_size > 1 else None,
                                      record=prepared.record, progress=progress, desc="predict", skip=masked, **where)
            except KeyboardInterrupt:
                raise Interrupted(f"{len(prepared.record.done_ids())} of {len(blocks)} blocks written to "
                                  f"{prepared.written_to()} are kept") from None
            try:
                build_pyramids(prepared.volumes.values(), progress=progress, **where)
            except KeyboardInterrupt:
                raise Interrupted(f"all {len(blocks)} blocks of {prepared.written_to()} are kept; its pyramid is "
                                  "unfinished") from None
        prepared.finish(writer.finalize)
    return _summary(specs, total=stats.total, computed=stats.computed, skipped=stats.skipped - len(masked),
                    masked=len(masked), seconds=stats.seconds, voxels=stats.voxels, precision=choice)



def _create_outputs(specs: dict[str, str], task: dict[str, Any], *, source: Volume, dtype: str,
                    geometry: BlockGeometry, settings: dict, checkpoint: str, pyramid: bool = True,
                    precision: dict | None = None) -> dict[str, Volume]:
    shape = source.spatial_shape
    attrs: dict[str, Any] = {"task": task}
    if dtype == "uint8":
        attrs["value_scale"] = 1.0 / 255.0
    provenance = {"config": {"checkpoint": checkpoint, **settings, "block_geometry": asdict(geometry),
                             "compute_precision": precision}}
    common = dict(chunks=geometry.write_shape, reference=source, provenance=provenance, pyramid=pyramid)
    outputs = {}
    if task["kind"] == "affinities":
        outputs["affinities"] = create_volume(specs["affinities"], shape=(len(task["offsets"]), *shape),
                                              dtype=dtype, attrs=attrs, **common)
    else:
        k = int(task["num_classes"])
        outputs["probabilities"] = create_volume(specs["probabilities"], shape=(k, *shape), dtype=dtype,
                                                 attrs=attrs, **common)
        outputs["labels"] = create_volume(specs["labels"], shape=shape, dtype=np.uint8 if k <= 256 else np.uint16,
                                          attrs={"task": task}, labels=True, **common)
    return outputs


def _summary(specs: dict[str, str], *, total: int, computed: int, skipped: int, masked: int, seconds: float,
             voxels: int, precision: PrecisionChoice) -> dict[str, Any]:
    return {"outputs": specs, "precision": precision, "blocks": total, "computed": computed, "skipped": skipped,
            "masked": masked,
            "seconds": seconds, "voxels_per_second": voxels / seconds if seconds > 0 else 0.0}

