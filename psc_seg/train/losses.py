"""Training losses: masked, label-balanced ``bce`` / ``mse`` for affinities; ``ce``, ``dice``
and ``ce+dice`` for semantic classes. Each is averaged over the voxels the mask keeps, so a
patch with few labelled voxels does not count less per voxel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

AFFINITY_LOSSES = ("bce", "mse")
SEMANTIC_LOSSES = ("ce", "dice", "ce+dice")


def balance_weights(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-voxel weights under which positives and negatives each carry half of the mask's
    weight (as MALA's ``balance_labels``), computed per affinity channel.

    Args:
        target: ``(N, C, Z, Y, X)`` in {0, 1}.
        mask: ``(N, C, Z, Y, X)`` in {0, 1}.

    Returns:
        ``(N, C, Z, Y, X)`` weights, 0 outside the mask; a channel with a single class keeps
        weight 1 on its masked voxels.
    """
    dims = (0, 2, 3, 4)
    total = mask.sum(dim=dims, keepdim=True)
    positive = (target * mask).sum(dim=dims, keepdim=True)
    negative = total - positive
    both = (positive > 0) & (negative > 0)
    w_pos = torch.where(both, total / (2 * positive.clamp_min(1)), torch.ones_like(total))
    w_neg = torch.where(both, total / (2 * negative.clamp_min(1)), torch.ones_like(total))
    return mask * torch.where(target > 0.5, w_pos, w_neg)


def affinity_loss(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, kind: str = "bce", balance: bool = True
) -> torch.Tensor:
    """Masked affinity loss.

    Args:
        prediction: ``(N, C, Z, Y, X)`` affinities in [0, 1] (the model ends in a sigmoid).
        target: ``(N, C, Z, Y, X)`` float in {0, 1}.
        mask: ``(N, C, Z, Y, X)`` float in {0, 1}; 0 = pair not labelled, no loss.
        kind: ``"bce"`` (binary cross-entropy) or ``"mse"`` (the paper's Euclidean loss).
        balance: weight by :func:`balance_weights` instead of the plain mask.

    Returns:
        Scalar: ``sum(w * l) / sum(mask)``; 0 (with a gradient) if the mask is empty.
    """
    if kind not in AFFINITY_LOSSES:
        raise ValueError(f"affinity loss must be one of {AFFINITY_LOSSES}, got {kind!r}")
    prediction = prediction.float()
    weights = balance_weights(target, mask) if balance else mask
    if kind == "bce":
        per_voxel = F.binary_cross_entropy(prediction.clamp(1e-6, 1 - 1e-6), target, reduction="none")
    else:
        per_voxel = (prediction - target) ** 2
    return (weights * per_voxel).sum() / mask.sum().clamp_min(1.0)


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes (class 0, background, excluded unless
    it is the only class), on the masked voxels of the whole batch."""
    num_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).permute(0, 4, 1, 2, 3).float()
    m = mask.unsqueeze(1)
    dims = (0, 2, 3, 4)
    intersection = (probs * onehot * m).sum(dims)
    denominator = (probs * m).sum(dims) + (onehot * m).sum(dims)
    dice = (2 * intersection + eps) / (denominator + eps)
    classes = dice[1:] if num_classes > 1 else dice
    return 1.0 - classes.mean()


def semantic_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *, kind: str = "ce") -> torch.Tensor:
    """Masked semantic loss.

    Args:
        logits: ``(N, K, Z, Y, X)``.
        labels: ``(N, Z, Y, X)`` int64 class ids in [0, K).
        mask: ``(N, Z, Y, X)`` float in {0, 1}; 0 = no loss.
        kind: ``"ce"`` (cross-entropy), ``"dice"`` (soft Dice) or ``"ce+dice"`` (their sum).

    Returns:
        Scalar loss.
    """
    if kind not in SEMANTIC_LOSSES:
        raise ValueError(f"semantic loss must be one of {SEMANTIC_LOSSES}, got {kind!r}")
    loss = logits.new_zeros((), dtype=torch.float32)
    if kind in ("ce", "ce+dice"):
        per_voxel = F.cross_entropy(logits.float(), labels, reduction="none")
        loss = loss + (per_voxel * mask).sum() / mask.sum().clamp_min(1.0)
    if kind in ("dice", "ce+dice"):
        loss = loss + soft_dice_loss(logits, labels, mask)
    return loss
