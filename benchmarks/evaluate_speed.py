"""VI + adapted Rand error of two 256^3 uint64 label volumes: psc-seg against scikit-image.

    python benchmarks/evaluate_speed.py [--size 256] [--repeats 5]

The volumes look like EM labellings: a ground truth of Voronoi cells with 0-valued
boundaries, and a prediction from shifted seeds with some cells split, ids scattered up to
about 10^6 (small enough for scikit-image's table, whose shape is the largest id).
Prints the median time of each over the repeats, their ratio and the scores of both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy import ndimage
from skimage.metrics import adapted_rand_error as sk_arand
from skimage.metrics import variation_of_information as sk_vi

from psc_seg.evaluate import adapted_rand_error, contingency_table, variation_of_information


def voronoi(shape, seeds: np.ndarray) -> np.ndarray:
    """Labels 1..len(seeds) of the cells of the nearest seed, (Z, Y, X) uint64."""
    marker = np.ones(shape, dtype=bool)
    marker[tuple(seeds.T)] = False
    _, index = ndimage.distance_transform_edt(marker, return_indices=True)
    ids = np.zeros(shape, dtype=np.uint64)
    ids[tuple(seeds.T)] = np.arange(1, len(seeds) + 1, dtype=np.uint64)
    return ids[tuple(index)]


def make_volumes(size: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    seeds = rng.integers(0, size, size=(size * 2, 3))
    gt = voronoi(shape, seeds)
    gt[ndimage.morphological_gradient(gt, size=2) > 0] = 0  # thin boundaries, ignored
    moved = np.clip(seeds + rng.integers(-4, 5, size=seeds.shape), 0, size - 1)
    extra = rng.integers(0, size, size=(size // 2, 3))  # false splits
    pred = voronoi(shape, np.concatenate([moved, extra]))
    scatter = rng.permutation(10**6)[: int(pred.max()) + 1].astype(np.uint64)
    return gt, scatter[pred]


def median_time(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def psc_seg_scores(gt, pred):
    table = contingency_table(gt, pred)
    return variation_of_information(table=table), adapted_rand_error(table=table)[0]


def skimage_scores(gt, pred):
    return tuple(sk_vi(gt, pred, ignore_labels=[0])), sk_arand(gt, pred, ignore_labels=[0])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    gt, pred = make_volumes(args.size)
    print(f"volumes: {gt.shape} {gt.dtype}, gt ids {len(np.unique(gt)) - 1}, pred ids {len(np.unique(pred))}")
    ours_s, ours = median_time(lambda: psc_seg_scores(gt, pred), args.repeats)
    theirs_s, theirs = median_time(lambda: skimage_scores(gt, pred), args.repeats)
    print(f"psc-seg : {ours_s:7.3f} s  (split, merge) = ({ours[0][0]:.6f}, {ours[0][1]:.6f})  arand = {ours[1]:.6f}")
    print(f"skimage : {theirs_s:7.3f} s  (split, merge) = ({theirs[0][0]:.6f}, {theirs[0][1]:.6f})  arand = {theirs[1]:.6f}")
    print(f"speed-up: {theirs_s / ours_s:.1f}x (median of {args.repeats} runs each, VI + ARAND)")


if __name__ == "__main__":
    main()
