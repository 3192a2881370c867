"""Validation during training, with the very code the user runs afterwards (a stage, so it
lives with the stages; :class:`psc_seg.train.loop.Trainer` calls it through its ``Validator``
protocol).

The checkpoint just written (``last.pt``) goes through the blockwise ``predict`` pipeline on
each validation volume (outputs kept in ``RUN_DIR/validation/``), over the whole raw so that
the labelled region has its true context; the scores are taken on the labelled region (labels,
mask and ``roi``: the volume's ``sample_roi``), then:

- EM (affinities): ``segment_affinities`` (waterz at ``validation.thresholds``) of the
  nearest-neighbour channels, picked by the offsets stored with the predicted affinities as
  segment picks them, and VI against the ground truth; the figure is the VI at the threshold
  that is best on average over the volumes.
- MRI (semantic): the predicted labels and the foreground Dice per class, averaged over the
  volumes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psc_seg.affinities import nearest_neighbour_channels
from psc_seg.errors import Note, note
from psc_seg.evaluate import contingency_table, dice_scores, instance_scores
from psc_seg.io import open_volume
from psc_seg.pipelines.predict import predict
from psc_seg.train.config import TrainConfig
from psc_seg.train.data import LabelledVolume


def _predict(checkpoint: Path, raw: str, output: Path, *, config: TrainConfig, device: torch.device) -> dict:
    block = config.validation.block_shape
    # allow_incomplete: train has checked the raw (open_labelled) and refused it or said so. The
    # notes of predict's own checks (voxel size of the same data) would repeat at every validation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Note)
        return predict(checkpoint, raw, str(output), block_shape=list(block) if block else None,
                       device=str(device), overwrite=True, progress=False, allow_incomplete=True,
                       pyramid=False)  # scored, never viewed: no levels for viewers


def _scored(volume: LabelledVolume) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray | None]:
    """The region scored, as slices of the raw (and so of the prediction, which covers the raw):
    the volume's ``sample_roi`` (labels, mask and roi); and the labels and mask there."""
    region = volume.sample_roi
    gt = np.asarray(volume.labels[region.relative_to(volume.labels_roi).to_slices()])
    if volume.mask is None:
        return region.to_slices(), gt, None
    mask = np.asarray(volume.mask[region.relative_to(volume.mask_roi).to_slices()]) != 0
    return region.to_slices(), gt, mask


def _unit_range(image: np.ndarray) -> np.ndarray:
    """``image`` as float32 stretched to [0, 1] (min to max; a flat image is all 0)."""
    image = np.asarray(image, dtype=np.float32)
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def _middle_section(volume: LabelledVolume) -> tuple[tuple, np.ndarray, np.ndarray]:
    """The middle z section of the scored region (``sample_roi``): its ``(z, y, x)`` index in
    the raw (and so in the prediction), the normalised raw there (first channel) as an image in
    [0, 1], and the labels there."""
    region = volume.sample_roi
    middle = region.shape[0] // 2
    z_y_x = (region.begin[0] + middle, *region.to_slices()[1:])
    raw = volume.raw[(..., *z_y_x)] if isinstance(volume.raw, np.ndarray) else volume.raw.read(z_y_x)
    raw = np.asarray(volume.normalize(np.asarray(raw)), dtype=np.float32)
    in_labels = region.relative_to(volume.labels_roi).to_slices()
    labels = np.asarray(volume.labels[(in_labels[0].start + middle, *in_labels[1:])])
    return z_y_x, _unit_range(raw.reshape(-1, *raw.shape[-2:])[0]), labels


class AffinityValidator:
    """VI of the waterz segmentation of predicted affinities (lower is better)."""

    columns = ["val_voi_split", "val_voi_merge", "val_voi", "val_threshold"]
    metric = "val_voi"
    label = "VI"
    mode = "min"

    def __init__(self, config: TrainConfig, volumes: Sequence[LabelledVolume], folder: Path) -> None:
        self.config, self.volumes, self.folder = config, list(volumes), Path(folder)
        self.thresholds = sorted(config.validation.thresholds)
        # before training starts: offsets without the nearest neighbours cannot be validated
        left_out = nearest_neighbour_channels(config.task.offsets)[1]
        note(f"validation: {left_out}" if left_out else None)

    def scores(self, checkpoint: Path, device: torch.device) -> list[list[dict[str, float]]]:
        """Per volume, per threshold: instance scores (``voi_split``, ``voi_merge``, ``voi``...)."""
        from psc_seg.pipelines.segment import affinity_offsets
        from psc_seg.segment import segment_affinities

        result = []
        for index, volume in enumerate(self.volumes):
            output = self.folder / f"{index}-affinities.zarr"
            _predict(checkpoint, volume.meta["raw"], output, config=self.config, device=device)
            predicted = open_volume(str(output))
            region, gt, mask = _scored(volume)
            segmentations = segment_affinities(predicted.read(region), thresholds=self.thresholds,
                                               scoring=self.config.validation.scoring,
                                               offsets=affinity_offsets(predicted))
            if mask is not None:  # voxels outside the mask count as unlabelled ground truth
                gt = np.where(mask, gt, 0)
            result.append([instance_scores(contingency_table(gt, seg)) for seg in segmentations])
        return result

    def __call__(self, checkpoint: Path, device: torch.device) -> dict[str, float]:
        per_volume = self.scores(checkpoint, device)
        mean = [
            {key: float(np.mean([v[t][key] for v in per_volume])) for key in ("voi_split", "voi_merge", "voi")}
            for t in range(len(self.thresholds))
        ]
        best = min(range(len(self.thresholds)), key=lambda t: mean[t]["voi"])
        return {"val_voi_split": mean[best]["voi_split"], "val_voi_merge": mean[best]["voi_merge"],
                "val_voi": mean[best]["voi"], "val_threshold": self.thresholds[best]}

    def images(self) -> dict[str, np.ndarray]:
        """The middle z section of the first validation volume's scored region, as ``(1, y, x)``
        images in [0, 1] (for TensorBoard): ``raw``; ``target``, 1 inside a labelled object and
        0 on its borders (label changes in y or x) and on label 0; ``prediction``, the mean of the
        nearest-neighbour affinities of the latest validation."""
        volume = self.volumes[0]
        z_y_x, raw, labels = _middle_section(volume)
        inside = labels != 0
        inside[1:] &= labels[1:] == labels[:-1]
        inside[:, 1:] &= labels[:, 1:] == labels[:, :-1]
        channels = list(nearest_neighbour_channels(self.config.task.offsets)[0])
        predicted = open_volume(str(self.folder / "0-affinities.zarr")).read(z_y_x)
        prediction = np.clip(np.asarray(predicted, dtype=np.float32)[channels].mean(axis=0), 0, 1)
        return {"raw": raw[None], "target": inside.astype(np.float32)[None], "prediction": prediction[None]}

    def checkpoint_metadata(self, figures: dict[str, float]) -> dict[str, Any]:
        """``{"segment": {"threshold", "scoring"}}``: the threshold that scored best with the
        validation's scoring, which ``psc-seg segment`` takes by default for affinities this
        checkpoint predicted."""
        if "val_threshold" not in figures:
            return {}
        return {"segment": {"threshold": float(figures["val_threshold"]), "scoring": self.config.validation.scoring}}


class SemanticValidator:
    """Mean Dice of the foreground classes (higher is better)."""

    metric = "val_dice"
    label = "mean Dice"
    mode = "max"

    def __init__(self, config: TrainConfig, volumes: Sequence[LabelledVolume], folder: Path) -> None:
        self.config, self.volumes, self.folder = config, list(volumes), Path(folder)
        self.classes = list(range(1, int(config.task.num_classes)))
        self.columns = ["val_dice", *(f"val_dice_{k}" for k in self.classes)]

    def __call__(self, checkpoint: Path, device: torch.device) -> dict[str, float]:
        per_class: dict[int, list[float]] = {k: [] for k in self.classes}
        means = []
        for index, volume in enumerate(self.volumes):
            output = self.folder / f"{index}-classes.zarr"
            _predict(checkpoint, volume.meta["raw"], output, config=self.config, device=device)
            region, gt, mask = _scored(volume)
            prediction = open_volume(f"{output}/labels").read(region)
            if mask is not None:
                gt, prediction = gt[mask], prediction[mask]
            dice, mean = dice_scores(gt.astype(np.int64), prediction.astype(np.int64))
            means.append(mean)
            for k in self.classes:
                if k in dice:
                    per_class[k].append(dice[k])
        figures = {"val_dice": float(np.nanmean(means)) if means else float("nan")}
        for k in self.classes:
            figures[f"val_dice_{k}"] = float(np.mean(per_class[k])) if per_class[k] else float("nan")
        return figures

    def images(self) -> dict[str, np.ndarray]:
        """The middle z section of the first validation volume's scored region, as ``(1, y, x)``
        images in [0, 1] (for TensorBoard): ``raw``, and the ``target`` and ``prediction``
        classes of the latest validation, class / (classes - 1)."""
        z_y_x, raw, labels = _middle_section(self.volumes[0])
        predicted = open_volume(f"{self.folder / '0-classes.zarr'}/labels").read(z_y_x)
        top = float(self.config.task.num_classes - 1)
        return {"raw": raw[None], "target": (np.asarray(labels, dtype=np.float32) / top)[None],
                "prediction": np.clip(np.asarray(predicted, dtype=np.float32) / top, 0, 1)[None]}

    def checkpoint_metadata(self, figures: dict[str, float]) -> dict[str, Any]:
        """Nothing: semantic predictions need no later choice."""
        return {}


def make_validator(config: TrainConfig, volumes: Sequence[LabelledVolume], folder: Path):
    """The validator for the config's task; predictions are written under ``folder``."""
    if config.task.kind == "affinities":
        return AffinityValidator(config, volumes, folder)
    return SemanticValidator(config, volumes, folder)
