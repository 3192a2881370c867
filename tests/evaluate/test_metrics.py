"""VI, adapted Rand error and Dice from one sparse table, checked by hand and against skimage."""

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error as sk_arand
from skimage.metrics import variation_of_information as sk_vi

from psc_seg.evaluate import (
    adapted_rand_error,
    contingency_table,
    contingency_tables_blockwise,
    dice_scores,
    instance_scores,
    sum_tables,
    variation_of_information,
)


def test_table_counts_pairs_and_keeps_gt_zero():
    gt = np.array([0, 1, 1, 2, 2, 2], dtype=np.uint64)
    pred = np.array([5, 5, 5, 5, 7, 7], dtype=np.int32)
    table = contingency_table(gt, pred)
    assert table.gt_ids.tolist() == [0, 1, 2, 2]
    assert table.pred_ids.tolist() == [5, 5, 5, 7]
    assert table.counts.tolist() == [1, 2, 1, 2]


def test_hand_made_split_and_merge():
    # one GT segment of 4 voxels split in two halves: split = 1 bit, merge = 0
    gt = np.array([1, 1, 1, 1])
    pred = np.array([1, 1, 2, 2])
    assert variation_of_information(gt, pred) == pytest.approx((1.0, 0.0))
    # the other way round: a false merge of two halves
    assert variation_of_information(pred, gt) == pytest.approx((0.0, 1.0))
    # pairs: gt 4*3 = 12 together, pred 2*(2*1) = 4, both 4 -> precision 1, recall 1/3
    arand, precision, recall = adapted_rand_error(gt, pred)
    assert (precision, recall) == pytest.approx((1.0, 1 / 3))
    assert arand == pytest.approx(1 - 2 * 4 / (12 + 4))


def test_identical_labels_score_zero_and_gt_zero_ignored():
    gt = np.array([[0, 1, 1], [2, 2, 0]])
    pred = np.array([[9, 4, 4], [3, 3, 4]])  # disagrees only where gt is 0
    assert variation_of_information(gt, pred) == pytest.approx((0.0, 0.0))
    assert adapted_rand_error(gt, pred)[0] == pytest.approx(0.0)
    scores = instance_scores(contingency_table(gt, pred))
    assert scores["voi"] == 0 and scores["n_segments"] == 3


def _random_case(rng, shape, n_gt, n_pred):
    gt = rng.integers(0, n_gt, size=shape)
    pred = rng.integers(0, n_pred, size=shape)
    # make it piecewise constant like real labels in half of the cases
    if rng.random() < 0.5:
        gt = np.repeat(gt[..., ::4], 4, axis=-1)[..., : shape[-1]]
    return gt, pred


@pytest.mark.parametrize("seed", range(8))
def test_equals_skimage_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    gt, pred = _random_case(rng, (6, 7, 16), n_gt=int(rng.integers(2, 12)), n_pred=int(rng.integers(1, 12)))
    table = contingency_table(gt, pred)
    ours = variation_of_information(table=table)
    theirs = sk_vi(gt, pred, ignore_labels=[0])
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert adapted_rand_error(table=table)[0] == pytest.approx(sk_arand(gt, pred, ignore_labels=[0])[0], abs=1e-6)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # skimage's 0/0 recall
@pytest.mark.parametrize(
    "gt, pred",
    [
        ([1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1]),
        ([1, 2, 3, 4], [1, 1, 1, 1]),
        ([1, 1, 1, 2, 2, 3], [0, 0, 1, 2, 2, 2]),
        ([[1, 1], [1, 1]], [[1, 2], [3, 4]]),
    ],
)
def test_equals_skimage_on_hand_made_labels(gt, pred):
    gt, pred = np.array(gt), np.array(pred)
    np.testing.assert_allclose(variation_of_information(gt, pred), sk_vi(gt, pred, ignore_labels=[0]), atol=1e-6)
    assert adapted_rand_error(gt, pred)[0] == pytest.approx(sk_arand(gt, pred, ignore_labels=[0])[0], abs=1e-6)


def test_huge_uint64_ids_score_like_small_ones():
    rng = np.random.default_rng(3)
    gt_small = rng.integers(0, 5, size=(4, 8, 8)).astype(np.uint64)
    pred_small = rng.integers(0, 6, size=(4, 8, 8)).astype(np.uint64)
    big = np.uint64(2**63 + 12345)
    gt_big = np.where(gt_small == 0, 0, gt_small + big).astype(np.uint64)
    pred_big = (pred_small * np.uint64(2**60)).astype(np.uint64)
    small = instance_scores(contingency_table(gt_small, pred_small))
    large = instance_scores(contingency_table(gt_big, pred_big))
    for key in ("voi_split", "voi_merge", "arand", "n_segments"):
        assert large[key] == pytest.approx(small[key], abs=1e-12)
    np.testing.assert_allclose(
        (large["voi_split"], large["voi_merge"]), sk_vi(gt_small, pred_small, ignore_labels=[0]), atol=1e-6
    )


def test_tables_add_up_block_by_block():
    rng = np.random.default_rng(5)
    gt = rng.integers(0, 6, size=(10, 9, 8)).astype(np.uint64)
    pred = rng.integers(0, 4, size=(10, 9, 8)).astype(np.int64)
    mask = rng.random((10, 9, 8)) > 0.3
    whole = contingency_table(gt, pred, mask=mask)
    halves = sum_tables([contingency_table(gt[:3], pred[:3], mask=mask[:3]), contingency_table(gt[3:], pred[3:], mask=mask[3:])])
    for name in ("gt_ids", "pred_ids", "counts"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(halves, name))
    # 8 * 9 voxels per slab of one section: ten slabs
    (blockwise,) = contingency_tables_blockwise(gt, [pred], mask=mask, max_voxels=72)
    np.testing.assert_array_equal(whole.counts, blockwise.counts)
    assert whole.n_voxels == mask.sum()


def test_dice_per_class_hand_made():
    gt = np.array([0, 1, 1, 1, 2, 2, 0, 0])
    pred = np.array([0, 1, 1, 2, 2, 0, 0, 3])
    dice, mean = dice_scores(gt, pred)
    # class 1: 2*2/(3+2); class 2: 2*1/(2+2); class 3: 0/(0+1)
    assert dice == pytest.approx({1: 0.8, 2: 0.5, 3: 0.0})
    assert mean == pytest.approx((0.8 + 0.5 + 0.0) / 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        contingency_table(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="integer"):
        contingency_table(np.zeros(3, float), np.zeros(3, int))
    with pytest.raises(ValueError, match="no labelled voxels"):
        variation_of_information(np.zeros(4, int), np.arange(4))
