"""``psc-seg train`` as a plain function: config in, run folder (checkpoints, metrics) out."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import ValidationError

from psc_seg.device import resolve_device
from psc_seg.engine.owner import OutputOwner
from psc_seg.engine.resume import check_finished
from psc_seg.errors import UserError, check_exclusive, note
from psc_seg.files import atomic_path
from psc_seg.engine import Roi
from psc_seg.io import Volume, check_image, normalize, open_volume, resolve_normalization
from psc_seg.io.geometry import number_list, placed_by_index
from psc_seg.models import read_checkpoint
from psc_seg.owned import marked_entries, marker_path, other_entries, remove_entries, write_marker
from psc_seg.train.config import TrainConfig, VolumeSet, WorldRoi, load_config
from psc_seg.train.data import LabelledVolume, PatchDataset
from psc_seg.train.loop import Trainer, check_resumable
from psc_seg.train.model import build_training_model, check_patch_shape

# keys that may change when a run is resumed (longer training, other logging, other machine)
RESUMABLE_CHANGES = ("train.iterations", "train.validate_every", "train.checkpoint_every", "train.log_every",
                     "train.num_workers", "train.max_seconds")
# what a run writes into its folder: the entries --overwrite may remove (psc_seg.owned)
RUN_FILES = ("checkpoints", "metrics.csv", "config.yaml", "curves.png", "tensorboard", "validation")
RUN_KIND = "run"
RUN_MARKER = marker_path(".", RUN_KIND).name  # .psc-seg-run


def default_run_dir(config: str | Path) -> Path:
    """``runs/<name>``: the config file's stem, or the preset name with ``/`` as ``-``."""
    path = Path(str(config))
    name = path.stem if path.is_file() else str(config).removesuffix(".yaml").replace("/", "-")
    return Path("runs") / name


def open_labelled(volume_set: VolumeSet, config: TrainConfig, *, preload: bool,
                  allow_incomplete: bool = False) -> LabelledVolume:
    """Open one raw / labels (/ mask) triple, check it, resolve its normalisation.

    ``allow_incomplete``: use volumes psc-seg marked unfinished (a note says so).

    Labels and mask may cover a sub-region of the raw, placed by their world offsets
    (:func:`place_in_raw`); ``volume_set.roi`` restricts the sampled region (:func:`roi_in_raw`).

    Raises:
        UserError: labels or mask that do not lie on the raw's voxel grid inside it, a ``roi``
            outside the labels, labels that are not integers (float labels that hold only whole
            numbers are read as int64; :func:`check_whole`), a volume psc-seg
            marked unfinished (:func:`~psc_seg.engine.resume.check_finished`), raw that holds
            NaN or infinite values (:func:`check_finite`; float raw read lazily is read once
            for it).
    """
    raw = open_volume(volume_set.raw)
    check_image(raw, "raw")
    labels = open_volume(volume_set.labels)
    mask = open_volume(volume_set.mask) if volume_set.mask else None
    for role, volume in (("raw", raw), ("labels", labels), ("mask", mask)):
        if volume is not None:
            note(check_finished(volume, role, allow_incomplete=allow_incomplete))
    if labels.channels is not None:
        raise UserError(f"labels {volume_set.labels!r} have {labels.channels} channels; give one (z, y, x) label volume")
    whole = np.dtype(labels.dtype).kind == "f"  # float labels (nnU-Net's NIfTI) holding whole numbers
    if not (whole or np.issubdtype(labels.dtype, np.integer)):
        raise UserError(f"labels {volume_set.labels!r} are {labels.dtype}; labels must be integers")
    labels_roi = place_in_raw(labels, raw, "labels")
    mask_roi = place_in_raw(mask, raw, "mask") if mask is not None else None
    roi = roi_in_raw(volume_set.roi, raw, labels, labels_roi) if volume_set.roi is not None else None
    if mask_roi is not None and labels_roi.intersect(mask_roi).empty:
        raise UserError(f"mask {mask.spec!r} ({world_roi(mask)}) does not overlap labels {labels.spec!r} "
                        f"({world_roi(labels)}); give a mask over the labels")
    if preload:
        raw_data, label_data = raw.read(), labels.read()
        mask_data = mask.read() if mask is not None else None
    else:
        raw_data, label_data, mask_data = raw, labels, mask
    if whole:
        check_whole(label_data, labels.spec)
        label_data = label_data.astype(np.int64) if preload else WholeLabels(labels)
    check_finite(raw_data, raw.spec)  # before the normalisation's statistics, which would fail on it too
    spec = resolve_normalization(config.data.normalize.metadata(), raw)
    return LabelledVolume(
        name=raw.spec, raw=raw_data, labels=label_data, mask=mask_data, voxel_size=raw.voxel_size,
        labels_roi=labels_roi, mask_roi=mask_roi, roi=roi,
        normalize=functools.partial(normalize, spec=spec), meta={"normalize": spec, "raw": volume_set.raw, "labels": volume_set.labels, "unit": raw.unit},
    )


def world_roi(volume: Volume) -> str:
    """``volume``'s region in world units, for messages: ``"z 0:512, y 0:768, x 0:768 nanometer"``."""
    ends = [o + s * v for o, s, v in zip(volume.offset, volume.spatial_shape, volume.voxel_size)]
    text = ", ".join(f"{a} {b:g}:{e:g}" for a, b, e in zip("zyx", volume.offset, ends))
    return f"{text} {volume.unit}" if volume.unit else text


def place_in_raw(other: Volume, raw: Volume, role: str) -> Roi:
    """Where ``other`` (the ``role`` volume: labels or mask) lies, in voxels of ``raw``:
    ``(other.offset - raw.offset) / voxel_size``. A volume without a voxel size in its
    metadata (or a raw without one) is aligned by index, so it must have the raw's shape.

    Raises:
        UserError: no voxel size and another shape; another voxel size than the raw's; an
            offset difference that is not a multiple of the voxel size; not inside the raw.
    """
    shape = other.spatial_shape
    if placed_by_index(other, raw, role):
        return Roi((0, 0, 0), shape)
    if not np.allclose(other.voxel_size, raw.voxel_size, rtol=1e-4, atol=0):
        raise UserError(
            f"{role} {other.spec!r} has voxel size {number_list(other.voxel_size)} but raw {raw.spec!r} has "
            f"{number_list(raw.voxel_size)}; resample the {role} to the raw's voxel size"
        )
    steps = np.subtract(other.offset, raw.offset) / np.asarray(raw.voxel_size)
    if not np.allclose(steps, np.round(steps), atol=1e-3):
        raise UserError(
            f"{role} {other.spec!r} at offset {number_list(other.offset)} is off the voxel grid of raw {raw.spec!r} "
            f"(offset {number_list(raw.offset)}, voxel size {number_list(raw.voxel_size)}): the offsets differ by "
            f"{number_list(np.subtract(other.offset, raw.offset))}, not a multiple of the voxel size"
        )
    placed = Roi(np.round(steps).astype(int).tolist(), shape)
    if not Roi((0, 0, 0), raw.spatial_shape).contains(placed):
        raise UserError(
            f"{role} {other.spec!r} ({world_roi(other)}) is not inside raw {raw.spec!r} ({world_roi(raw)}); "
            f"give {role} that lie inside the raw"
        )
    return placed


def roi_in_raw(roi: WorldRoi, raw: Volume, labels: Volume, labels_roi: Roi) -> Roi:
    """A config ``roi`` (world units) in voxels of ``raw``.

    Raises:
        UserError: a ``roi`` off the raw's voxel grid or not inside the labels.
    """
    voxel_size = np.asarray(raw.voxel_size)
    begin = np.subtract(roi.offset, raw.offset) / voxel_size
    shape = np.asarray(roi.shape) / voxel_size
    if not (np.allclose(begin, np.round(begin), atol=1e-3) and np.allclose(shape, np.round(shape), atol=1e-3)):
        raise UserError(
            f"roi (offset {number_list(roi.offset)}, shape {number_list(roi.shape)}) of labels {labels.spec!r} is off the "
            f"voxel grid of raw {raw.spec!r} (offset {number_list(raw.offset)}, voxel size {number_list(raw.voxel_size)}); "
            "give multiples of the voxel size from the raw's offset"
        )
    placed = Roi(np.round(begin).astype(int).tolist(), np.round(shape).astype(int).tolist())
    if not labels_roi.contains(placed):
        ends = [o + s for o, s in zip(roi.offset, roi.shape)]
        text = ", ".join(f"{a} {b:g}:{e:g}" for a, b, e in zip("zyx", roi.offset, ends))
        raise UserError(f"roi ({text}) is not inside labels {labels.spec!r}, which cover {world_roi(labels)}; "
                        "give a roi inside the labels")
    return placed


@dataclass(frozen=True)
class RunFolder:
    """What :func:`check_run_dir` found in a run folder: the entries to remove before the run
    starts (``clear``, psc-seg's own) and the ``last.pt`` to resume from (or None)."""

    path: Path
    clear: tuple[str, ...] = ()
    resume_from: Path | None = None


def _first_bad(array, bad: Callable[[np.ndarray], np.ndarray], max_voxels: int):
    """``(value, index)`` of the first voxel of ``array`` (an array, or a volume read lazily in
    z slabs of at most ``max_voxels``) where ``bad`` (elementwise on a slab) is true, or None."""
    shape = tuple(array.shape)
    plane = int(np.prod(shape)) // max(shape[-3], 1)
    step = max(1, max_voxels // max(plane, 1))
    lead = (slice(None),) * (len(shape) - 3)
    for z in range(0, shape[-3], step):
        slab = np.asarray(array[(*lead, slice(z, min(z + step, shape[-3])))])
        flagged = bad(slab)
        if flagged.any():
            first = np.argwhere(flagged)[0]
            where = [int(i) for i in first]
            where[-3] += z
            return slab[tuple(first)], tuple(where)
    return None


def check_finite(raw, name: str, *, max_voxels: int = 2**24) -> None:
    """UserError naming the volume ``name`` and the first voxel ``(z, y, x)`` (``(c, z, y, x)``)
    that is NaN or infinite, if ``raw`` (an array, or a volume read lazily in z slabs of at most
    ``max_voxels``) has one; integer volumes pass at once."""
    if np.dtype(raw.dtype).kind not in "fc":
        return
    found = _first_bad(raw, lambda slab: ~np.isfinite(slab), max_voxels)
    if found is not None:
        axes = "(c, z, y, x)" if len(raw.shape) == 4 else "(z, y, x)"
        raise UserError(f"raw {name!r} holds NaN or infinite values (the first, {found[0]}, at "
                        f"{axes} = {found[1]}); clean it before training")


def check_whole(labels, name: str, *, max_voxels: int = 2**24) -> None:
    """UserError naming the label volume ``name`` and its first voxel ``(z, y, x)`` that is not
    a whole number (a fraction, NaN or infinite), if float ``labels`` (an array, or a volume read
    lazily in z slabs of at most ``max_voxels``) have one."""
    found = _first_bad(labels, lambda slab: ~np.isfinite(slab) | (slab != np.rint(slab)), max_voxels)
    if found is not None:
        raise UserError(f"labels {name!r} are {labels.dtype} and hold {found[0]} at (z, y, x) = {found[1]}, "
                        "not a whole number; labels must be integers: round them or store them as integers")


class WholeLabels:
    """A lazily read float label volume that :func:`check_whole` passed, read as int64."""

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.shape, self.dtype = volume.shape, np.dtype(np.int64)

    def __getitem__(self, region: Any) -> np.ndarray:
        return np.asarray(self.volume[region]).astype(np.int64)

    def close(self) -> None:
        """Drop the file handle (loader workers reopen their own)."""
        self.volume.close()


def check_run_dir(run_dir: Path, config: TrainConfig, *, resume: bool, overwrite: bool,
                  config_file: Path | None = None) -> RunFolder:
    """Check the run folder ``run_dir`` for a run of ``config``, touching nothing.

    A run folder is one psc-seg marked (:data:`RUN_MARKER`, see :mod:`psc_seg.owned`) or one
    made before markers existed (``checkpoints/last.pt`` and ``config.yaml``); an empty or new
    folder becomes one. ``overwrite`` clears only psc-seg's entries: those the marker lists,
    or :data:`RUN_FILES` in an unmarked old run. ``config_file``: the config given, which may
    lie in the folder.

    Raises:
        UserError: a file, or a non-empty folder that is not a run; a run there without
            ``resume`` or ``overwrite``; nothing to resume; a config that differs from the
            run's ``config.yaml`` in keys that must not change.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{{out}} {str(run_dir)!r} is a file; give a folder for the run", options=("out",))
    last = run_dir / "checkpoints" / "last.pt"
    marked = marked_entries(run_dir, RUN_KIND, allowed=RUN_FILES)
    old_run = marked is None and last.is_file() and (run_dir / "config.yaml").is_file()
    others = other_entries(run_dir, ignore=[config_file] if config_file is not None else [])
    if marked is None and not old_run and others:
        shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        raise UserError(f"{{out}} {str(run_dir)!r} is not empty ({shown}) and is not a psc-seg run folder (no "
                        f"{RUN_MARKER}); choose an empty or new folder for the run", options=("out",))
    owned = tuple(marked if marked is not None else RUN_FILES)
    if resume:
        if not last.is_file():
            raise UserError(f"nothing to resume: {str(last)!r} does not exist; run without {{resume}} to start",
                            options=("resume",))
        saved_path = run_dir / "config.yaml"
        if saved_path.is_file():
            changed = _changed_keys(_with_defaults(yaml.safe_load(saved_path.read_text()) or {}),
                                    config.as_dict(absolute=True))
            changed = [k for k in changed if k not in RESUMABLE_CHANGES]
            if changed:
                raise UserError(
                    f"the config differs from the run's config.yaml in {', '.join(changed)}; resume with the same "
                    f"config (only {', '.join(RESUMABLE_CHANGES)} may change) or start a new {{out}}",
                    options=("out",),
                )
        return RunFolder(run_dir, resume_from=last)
    if (run_dir / "checkpoints").exists() and not overwrite:
        existing = [name for name in owned if (run_dir / name).exists()]
        raise UserError(
            f"run folder {str(run_dir)!r} already holds a run ({', '.join(existing)}); pass {{resume}} to continue "
            f"it (`psc-seg train --resume {run_dir}`), {{overwrite}} to start over, or choose another {{out}}",
            options=("resume", "overwrite", "out"),
        )
    # overwrite, or the leftovers of a run that failed before its first checkpoint
    return RunFolder(run_dir, clear=owned)


def start_run_dir(folder: RunFolder) -> None:
    """Make the run folder, remove what :func:`check_run_dir` said to clear, and mark it as a
    run (an old unmarked run that is resumed gets its marker too)."""
    folder.path.mkdir(parents=True, exist_ok=True)
    remove_entries(folder.path, folder.clear)
    write_marker(folder.path, RUN_KIND, RUN_FILES)


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved ``config.yaml`` with the defaults of keys added since it was written (a run
    from before ``train.schedule`` existed resumes with the constant rate it had); as saved if
    it no longer validates (the comparison then names what differs). Volume paths absolute, as
    the config's are compared (a run started with relative ones resumes from that folder)."""
    try:
        return TrainConfig.model_validate(saved).as_dict(absolute=True)
    except ValidationError:
        return saved


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [k for key in keys for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)


def prepare(
    config: TrainConfig, *, allow_incomplete: bool = False,
) -> tuple[torch.nn.Module, tuple[int, int, int], list[LabelledVolume], list[LabelledVolume]]:
    """Open the volumes and build the model: ``(model, input_shape, train, validation)``
    (``allow_incomplete``: see :func:`open_labelled`)."""
    train_volumes = [open_labelled(v, config, preload=config.data.preload, allow_incomplete=allow_incomplete)
                     for v in config.data.train]
    validation_volumes = [open_labelled(v, config, preload=False, allow_incomplete=allow_incomplete)
                          for v in config.data.validation]
    channels = {v.in_channels for v in train_volumes + validation_volumes}
    if len(channels) != 1:
        raise UserError(f"the raw volumes have different channel counts ({sorted(channels)}); use volumes alike")
    torch.manual_seed(config.train.seed)
    model = build_training_model(config, in_channels=channels.pop())
    input_shape = check_patch_shape(model, config.train.patch_shape)
    return model, input_shape, train_volumes, validation_volumes


def resume_source(config: str | Path | dict[str, Any] | None, out: str | Path | None,
                  resume: bool) -> tuple[str | Path | dict[str, Any], Path | None]:
    """The config and run folder of a ``train`` call: ``config`` and ``out`` as given, or, to
    continue a run given by its folder alone (``psc-seg train --resume RUN_DIR``: ``config``
    the folder, or None with ``out`` the folder), the run's ``config.yaml`` and that folder.

    Raises:
        UserError: no config and no run folder; a folder as config without ``resume``; a run
            folder given twice, differently; a folder with no ``config.yaml`` to resume.
    """
    folder = Path(config) if isinstance(config, (str, Path)) and Path(config).is_dir() else None
    if folder is None and config is None:
        if not (resume and out is not None):
            raise UserError("give a CONFIG file or preset name, e.g. `psc-seg train em/demo-small --set "
                            "\"data.train=[{raw: train.zarr/raw, labels: train.zarr/labels}]\"` (see "
                            "--list-presets), or continue a run with `psc-seg train --resume RUN_DIR`")
        folder = Path(out)
    if folder is None:
        return config, Path(out) if out is not None else None
    if not resume:
        raise UserError(f"{str(folder)!r} is a folder, not a config file; pass {{resume}} to continue the run in "
                        "it, or give a config file or preset to start one", options=("resume",))
    if out is not None and Path(out).resolve() != folder.resolve():
        raise UserError(f"two run folders: {str(folder)!r} and {{out}} {str(out)!r}; continue a run with "
                        f"`psc-seg train --resume RUN_DIR` alone", options=("out",))
    saved = folder / "config.yaml"
    if not saved.is_file():
        raise UserError(f"nothing to resume: {str(saved)!r} does not exist ({str(folder)!r} is not a psc-seg run "
                        "folder); give the folder a run was trained into (its --out)")
    return saved, folder


def train(
    config: str | Path | dict[str, Any] | None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    iterations: int | None = None,
    device: str = "cpu",
    overrides: Sequence[str] = (),
    quiet: bool = False,
    allow_incomplete: bool = False,
) -> dict[str, Any]:
    """Train a model as ``config`` says, writing checkpoints and metrics into ``out``.

    Args:
        config: YAML file, preset name (``em/unet-p2sc2``) or parsed mapping; with ``resume``, the
            run folder (or None, with ``out`` the run folder) continues the run as its
            ``config.yaml`` says (:func:`resume_source`), ``overrides`` besides.
        out: run folder (default ``runs/<config name>``).
        resume: continue the run in ``out`` from ``checkpoints/last.pt``; the config may be the
            run's own ``config.yaml``.
        overwrite: start the run in ``out`` again, removing only what psc-seg wrote there (see
            :func:`check_run_dir`), once the config, data and model have passed their checks.
        iterations: overrides ``train.iterations``.
        device: ``cpu`` or ``cuda`` (mixed precision on CUDA).
        overrides: ``key.path=value`` strings (``--set``).
        quiet: no progress bar.
        allow_incomplete: train on volumes psc-seg marked unfinished (a note says so); without
            it they are refused (:func:`~psc_seg.engine.resume.check_finished`).

    Returns:
        ``{"run_dir", "last", "best", "metric", "iteration", "loss", "best_value", "best_iteration",
        "elapsed_s", "validation"}`` (``metric``: what ``best_value`` is, e.g. ``"VI"``; None
        without validation). What the user should know (e.g. affinity channels
        validation leaves out) is told as :class:`~psc_seg.errors.Note` warnings.
    """
    check_exclusive(resume=resume, overwrite=overwrite)
    config, out = resume_source(config, out, resume)
    overrides = list(overrides)
    if iterations is not None:
        overrides.append(f"train.iterations={int(iterations)}")
    cfg = load_config(config, overrides)
    torch_device = resolve_device(device)
    run_dir = Path(out) if out is not None else default_run_dir(config if not isinstance(config, dict) else "config")
    config_file = Path(config) if not isinstance(config, dict) and Path(config).is_file() else None
    if (not resume and config_file is not None
            and config_file.resolve() == (run_dir / "config.yaml").resolve()):
        raise UserError(f"{str(config)!r} is where the run writes its resolved config; pass {{resume}} to "
                        "continue that run, or choose another {out}", options=("resume", "out"))
    # one trainer per run folder (a killed one's is taken over by resume); given up however this ends
    owner = OutputOwner(run_dir.with_name(f".{run_dir.name}.psc-seg-owner"), str(run_dir))
    owner.acquire(resume=resume)
    try:
        return _train(cfg, run_dir, config_file=config_file, resume=resume, overwrite=overwrite,
                      device=torch_device, quiet=quiet, allow_incomplete=allow_incomplete)
    finally:
        owner.release()


def _train(cfg: TrainConfig, run_dir: Path, *, config_file: Path | None, resume: bool, overwrite: bool, device,
           quiet: bool, allow_incomplete: bool) -> dict[str, Any]:
    # refusals first (a folder that is not a run, a run without resume / overwrite): before any work
    folder = check_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite, config_file=config_file)
    done = None
    if folder.resume_from is not None:  # a last.pt without the entry is refused later (check_resumable)
        done = (read_checkpoint(folder.resume_from, mmap=True).get("extra") or {}).get("iteration")
    if done is not None and int(done) >= cfg.train.iterations:  # nothing left to train
        raise UserError(f"the run in {str(run_dir)!r} is finished: trained to iteration {done} of "
                        f"train.iterations {cfg.train.iterations}; pass {{iterations}} with more to train longer",
                        options=("iterations",))
    model, input_shape, train_volumes, validation_volumes = prepare(cfg, allow_incomplete=allow_incomplete)
    if folder.resume_from is not None:
        check_resumable(folder.resume_from, model, cfg)
    dataset = PatchDataset(
        train_volumes, input_shape=input_shape, output_shape=cfg.train.patch_shape, task=cfg.task,
        augment_config=cfg.augment, seed=cfg.train.seed, min_labelled=cfg.train.min_labelled,
        zero_label=cfg.data.zero_label,
    )
    validator = None
    if validation_volumes:
        from psc_seg.pipelines.validate import make_validator

        validator = make_validator(cfg, validation_volumes, run_dir / "validation")
    # only now, with everything checked, may psc-seg's entries of an old run be cleared (overwrite)
    start_run_dir(folder)
    resolved = cfg.as_dict(absolute=True)  # resumable from any folder
    _write_yaml(run_dir / "config.yaml", resolved)
    metadata = {
        "task": cfg.task.metadata(),
        "normalize": cfg.data.normalize.metadata(),
        "config": resolved,
        "voxel_size": list(train_volumes[0].voxel_size),
        "voxel_unit": train_volumes[0].meta["unit"],  # with it, 1 x 1 x 1 is a voxel size, not "unknown"
        "input_shape": list(input_shape),
        "output_shape": list(cfg.train.patch_shape),
    }
    trainer = Trainer(config=cfg, model=model, dataset=dataset, run_dir=run_dir, metadata=metadata,
                      validator=validator, device=device, quiet=quiet)
    summary = trainer.fit(resume_from=folder.resume_from)
    return {"run_dir": str(run_dir), "last": str(run_dir / "checkpoints" / "last.pt"),
            "best": str(run_dir / "checkpoints" / "best.pt"),
            "metric": getattr(validator, "label", None), **summary}


__all__: Iterable[str] = ("default_run_dir", "open_labelled", "prepare", "resolve_device", "resume_source", "train")
