"""Peak memory of ``psc-seg predict`` against volume size: it should not grow with the volume.

Predicts uint8 volumes of 128^3 and 384^3 voxels (27x more) with the same small UNet and
block shape, each in a fresh ``psc-seg predict`` subprocess, and prints the peak resident set
size (RSS) of each run. Blockwise prediction keeps memory bounded by workers x block size, so
the larger run must stay within 1.25x of the smaller one (exit status 1 otherwise).

Peak RSS: in-process runs (``--workers 0``) read the child's own ``ru_maxrss`` from
``os.wait4``; with ``--workers N`` the RSS of the whole process tree (client, scheduler,
nanny and worker processes) is summed every 50 ms with psutil and the maximum kept.

    python benchmarks/predict_memory.py [--sizes 128 384] [--block 64] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from psc_seg.io import create_volume
from psc_seg.models import build_model, save_checkpoint

from _memory import tree_rss  # benchmarks/ is a folder of scripts

LIMIT = 1.25


def write_input(path: Path, size: int, *, seed: int = 0) -> str:
    """A ``size``^3 uint8 zarr volume, written slab by slab (the writer never holds it all)."""
    vol = create_volume(path, shape=(size,) * 3, dtype="uint8", chunks=(64, 64, 64))
    rng = np.random.default_rng(seed)
    for z in range(0, size, 64):
        depth = min(64, size - z)
        vol.write((slice(z, z + depth),), rng.integers(0, 256, size=(depth, size, size), dtype=np.uint8))
    vol.finalize()
    return str(path)


def run_predict(cmd: list[str], *, tree: bool) -> tuple[float, float]:
    """Run ``cmd``; return (peak RSS in MiB, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = [0]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    if tree:
        poller.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stop.set()
    if tree:
        poller.join()
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}):\n{out}\n{err}")
    maxrss = peak[0] if tree else usage.ru_maxrss * 1024  # Linux: ru_maxrss in KiB
    return maxrss / 2**20, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 384], help="cube edge lengths, smallest first")
    parser.add_argument("--block", type=int, default=64, help="block edge length (write ROI)")
    parser.add_argument("--workers", type=int, default=0, help="dask workers (0: in-process)")
    parser.add_argument("--dtype", default="uint8", help="output dtype")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="psc-seg-predict-memory-"))
    try:
        torch.manual_seed(0)
        model = build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[2, 2, 2]])
        ckpt = save_checkpoint(tmp / "small.pt", model, metadata={"normalize": {"kind": "uint8"}})
        exe = Path(sys.executable).with_name("psc-seg")
        psc_seg = str(exe) if exe.exists() else "psc-seg"
        print(f"model: unet num_fmaps=2 downsample [[2,2,2]] (context {model.context}); block {args.block}^3; "
              f"workers {args.workers}; output {args.dtype}; torch threads {torch.get_num_threads()}")
        print(f"{'volume':>8} {'voxels':>12} {'blocks':>7} {'seconds':>8} {'Mvox/s':>7} {'peak RSS':>10} {'ratio':>6}")
        results = []
        for size in args.sizes:
            raw = write_input(tmp / f"raw{size}.zarr", size)
            out = tmp / f"affs{size}.zarr"
            cmd = [psc_seg, "predict", str(ckpt), raw, str(out), "--block-shape", *[str(args.block)] * 3,
                   "--workers", str(args.workers), "--dtype", args.dtype, "--quiet"]
            rss, seconds = run_predict(cmd, tree=args.workers > 0)
            results.append(rss)
            blocks = -(-size // args.block) ** 3
            print(f"{size:>7}^3 {size**3:>12,} {blocks:>7} {seconds:>8.1f} {size**3 / seconds / 1e6:>7.2f} "
                  f"{rss:>7.0f} MiB {rss / results[0]:>6.2f}")
            shutil.rmtree(out)
            shutil.rmtree(raw)
        ratio = results[-1] / results[0]
        verdict = "OK" if ratio <= LIMIT else "FAIL"
        print(f"{verdict}: peak RSS of the largest / smallest volume = {ratio:.2f} (limit {LIMIT})")
        return 0 if ratio <= LIMIT else 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
