"""Train small psc(2,2) and conv3d UNets of the same widths on the gala FIB-SEM crop on CPU,
at equal iterations, then predict, segment and score the test crop against a no-learning
baseline.

    python benchmarks/gala_train.py --minutes 10 --out /tmp/gala-train              # psc(2,2), then conv3d
    python benchmarks/gala_train.py --convs conv3d --iterations 400 --out /tmp/g3   # one, a fixed count

1. ``psc-seg train em/demo-small`` (small UNet, affinities; ``--set model.conv=CONV``) on
   ``train-image.h5`` + ``train-gt.lzf.h5``: the first of ``--convs`` for at most ``--minutes``
   of training (``train.max_seconds``) or ``--iterations``; every later one for as many
   iterations as the first reached (equal iterations, whatever time it takes);
2. ``psc-seg predict`` of ``test-image.h5`` with each ``last.pt``;
3. the same segment step (``segment_affinities``, waterz, ``--scoring``) on the learned
   affinities and on baseline affinities made from the smoothed raw intensity (membranes are
   dark: ``aff[c, p] = min(s[p], s[p + o_c])`` of the Gaussian-smoothed raw mapped to [0, 1]),
   for each smoothing in ``--sigmas``;
4. VI (split, merge, total), adapted Rand error and segment count against
   ``test-gt.lzf.h5`` at each threshold. Each method is credited with its best threshold (and
   the baseline with its best smoothing), chosen on the test crop itself: an optimistic
   figure for all alike.

``--checkpoint PATH`` skips training and scores an existing checkpoint. ``--tta none flips
flips+transposes`` predicts with each mirror TTA mode (``psc-seg predict --tta``) and scores
each, with its predict time; ``--precision`` is predict's (default float32, so that results
do not depend on the CPU).

Figures: ``benchmarks/RESULTS.md``, section gala_train.

Prints a table and one summary line per method; exits 1 if a learned VI is not below the
baseline's.
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


def train_one(conv: str, out: Path, *, overrides: list[str], minutes: float | None,
              iterations: int | None) -> dict:
    """Train em/demo-small with ``conv`` into ``out``; the train summary plus ``train_s``."""
    from psc_seg.pipelines.train import train

    budget = [f"train.max_seconds={minutes * 60}", "train.iterations=100000"] if iterations is None else [
        f"train.iterations={iterations}"]
    started, started_cpu = time.perf_counter(), time.process_time()
    summary = train("em/demo-small", out=out, overwrite=True, quiet=True,
                    overrides=[*overrides, f"model.conv={conv}", *budget])
    summary["train_s"] = time.perf_counter() - started
    summary["cpu_s"] = time.process_time() - started_cpu  # all threads of this process (num_workers 0)
    print(f"{conv}: trained {summary['iteration']} iterations in {summary['elapsed_s']:.0f} s "
          f"({summary['cpu_s']:.0f} CPU s; final loss {summary['loss']:.4f})", flush=True)
    return summary


def predict_and_score(checkpoint: Path, out: Path, gala: Path, gt: np.ndarray, *, scoring: str, tta: str = "none",
                      precision: str = "float32") -> tuple[list, float]:
    """Predict the test crop with ``checkpoint``; (score rows, predict seconds)."""
    from psc_seg.io import open_volume
    from psc_seg.pipelines.predict import predict

    started = time.perf_counter()
    prediction = out / f"test-affinities-{tta}.zarr"
    predict(checkpoint, f"{gala}/test-image.h5:/stack", str(prediction), overwrite=True, progress=False, tta=tta,
            precision=precision)
    predict_s = time.perf_counter() - started
    return score(open_volume(str(prediction)).read(), gt, scoring=scoring), predict_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--convs", nargs="+", default=["psc(2,2)", "conv3d"],
                        help="conv specs to train, in order; the first sets the iteration count")
    parser.add_argument("--minutes", type=float, default=8.0, help="training time of the first conv (at most 10)")
    parser.add_argument("--iterations", type=int, help="train every conv this many iterations instead of --minutes")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gala-train"), help="folder of the runs (replaced)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    parser.add_argument("--scoring", default="hist_quant_75")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                        help="baseline smoothings (Gaussian sigma, voxels); the best one is reported")
    parser.add_argument("--checkpoint", type=Path, help="score this checkpoint instead of training one")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra train config overrides")
    parser.add_argument("--tta", nargs="+", default=["none"], choices=["none", "flips", "flips+transposes"],
                        help="predict with each of these mirror TTA modes and score each")
    parser.add_argument("--precision", default="float32", choices=["auto", "float32", "bfloat16"])
    args = parser.parse_args()
    if not GALA.is_dir():
        print(f"gala data not found at {GALA}", file=sys.stderr)
        return 2
    if args.minutes > 10:
        parser.error("--minutes: the benchmark trains for at most 10 minutes")
    torch.set_num_threads(args.threads)
    import h5py

    gala = GALA.resolve()
    overrides = [
        f"data.train=[{{raw: '{gala}/train-image.h5:/stack', labels: '{gala}/train-gt.lzf.h5:/stack'}}]",
        "data.validation=[]",
        "train.num_workers=0",
        "train.log_every=10",
        "train.checkpoint_every=100",
        *args.overrides,
    ]
    with h5py.File(gala / "test-image.h5") as f:
        raw = f["stack"][:]
    with h5py.File(gala / "test-gt.lzf.h5") as f:
        gt = f["stack"][:]

    results, times = {}, {}
    def predict_each(method: str, checkpoint: Path, run: Path, train_times: tuple = (0, 0.0, 0.0)) -> None:
        for tta in args.tta:
            name = method if tta == "none" else f"{method} tta={tta}"
            results[name], predict_s = predict_and_score(checkpoint, run, gala, gt, scoring=args.scoring, tta=tta,
                                                         precision=args.precision)
            its, train_s, cpu_s = train_times
            times[name] = (its, train_s, predict_s, cpu_s)

    if args.checkpoint is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        predict_each("learned", args.checkpoint, args.out)
    else:
        iterations = args.iterations
        for conv in args.convs:
            run = args.out / conv.replace("(", "").replace(")", "").replace(",", "")
            summary = train_one(conv, run, overrides=overrides, minutes=args.minutes, iterations=iterations)
            iterations = summary["iteration"]  # the later convs train as many iterations
            predict_each(conv, Path(summary["last"]), run, (summary["iteration"], summary["elapsed_s"], summary["cpu_s"]))

    baselines = {sigma: score(intensity_affinities(raw, sigma=sigma), gt, scoring=args.scoring) for sigma in args.sigmas}
    best_sigma = min(baselines, key=lambda sigma: min(r["voi"] for r in baselines[sigma]))
    results[f"baseline s={best_sigma:g}"] = baselines[best_sigma]
    print(f"{'method':<28}{'threshold':>10}{'voi_split':>11}{'voi_merge':>11}{'voi':>8}{'arand':>8}{'segments':>10}")
    best = {}
    for method, rows in results.items():
        for row in rows:
            print(f"{method:<28}{row['threshold']:>10.2f}{row['voi_split']:>11.3f}{row['voi_merge']:>11.3f}"
                  f"{row['voi']:>8.3f}{row['arand']:>8.3f}{row['n_segments']:>10d}")
        best[method] = min(rows, key=lambda r: r["voi"])
    for sigma, rows in baselines.items():
        row = min(rows, key=lambda r: r["voi"])
        print(f"baseline sigma {sigma:g}: best VI {row['voi']:.3f} at t={row['threshold']}")
    print(f"\n{'method':<28}{'iterations':>11}{'train s':>9}{'CPU s':>7}{'predict s':>10}{'t':>6}{'split':>8}"
          f"{'merge':>8}{'VI':>8}{'ARAND':>8}")
    for method, row in best.items():
        its, train_s, predict_s, cpu_s = times.get(method, (0, 0.0, 0.0, 0.0))
        print(f"{method:<28}{its:>11}{train_s:>9.0f}{cpu_s:>7.0f}{predict_s:>10.1f}{row['threshold']:>6.2f}{row['voi_split']:>8.3f}"
              f"{row['voi_merge']:>8.3f}{row['voi']:>8.3f}{row['arand']:>8.3f}")
    baseline = best[f"baseline s={best_sigma:g}"]["voi"]
    return 0 if all(row["voi"] < baseline for m, row in best.items() if not m.startswith("baseline")) else 1


if __name__ == "__main__":
    sys.exit(main())
