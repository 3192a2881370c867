"""What the OME-Zarr pyramid costs ``psc-seg predict``, and that a segmentation's pyramid keeps ids.

1. ``predict`` of a ``--size``^3 uint8 volume (default 256^3) with the psc(2,2) UNet of
   ``blocks.py`` (valid convs, block 64^3, in process), with and without the pyramid
   (``pyramid=False`` is ``--no-pyramid``), interleaved, ``--repeats`` times (default 3), each
   into a new output; medians of the wall seconds of :func:`psc_seg.pipelines.predict.predict`
   (the same model loading in both), and the pyramid's share: ``(with - without) / without``;
   also the seconds of :func:`~psc_seg.engine.build_pyramids` inside predict (timed directly,
   less noisy on a shared machine than the difference) against predict without the pyramid.
2. A ``--size``^3 segmentation (the cell labels of ``psc-seg synth em``, uint64, 64^3 chunks)
   written with its pyramid (mode): every level's ids must be ids of level 0 (checked, the
   script fails otherwise); the seconds of :func:`psc_seg.engine.build_pyramids`.

    python benchmarks/pyramid.py [--size 256] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_memory import write_input  # noqa: E402  (same directory)
from predict_throughput import make_checkpoint  # noqa: E402


def _levels(path: str) -> list:
    group = zarr.open_group(path, mode="r")
    attrs = dict(group.attrs)
    datasets = attrs.get("ome", attrs)["multiscales"][0]["datasets"]
    return [group[d["path"]] for d in datasets]


def time_predict(work: Path, size: int, repeats: int) -> None:
    from psc_seg.pipelines import predict as stage
    from psc_seg.pipelines.predict import predict

    built: list[float] = []
    build = stage.build_pyramids

    def timed(*args, **kwargs):  # the pyramid's own seconds inside predict: less noisy than a difference
        start = time.perf_counter()
        try:
            return build(*args, **kwargs)
        finally:
            built.append(time.perf_counter() - start)

    stage.build_pyramids = timed

    raw = write_input(work / "raw.zarr", size)
    checkpoint = make_checkpoint(work / "unet.pt", spec="psc(2,2)", padding="valid")
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for repeat in range(repeats):
        for pyramid in (False, True):
            out = str(work / f"affs-{repeat}-{pyramid}.zarr")
            start = time.perf_counter()
            predict(checkpoint, raw, out, block_shape=(64, 64, 64), progress=False, pyramid=pyramid)
            seconds[pyramid].append(time.perf_counter() - start)
            print(f"  repeat {repeat}: pyramid={pyramid!s:5} {seconds[pyramid][-1]:6.1f} s "
                  f"(of which build_pyramids {built[-1]:.2f} s)", flush=True)
    shapes = [tuple(a.shape) for a in _levels(out)]
    without, with_ = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"predict {size}^3, psc(2,2) UNet, block 64^3, in process: without pyramid {without:.1f} s, "
          f"with {with_:.1f} s (median of {repeats}); pyramid +{with_ - without:.1f} s = "
          f"{100 * (with_ - without) / without:+.1f} %; levels {shapes}")
    inside = statistics.median(built[1::2])  # the runs with the pyramid
    print(f"build_pyramids inside predict: median {inside:.2f} s = {100 * inside / without:.1f} % of predict "
          "without the pyramid")


def check_labels(work: Path, size: int) -> None:
    from psc_seg.engine.pyramid import build_pyramids
    from psc_seg.io import create_volume
    from psc_seg.synth import em_volume

    labels = em_volume((size,) * 3, seed=0)["labels"].astype(np.uint64)
    path = str(work / "seg.zarr")
    volume = create_volume(path, shape=labels.shape, dtype=np.uint64, chunks=(64, 64, 64), pyramid=True,
                           labels=True)
    volume.write(None, labels)
    start = time.perf_counter()
    build_pyramids([volume], progress=False)
    seconds = time.perf_counter() - start
    volume.finalize()
    levels = _levels(path)
    ids = set(np.unique(levels[0][...]).tolist())
    for index, level in enumerate(levels[1:], start=1):
        extra = set(np.unique(level[...]).tolist()) - ids
        if extra:
            raise SystemExit(f"level {index} holds ids not in level 0: {sorted(extra)[:10]}")
    counts = [len(np.unique(level[...])) for level in levels]
    print(f"segmentation {size}^3 ({len(ids)} ids): pyramid {[tuple(a.shape) for a in levels]} in {seconds:.2f} s; "
          f"ids per level {counts}: every level's ids are ids of level 0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from psc_seg.allocator import keep_freed_memory

    keep_freed_memory()  # as the psc-seg command does
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, volume {args.size}^3", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        check_labels(Path(tmp), args.size)
        time_predict(Path(tmp), args.size, args.repeats)


if __name__ == "__main__":
    main()
