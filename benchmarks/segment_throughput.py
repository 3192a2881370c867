"""Throughput and peak memory of ``psc-seg segment``: whole volume vs block by block.

Affinities of a ``size``^3 synthetic EM labelling (:func:`psc_seg.synth.em_volume` labels ->
:func:`psc_seg.affinities.seg_to_affinities`) plus spatially smooth Gaussian noise
(standard deviation 0.15, blurred with sigma 1.5 voxels), clipped to [0, 1]: saturated
inside cells and on boundaries like a trained network's, with errors in smooth blobs rather
than one per edge, so waterz makes large fragments inside the cells (and small ones along the
boundaries; about 40 voxels per fragment on average) instead of one per voxel; seeded. They
are written once to a float32 zarr volume with 64^3 chunks.

Each configuration runs ``psc_seg.pipelines.segment.segment`` (waterz decoder, waterz
fragments, ``hist_quant_50``, threshold 0.5) in a fresh Python subprocess that times the
call itself (imports excluded). Peak RSS: in-process runs (whole volume, ``--workers 0``)
report their own VmHWM (``ru_maxrss`` from ``wait4`` would also count this parent's memory,
inherited at ``fork``); with ``--workers N`` the RSS of the whole process tree (client,
scheduler, nanny and worker processes) is summed every 50 ms with psutil and the maximum
kept. The VI (bits, split + merge, no label ignored) between each blockwise result and the
whole-volume one checks that both agree.

    python benchmarks/segment_throughput.py [--size 256] [--blocks 64 128] [--workers 0 1 2]
                                            [--repeats 1] [--data DIR] [--baseline DIR]

``--data DIR`` keeps the affinities (``DIR/affs_<size>_<seed>.zarr``) and reuses them in
later runs (generating 256^3 takes minutes). ``--baseline DIR`` runs every configuration
with another psc-seg too (``DIR/psc_seg``, e.g. ``git archive <commit> psc_seg | tar -x -C
DIR``), alternating with this one so that both see the same machine load, and adds its
time, its peak RSS, the speed-up and the VI between the two results (0.0: identical).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import tree_rss  # noqa: E402  (benchmarks/ is a folder of scripts)


def write_affinities(path: Path, size: int, *, seed: int = 0, sigma: float = 0.15, smooth: float = 1.5) -> str:
    """Noisy affinities of a synthetic EM labelling as a ``(3, size, size, size)`` float32 zarr."""
    from scipy import ndimage

    from psc_seg.io import create_volume
    from psc_seg.synth import em_volume
    from psc_seg.affinities import DEFAULT_OFFSETS, seg_to_affinities

    labels = em_volume((size,) * 3, seed=seed, mitochondria=False, vesicles=False)["labels"]
    affs = seg_to_affinities(labels)
    del labels
    noise = np.random.default_rng(seed).standard_normal(affs.shape, dtype=np.float32)
    for channel in noise:  # one channel at a time keeps the peak memory down
        ndimage.gaussian_filter(channel, sigma=smooth, output=channel)
    noise /= noise.std()
    affs += sigma * noise  # saturated inside cells and on boundaries, as a trained network's
    np.clip(affs, 0, 1, out=affs)
    vol = create_volume(path, shape=affs.shape, dtype="float32", chunks=(64, 64, 64),
                        attrs={"task": {"kind": "affinities", "offsets": [list(o) for o in DEFAULT_OFFSETS]}})
    vol.write((slice(None),) * 4, affs)
    vol.finalize()
    return str(path)


def _affinities(folder: Path, size: int, *, seed: int) -> str:
    from psc_seg.io import open_volume, volume_exists

    path = folder / f"affs_{size}_{seed}.zarr"
    if volume_exists(str(path)) and open_volume(str(path)).complete:
        return str(path)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(path, ignore_errors=True)
    return write_affinities(path, size, seed=seed)


def child(args: argparse.Namespace) -> None:
    """Run one segmentation; print ``{"seconds": ..., "peak_mib": ...}`` as the last line."""
    import time

    from psc_seg.affinities import DEFAULT_OFFSETS
    from psc_seg.pipelines.segment import segment

    block_shape = (args.block,) * 3 if args.block else None
    workers = args.child_workers if args.block and args.child_workers else None
    start = time.perf_counter()
    # offsets given: affinities cached by an older run of this script carry none
    segment(args.affs, args.out, thresholds=[0.5], block_shape=block_shape, workers=workers, progress=False,
            offsets=DEFAULT_OFFSETS)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mib": _own_peak_mib()}))


def _own_peak_mib() -> float:
    """This process's peak RSS (VmHWM). Unlike ``ru_maxrss`` it starts afresh at ``exec``:
    ``ru_maxrss`` of a child also counts the parent's resident memory at ``fork``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_child(affs: str, out: str, *, block: int, workers: int, env: dict | None = None) -> tuple[float, float]:
    """(seconds of the segment call, peak RSS in MiB) of one configuration in a fresh subprocess.

    In-process runs report their own peak RSS; with workers the RSS of the whole process
    tree (client, scheduler, nannies, workers) is summed every 50 ms and the maximum kept.
    """
    import time

    cmd = [sys.executable, __file__, "--child", "--affs", affs, "--out", out, "--block", str(block),
           "--child-workers", str(workers)]
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(cmd, stdout=out_file, stderr=err_file, env=env)
        tree_peak = 0
        while proc.poll() is None:
            if workers:
                tree_peak = max(tree_peak, tree_rss(proc.pid))
            time.sleep(0.05)
        out_file.seek(0)
        err_file.seek(0)
        stdout, stderr = out_file.read().decode(), err_file.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"segment failed ({proc.returncode}):\n{stdout}\n{stderr}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return result["seconds"], (tree_peak / 2**20 if workers else result["peak_mib"])


def machine() -> str:
    import multiprocessing

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {multiprocessing.cpu_count()} cores, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="cube edge length in voxels")
    parser.add_argument("--blocks", type=int, nargs="+", default=[64, 128], help="block edge lengths (write ROI)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="dask workers per blockwise run (0: in-process, serial)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="folder in which to keep and reuse the affinities")
    parser.add_argument("--baseline", type=Path,
                        help="folder holding another psc_seg package (e.g. `git archive` of an older commit): "
                             "each configuration also runs with it, alternately, for side-by-side figures")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--affs", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--block", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0

    from psc_seg.evaluate import variation_of_information
    from psc_seg.io import open_volume

    def vi(a: np.ndarray, b: np.ndarray) -> float:
        return sum(variation_of_information(a, b, ignore_labels=()))

    tmp = Path(tempfile.mkdtemp(prefix="psc-seg-segment-bench-"))
    baseline_env = None
    if args.baseline:
        if not (args.baseline / "psc_seg" / "__init__.py").exists():
            raise SystemExit(f"--baseline {args.baseline} holds no psc_seg package")
        baseline_env = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}
    try:
        affs = _affinities(args.data or tmp, args.size, seed=args.seed)
        voxels = args.size**3
        configs = [("whole", 0, 0)] + [(f"blocks {b}^3", b, w) for b in args.blocks for w in args.workers]
        rows, whole = [], None
        print(f"# segment_throughput: {args.size}^3 float32 affinities, waterz / hist_quant_50 / threshold 0.5, "
              f"median of {args.repeats}; {machine()}")
        for name, block, workers in configs:
            out, old = str(tmp / f"seg_{block}_{workers}.zarr"), str(tmp / f"baseline_{block}_{workers}.zarr")
            runs, baseline_runs = [], []
            for _ in range(args.repeats):  # alternate, so that both see the same load
                shutil.rmtree(out, ignore_errors=True)
                runs.append(run_child(affs, out, block=block, workers=workers))
                if baseline_env:
                    shutil.rmtree(old, ignore_errors=True)
                    baseline_runs.append(run_child(affs, old, block=block, workers=workers, env=baseline_env))
            seg = open_volume(out).read()
            whole = seg if whole is None else whole
            row = {"run": name, "workers": "-" if not block else str(workers),
                   "seconds": statistics.median(r[0] for r in runs), "rss": max(r[1] for r in runs),
                   "vi": vi(whole, seg), "segments": len(np.unique(seg))}
            if baseline_runs:
                row["baseline"] = statistics.median(r[0] for r in baseline_runs)
                row["baseline_rss"] = max(r[1] for r in baseline_runs)
                row["vi_baseline"] = vi(open_volume(old).read(), seg)
            rows.append(row)
            print(f"  {name:<12} workers {row['workers']:>2}: {row['seconds']:7.2f} s"
                  + (f" (baseline {row['baseline']:.2f} s)" if baseline_runs else ""), file=sys.stderr, flush=True)
        print_table(rows, voxels)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", file=sys.stderr)
    return 0


def print_table(rows: list[dict], voxels: int) -> None:
    """A markdown table; with a baseline, its seconds, peak RSS, the speed-up and the VI
    between its result and this one's (0: the same segmentation)."""
    with_baseline = "baseline" in rows[0]
    head = "| run          | workers | seconds | Mvoxels/s | peak RSS MiB | VI vs whole | segments |"
    rule = "|--------------|---------|---------|-----------|--------------|-------------|----------|"
    if with_baseline:
        head += " baseline s | baseline RSS MiB | speed-up | VI vs baseline |"
        rule += "------------|------------------|----------|----------------|"
    print(head)
    print(rule)
    for r in rows:
        line = (f"| {r['run']:<12} | {r['workers']:>7} | {r['seconds']:7.2f} | {voxels / r['seconds'] / 1e6:9.3f} "
                f"| {r['rss']:12.0f} | {r['vi']:11.4f} | {r['segments']:8d} |")
        if with_baseline:
            line += (f" {r['baseline']:10.2f} | {r['baseline_rss']:16.0f} | {r['baseline'] / r['seconds']:7.2f}x "
                     f"| {r['vi_baseline']:14.4f} |")
        print(line)


if __name__ == "__main__":
    raise SystemExit(main())
