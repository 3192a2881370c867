"""Train the paper's MRI DenseNet with conv3d and with psc(2,2) side by side at equal
iterations on the MRI phantom of ``psc-seg synth mri``, then score Dice per class.

    python benchmarks/mri_train.py --out /tmp/mri-train            # 300 iterations each, 5-15 min on 2 cores
    python benchmarks/mri_train.py --quick --out /tmp/mri-train    # 60 iterations each, ~2 min

1. ``psc-seg synth mri``: a training phantom (seed 0) and a validation phantom (seed 1),
   ``--shape`` voxels each;
2. ``psc-seg train mri/densenet-paper-<conv>`` (the paper's DenseNet at full width: growth 21,
   5.14M parameters with conv3d) on the training phantom, ``--iterations`` each, with the
   preset's augmentation and loss but ``--patch`` patches, ``--batch`` and ``--lr`` (the
   presets' 20,000 iterations of 64^3 x 4 are days of CPU);
3. ``psc-seg predict`` of the validation phantom with each ``last.pt`` and ``psc-seg evaluate
   --semantic``: Dice of CSF, GM, WM and their mean.

Prints, per conv: parameters, iterations, seconds per iteration (training wall time over
iterations, data loading included; and the process's CPU seconds, less sensitive to other
work on the machine) and Dice per class; with the CPU's model name and the thread count. Figures: ``benchmarks/RESULTS.md``, section mri_train.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

PRESETS = {"conv3d": "mri/densenet-paper-conv3d", "psc(2,2)": "mri/densenet-paper-p2sc2"}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_one(conv: str, train_data: dict, validation: dict, out: Path, *, iterations: int, patch: int, batch: int,
            lr: float) -> dict:
    """Train the paper DenseNet with ``conv``, predict and score the validation phantom."""
    from psc_seg.models import count_parameters, load_checkpoint
    from psc_seg.pipelines.evaluate import evaluate
    from psc_seg.pipelines.predict import predict
    from psc_seg.pipelines.train import train

    overrides = [
        f"data.train=[{{raw: '{train_data['raw']}', labels: '{train_data['labels']}'}}]",
        "data.validation=[]",
        f"train.iterations={iterations}",
        f"train.checkpoint_every={iterations}",
        f"train.patch_shape=[{patch}, {patch}, {patch}]",
        f"train.batch_size={batch}",
        f"train.lr={lr}",
        "train.num_workers=0",
    ]
    started_cpu = time.process_time()
    summary = train(PRESETS[conv], out=out, overwrite=True, quiet=True, overrides=overrides)
    cpu_s = time.process_time() - started_cpu  # all threads of this process (num_workers 0)
    started = time.perf_counter()
    labels = str(out / "validation-tissue.nii.gz")
    predict(summary["last"], validation["raw"], labels, overwrite=True, progress=False)
    predict_s = time.perf_counter() - started
    (row,) = evaluate([labels], validation["labels"], semantic=True)
    parameters = count_parameters(load_checkpoint(summary["last"]).model)
    result = {"conv": conv, "parameters": parameters, "iterations": summary["iteration"],
              "train_s": summary["elapsed_s"], "cpu_s": cpu_s, "predict_s": predict_s, "dice": row["dice"],
              "mean_dice": row["mean_dice"]}
    print(f"{conv}: {result['iterations']} iterations in {result['train_s']:.0f} s, "
          f"predict {predict_s:.1f} s, mean Dice {row['mean_dice']:.3f}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/mri-train"), help="folder of the runs (replaced)")
    parser.add_argument("--iterations", type=int, default=300, help="training iterations of each conv")
    parser.add_argument("--quick", action="store_true", help="60 iterations each")
    parser.add_argument("--shape", type=int, default=64, help="phantom size per axis (a multiple of 32)")
    parser.add_argument("--patch", type=int, default=32, help="training patch size per axis (a multiple of 32)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    iterations = 60 if args.quick else args.iterations
    torch.set_num_threads(args.threads)
    from psc_seg.pipelines.synth import synth_mri

    shape = (args.shape,) * 3
    train_data = synth_mri(args.out / "data" / "train", shape=shape, seed=0, overwrite=True)
    validation = synth_mri(args.out / "data" / "validation", shape=shape, seed=1, overwrite=True)
    results = [run_one(conv, train_data, validation, args.out / conv.replace("(", "").replace(")", "").replace(",", ""),
                       iterations=iterations, patch=args.patch, batch=args.batch, lr=args.lr) for conv in PRESETS]

    print(f"\nCPU: {cpu_model()}, torch {torch.__version__}, threads {torch.get_num_threads()}; phantoms {shape} "
          f"(train seed 0, validation seed 1); patches {args.patch}^3 x {args.batch}, lr {args.lr:g}")
    from psc_seg.synth.mri import CLASSES

    classes = list(results[0]["dice"])
    print(f"{'conv':<10}{'parameters':>12}{'ratio':>7}{'iterations':>11}{'s/iter':>8}{'CPU s/iter':>11}"
          + "".join(f"{CLASSES.get(int(c), c):>8}" for c in classes) + f"{'mean':>8}")
    for r in results:
        print(f"{r['conv']:<10}{r['parameters']:>12,}{r['parameters'] / results[0]['parameters']:>7.2f}"
              f"{r['iterations']:>11}{r['train_s'] / r['iterations']:>8.2f}{r['cpu_s'] / r['iterations']:>11.2f}"
              + "".join(f"{r['dice'][c]:>8.3f}" for c in classes) + f"{r['mean_dice']:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
