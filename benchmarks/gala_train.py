"""Train a small psc(2,2) UNet on the gala FIB-SEM crop on CPU, then predict, segment and score
the test crop against a no-learning baseline.

    python benchmarks/gala_train.py --minutes 8 --out /tmp/gala-train

1. ``psc-seg train em/demo-small`` (small psc(2,2) UNet, affinities) on ``train-image.h5`` +
   ``train-gt.lzf.h5`` for at most ``--minutes`` of training (``train.max_seconds``);
2. ``psc-seg predict`` of ``test-image.h5`` with ``last.pt``;
3. the same segment step (``segment_affinities``, waterz, ``--scoring``) on the learned
   affinities and on baseline affinities made from the smoothed raw intensity (membranes are
   dark: ``aff[c, p] = min(s[p], s[p + o_c])`` of the Gaussian-smoothed raw mapped to [0, 1]),
   for each smoothing in ``--sigmas``;
4. VI (split, merge, total, bits) against ``test-gt.lzf.h5`` at each threshold. Each method
   is credited with its best threshold (and the baseline with its best smoothing), chosen on
   the test crop itself: an optimistic figure for both.

``--checkpoint PATH`` skips training and scores an existing checkpoint.

Measured (``--minutes 9``, 1 torch thread, on a 2-core CPU box shared with other jobs): 431
iterations in 540 s, predict 6.7 s, 9 min 18 s wall in all; best VI total learned 0.939
(t=0.4: split 0.654, merge 0.285) vs baseline 1.112 (sigma 0.5, t=0.6: split 0.699, merge
0.413).

Prints a table and one summary line; exits 1 if the learned VI is not below the baseline.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from psc_seg.segment.baseline import intensity_affinities

GALA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gala"
THRESHOLDS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def score(affinities: np.ndarray, gt: np.ndarray, *, scoring: str) -> list[dict]:
    """VI of the segment step at every threshold."""
    from psc_seg.evaluate import contingency_table, instance_scores
    from psc_seg.segment import segment_affinities

    segmentations = segment_affinities(affinities, thresholds=THRESHOLDS, scoring=scoring)
    rows = []
    for threshold, seg in zip(THRESHOLDS, segmentations):
        rows.append({"threshold": threshold, **instance_scores(contingency_table(gt, seg))})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training time budget (at most 10)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gala-train"), help="run folder (replaced)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    parser.add_argument("--scoring", default="hist_quant_75")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                        help="baseline smoothings (Gaussian sigma, voxels); the best one is reported")
    parser.add_argument("--checkpoint", type=Path, help="score this checkpoint instead of training one")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra train config overrides")
    args = parser.parse_args()
    if not GALA.is_dir():
        print(f"gala data not found at {GALA}", file=sys.stderr)
        return 2
    if args.minutes > 10:
        parser.error("--minutes: the benchmark trains for at most 10 minutes")
    torch.set_num_threads(args.threads)
    import h5py

    from psc_seg.io import open_volume
    from psc_seg.pipelines.predict import predict
    from psc_seg.pipelines.train import train

    gala = GALA.resolve()
    overrides = [
        f"data.train=[{{raw: '{gala}/train-image.h5:/stack', labels: '{gala}/train-gt.lzf.h5:/stack'}}]",
        "data.validation=[]",
        "train.iterations=100000",
        f"train.max_seconds={args.minutes * 60}",
        "train.num_workers=0",
        "train.log_every=10",
        "train.checkpoint_every=100",
        *args.overrides,
    ]
    if args.checkpoint is None:
        started = time.perf_counter()
        summary = train("em/demo-small", out=args.out, overwrite=True, overrides=overrides, quiet=True)
        train_s = time.perf_counter() - started
        checkpoint = Path(summary["last"])
        print(f"trained {summary['iteration']} iterations in {summary['elapsed_s']:.0f} s "
              f"(final loss {summary['loss']:.4f})", flush=True)
    else:
        checkpoint, train_s, summary = args.checkpoint, 0.0, {"iteration": 0}
        args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    prediction = args.out / "test-affinities.zarr"
    predict(checkpoint, f"{gala}/test-image.h5:/stack", str(prediction), overwrite=True, progress=False)
    predict_s = time.perf_counter() - started
    learned = open_volume(str(prediction)).read()
    with h5py.File(gala / "test-image.h5") as f:
        raw = f["stack"][:]
    with h5py.File(gala / "test-gt.lzf.h5") as f:
        gt = f["stack"][:]

    learned_rows = score(learned, gt, scoring=args.scoring)
    baselines = {sigma: score(intensity_affinities(raw, sigma=sigma), gt, scoring=args.scoring) for sigma in args.sigmas}
    best_sigma = min(baselines, key=lambda sigma: min(r["voi"] for r in baselines[sigma]))
    results = {"learned": learned_rows, f"base s={best_sigma:g}": baselines[best_sigma]}
    print(f"{'method':<12}{'threshold':>10}{'voi_split':>11}{'voi_merge':>11}{'voi':>8}{'arand':>8}{'segments':>10}")
    best = {}
    for method, rows in results.items():
        for row in rows:
            print(f"{method:<12}{row['threshold']:>10.2f}{row['voi_split']:>11.3f}{row['voi_merge']:>11.3f}"
                  f"{row['voi']:>8.3f}{row['arand']:>8.3f}{row['n_segments']:>10d}")
        best["learned" if method == "learned" else "baseline"] = min(rows, key=lambda r: r["voi"])
    for sigma, rows in baselines.items():
        row = min(rows, key=lambda r: r["voi"])
        print(f"baseline sigma {sigma:g}: best VI {row['voi']:.3f} at t={row['threshold']}")
    print(f"train {train_s:.0f} s ({summary['iteration']} it), predict {predict_s:.1f} s; best VI total: "
          f"learned {best['learned']['voi']:.3f} (t={best['learned']['threshold']}, split "
          f"{best['learned']['voi_split']:.3f}, merge {best['learned']['voi_merge']:.3f}) vs baseline "
          f"{best['baseline']['voi']:.3f} (sigma {best_sigma:g}, t={best['baseline']['threshold']}, split "
          f"{best['baseline']['voi_split']:.3f}, merge {best['baseline']['voi_merge']:.3f})")
    return 0 if best["learned"]["voi"] < best["baseline"]["voi"] else 1


if __name__ == "__main__":
    sys.exit(main())
