"""Validation during training, with the code the user runs afterwards.

EM (affinities): predict the validation volumes -> segment (waterz agglomeration at
``validation.thresholds``) -> VI against the ground truth; the figure is the VI at the best
threshold, averaged over the volumes. MRI (semantic): predict -> argmax -> Dice of the
foreground classes, averaged over the volumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from psc_seg.evaluate import contingency_table, dice_scores, instance_scores
from psc_seg.segment.agglomerate import agglomerate
from psc_seg.train.config import TrainConfig
from psc_seg.train.data import LabelledVolume
from psc_seg.train.predict import predict_in_memory


class AffinityValidator:
    """VI of the waterz segmentation of predicted affinities (lower is better)."""

    columns = ["val_voi_split", "val_voi_merge", "val_voi", "val_threshold"]
    metric = "val_voi"
    mode = "min"

    def __init__(self, config: TrainConfig, volumes: Sequence[LabelledVolume]) -> None:
        self.config, self.volumes = config, list(volumes)
        self.thresholds = sorted(config.validation.thresholds)

    def scores(self, model: nn.Module, device: torch.device) -> list[list[dict[str, float]]]:
        """Per volume, per threshold: the instance scores (``voi_split``, ``voi_merge``, ``voi``...)."""
        result = []
        for volume in self.volumes:
            affinities = predict_in_memory(model, volume, device=device, config=self.config)
            segmentations = agglomerate(affinities, self.thresholds, scoring=self.config.validation.scoring)
            gt = np.asarray(volume.labels)
            result.append([instance_scores(contingency_table(gt, seg)) for seg in segmentations])
        return result

    def __call__(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        per_volume = self.scores(model, device)
        mean = [
            {key: float(np.mean([v[t][key] for v in per_volume])) for key in ("voi_split", "voi_merge", "voi")}
            for t in range(len(self.thresholds))
        ]
        best = min(range(len(self.thresholds)), key=lambda t: mean[t]["voi"])
        return {"val_voi_split": mean[best]["voi_split"], "val_voi_merge": mean[best]["voi_merge"],
                "val_voi": mean[best]["voi"], "val_threshold": self.thresholds[best]}


class SemanticValidator:
    """Mean Dice of the foreground classes (higher is better)."""

    metric = "val_dice"
    mode = "max"

    def __init__(self, config: TrainConfig, volumes: Sequence[LabelledVolume]) -> None:
        self.config, self.volumes = config, list(volumes)
        self.classes = list(range(1, int(config.task.num_classes)))
        self.columns = ["val_dice", *(f"val_dice_{k}" for k in self.classes)]

    def __call__(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        per_class: dict[int, list[float]] = {k: [] for k in self.classes}
        means = []
        for volume in self.volumes:
            logits = predict_in_memory(model, volume, device=device, config=self.config)
            prediction = np.argmax(logits, axis=0)
            gt = np.asarray(volume.labels)
            if volume.mask is not None:
                keep = np.asarray(volume.mask) != 0
                gt, prediction = gt[keep], prediction[keep]
            dice, mean = dice_scores(gt.astype(np.int64), prediction.astype(np.int64))
            means.append(mean)
            for k in self.classes:
                if k in dice:
                    per_class[k].append(dice[k])
        figures = {"val_dice": float(np.nanmean(means)) if means else float("nan")}
        for k in self.classes:
            figures[f"val_dice_{k}"] = float(np.mean(per_class[k])) if per_class[k] else float("nan")
        return figures


def make_validator(config: TrainConfig, volumes: Sequence[LabelledVolume]):
    """The validator for the config's task."""
    if config.task.kind == "affinities":
        return AffinityValidator(config, volumes)
    return SemanticValidator(config, volumes)
