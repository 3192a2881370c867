"""Speed of the synthetic-data generators and of a preview (not run by the tests).

    python benchmarks/synth_speed.py

Prints the best of 3 wall-clock times per call, with the number of cells / class fractions.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from psc_seg.preview import write_preview
from psc_seg.synth import em_volume, mri_volume


def best_of(fn, repeat: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    for shape in ((64, 128, 128), (128, 128, 128)):
        seconds, v = best_of(lambda: em_volume(shape, seed=0))
        print(f"em_volume{shape}: {seconds:.2f} s, {np.unique(v['labels']).size} cells, "
              f"membrane {v['mask'].mean():.0%}")
    for shape in ((64, 64, 64), (128, 128, 128)):
        seconds, v = best_of(lambda: mri_volume(shape, seed=0))
        fractions = np.bincount(v["labels"].ravel(), minlength=4) / v["labels"].size
        print(f"mri_volume{shape}: {seconds:.2f} s, CSF / GM / WM "
              f"{fractions[1]:.1%} / {fractions[2]:.1%} / {fractions[3]:.1%}")
    v = em_volume((64, 128, 128), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        seconds, _ = best_of(lambda: write_preview(v["raw"], labels=v["labels"], out=Path(tmp) / "p.png"))
    print(f"write_preview (64, 128, 128) with labels: {seconds:.2f} s")


if __name__ == "__main__":
    main()
