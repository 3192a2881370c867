"""Memory of the training data pipeline over many batches: does it grow?

    python benchmarks/train_loader_memory.py --batches 600 --workers 2

Builds the ``em/demo-small`` patch dataset on the gala training crop (preloaded into numpy
arrays, shared with the forked workers), iterates the DataLoader and prints the resident
memory (RSS, MiB) of the main process and of all workers together every ``--every`` batches,
plus the data throughput. A leak shows as a steady rise after the first few hundred batches.

Measured (2 workers, 2-core box shared with other jobs, 1000 batches of 48x88x88 input):
main 273 MiB throughout, workers 417 -> 397 MiB together, 37 batches/s (the demo UNet
trains at about 1 iteration/s on the same box, so one worker keeps it fed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import psutil
from _memory import children_rss  # benchmarks/ is a folder of scripts

GALA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gala"


def rss_mib(process: psutil.Process) -> tuple[float, float]:
    """(main, workers) resident memory in MiB."""
    return process.memory_info().rss / 2**20, children_rss(process) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()

    from psc_seg.pipelines.train import prepare
    from psc_seg.train.config import load_config
    from psc_seg.train.data import PatchDataset, make_loader

    gala = GALA.resolve()
    config = load_config("em/demo-small", [
        f"data.train=[{{raw: '{gala}/train-image.h5:/stack', labels: '{gala}/train-gt.lzf.h5:/stack'}}]",
        "data.validation=[]",
    ])
    _, input_shape, volumes, _ = prepare(config)
    dataset = PatchDataset(volumes, input_shape=input_shape, output_shape=config.train.patch_shape,
                           task=config.task, augment_config=config.augment, seed=0,
                           min_labelled=config.train.min_labelled, zero_label=config.data.zero_label)
    loader = make_loader(dataset, batch_size=config.train.batch_size, start_iteration=0, iterations=args.batches,
                         num_workers=args.workers, seed=0)
    process = psutil.Process()
    started = time.perf_counter()
    print(f"{'batch':>6}{'main MiB':>10}{'workers MiB':>13}{'batches/s':>11}")
    for index, _batch in enumerate(loader, start=1):
        if index % args.every == 0 or index == 1:
            main_mib, workers_mib = rss_mib(process)
            rate = index / (time.perf_counter() - started)
            print(f"{index:>6}{main_mib:>10.0f}{workers_mib:>13.0f}{rate:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
