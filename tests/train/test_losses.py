"""Losses on tensors whose answer is known by hand."""

from __future__ import annotations

import math

import torch

from psc_seg.train.losses import affinity_loss, balance_weights, semantic_loss, soft_dice_loss


def test_balance_weights_give_each_class_half_of_the_mask():
    target = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 1, 1, 5)
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]).reshape(1, 1, 1, 1, 5)
    w = balance_weights(target, mask).flatten()
    # 4 masked voxels: 3 positives share 2, 1 negative gets 2, the unmasked one 0
    assert torch.allclose(w, torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0, 0.0]))
    single = balance_weights(torch.ones(1, 1, 1, 1, 3), torch.ones(1, 1, 1, 1, 3))
    assert torch.equal(single, torch.ones(1, 1, 1, 1, 3))


def test_bce_is_masked_and_averaged_over_the_mask():
    target = torch.tensor([1.0, 0.0, 1.0]).reshape(1, 1, 1, 1, 3)
    mask = torch.tensor([1.0, 1.0, 0.0]).reshape(1, 1, 1, 1, 3)
    prediction = torch.tensor([0.5, 0.5, 0.0]).reshape(1, 1, 1, 1, 3)  # the masked voxel is very wrong
    loss = affinity_loss(prediction, target, mask, kind="bce", balance=False)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-5)
    mse = affinity_loss(prediction, target, mask, kind="mse", balance=False)
    assert math.isclose(mse.item(), 0.25, rel_tol=1e-6)


def test_empty_mask_gives_zero_loss_with_a_gradient():
    prediction = torch.full((1, 3, 2, 2, 2), 0.3, requires_grad=True)
    loss = affinity_loss(prediction, torch.ones(1, 3, 2, 2, 2), torch.zeros(1, 3, 2, 2, 2))
    loss.backward()
    assert loss.item() == 0.0 and prediction.grad is not None


def test_semantic_losses_on_a_perfect_and_a_uniform_prediction():
    labels = torch.tensor([0, 1, 2, 1]).reshape(1, 1, 1, 4)
    mask = torch.ones(1, 1, 1, 4)
    perfect = torch.nn.functional.one_hot(labels, 3).permute(0, 4, 1, 2, 3).float() * 100
    assert semantic_loss(perfect, labels, mask, kind="ce").item() < 1e-6
    assert soft_dice_loss(perfect, labels, mask).item() < 1e-6
    uniform = torch.zeros(1, 3, 1, 1, 4)
    assert math.isclose(semantic_loss(uniform, labels, mask, kind="ce").item(), math.log(3), rel_tol=1e-6)
    # soft dice, classes 1 and 2: p = 1/3 everywhere; class 1: 2*(2/3) / (4/3 + 2) = 0.4;
    # class 2: 2*(1/3) / (4/3 + 1) = 2/7
    expected = 1 - (0.4 + 2 / 7) / 2
    assert math.isclose(semantic_loss(uniform, labels, mask, kind="dice").item(), expected, rel_tol=1e-4)
    both = semantic_loss(uniform, labels, mask, kind="ce+dice").item()
    assert math.isclose(both, math.log(3) + expected, rel_tol=1e-4)


def test_semantic_mask_drops_voxels():
    labels = torch.tensor([0, 1]).reshape(1, 1, 1, 2)
    logits = torch.tensor([[10.0, -10.0], [-10.0, -10.0]]).reshape(1, 2, 1, 1, 2)  # voxel 1 wrong
    only_first = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    assert semantic_loss(logits, labels, only_first, kind="ce").item() < 1e-6
