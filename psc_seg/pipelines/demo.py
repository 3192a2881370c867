"""``psc-seg demo``: the whole pipeline on built-in synthetic data.

EM: ``synth em`` (a training and a test volume) -> ``train`` (a small psc(2,2) UNet) ->
``predict`` (test affinities) -> ``segment`` (waterz, several thresholds) -> ``evaluate`` (VI,
ARAND against the test ground truth), beside the no-learning baseline (affinities from the
smoothed raw, :mod:`psc_seg.segment.baseline`) through the same segment and evaluate steps.

MRI: ``synth mri`` (training and test phantoms) -> ``train`` (a small psc(2,2) DenseNet) ->
``predict`` (tissue labels) -> ``evaluate --semantic`` (Dice per class and mean).

Every stage is the same function the CLI command calls, writing real files into ``OUT``;
a preview PNG is written after each stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psc_seg.errors import UserError
from psc_seg.owned import marked_entries, other_entries, remove_entries, write_marker

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEMO_KIND = "demo"  # the folder's marker: .psc-seg-demo (psc_seg.owned)
# what the demo writes into OUT (the marker also lists what a finished or failed run left)
DEMO_ENTRIES = ("data", "run", "previews", "affinities.zarr", "baseline-affinities.zarr",
                "segmentation-learned.zarr", "segmentation-baseline.zarr", "tissue.nii.gz",
                "tissue_probabilities.nii.gz")


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: volume shapes, training budget."""

    train_shape: tuple[int, int, int]
    test_shape: tuple[int, int, int]
    iterations: int
    max_seconds: float
    overrides: tuple[str, ...] = ()
    """Further ``--set`` overrides of the training preset."""


# Budgets for a 2-core CPU; the learning rate is higher than the presets' so that a few
# hundred iterations learn (measured: EM VI 0.77 vs baseline 1.96 after 300 iterations; MRI
# mean Dice 0.87 after 300, 0.65 with the preset's 1e-3).
SIZES = {
    ("em", True): DemoSize((48, 96, 96), (32, 96, 96), iterations=300, max_seconds=170,
                           overrides=("train.lr=3e-3",)),
    ("em", False): DemoSize((64, 128, 128), (64, 128, 128), iterations=3000, max_seconds=900,
                            overrides=("train.lr=3e-3",)),
    ("mri", True): DemoSize((64, 64, 64), (64, 64, 64), iterations=1500, max_seconds=120,
                            overrides=("train.lr=3e-3",)),
    ("mri", False): DemoSize((96, 96, 96), (96, 96, 96), iterations=4000, max_seconds=600,
                             overrides=("train.lr=3e-3",)),
}


def _stage(log: Callable[[str], None], name: str):
    class _Timer:
        def __enter__(self):
            self.start = time.perf_counter()
            log(f"[{name}] ...")
            return self

        def __exit__(self, *exc):
            if exc[0] is None:
                log(f"[{name}] done in {time.perf_counter() - self.start:.1f} s")

    return _Timer()


def run_demo(
    task: str = "em",
    *,
    quick: bool = False,
    out: str | Path = "psc-seg-demo",
    device: str = "cpu",
    overwrite: bool = False,
    size: DemoSize | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo pipeline for ``task`` (``"em"`` or ``"mri"``) into the folder ``out``.

    Args:
        task: ``"em"`` (affinities, neurons, VI) or ``"mri"`` (tissue classes, Dice).
        quick: small volumes and a short training budget (a few minutes on a 2-core CPU).
        out: output folder: new, empty, or one an earlier demo wrote (marked by its
            ``.psc-seg-demo`` file, :mod:`psc_seg.owned`); any other non-empty folder is refused.
        device: ``"cpu"`` or ``"cuda"`` for training and prediction.
        overwrite: replace the earlier demo in ``out``: only what it wrote is removed.
        size: explicit volume shapes and training budget (tests use a tiny one).
        progress: show progress bars.
        log: where stage messages go.

    Returns:
        ``{"task", "out", "rows": [...], "summary": {...}, "previews": [...], "seconds"}``;
        EM rows carry VI / ARAND per threshold for ``learned`` and ``baseline``, MRI rows Dice.
    """
    if task not in ("em", "mri"):
        raise UserError(f"{{task}} must be 'em' or 'mri', got {task!r}", options=("task",))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{{out}} {str(out)!r} is a file; give a folder for the demo", options=("out",))
    ours = marked_entries(out, DEMO_KIND)
    if other_entries(out):
        if ours is None:
            raise UserError(f"{{out}} {str(out)!r} is not empty and is not a folder psc-seg demo wrote (no "
                            f".psc-seg-{DEMO_KIND}); choose an empty or new folder", options=("out",))
        if not overwrite:
            raise UserError(f"{str(out)!r} holds an earlier demo; pass {{overwrite}} to replace it or choose "
                            "another {out}", options=("overwrite", "out"))
    out.mkdir(parents=True, exist_ok=True)
    remove_entries(out, ours or ())
    users = set(other_entries(out))  # what the user added to an earlier demo's folder stays theirs
    write_marker(out, DEMO_KIND, DEMO_ENTRIES)
    size = size or SIZES[(task, quick)]
    started = time.perf_counter()
    runner = _run_em if task == "em" else _run_mri
    try:
        result = runner(out, size=size, device=device, progress=progress, log=log)
    finally:  # all the folder holds now but the user's is the demo's (partial files, records...)
        write_marker(out, DEMO_KIND, [*DEMO_ENTRIES, *(set(other_entries(out)) - users)])
    result.update(task=task, out=str(out), seconds=time.perf_counter() - started)
    return result


def _train(preset: str, data: list[str], out: Path, *, size: DemoSize, device: str, progress: bool) -> dict:
    from psc_seg.pipelines.train import train

    overrides = [
        *data,
        "data.validation=[]",
        f"train.iterations={size.iterations}",
        f"train.max_seconds={size.max_seconds}",
        "train.num_workers=0",
        f"train.checkpoint_every={size.iterations}",
        *size.overrides,
    ]
    return train(preset, out=out, overwrite=True, overrides=overrides, device=device, quiet=not progress)


def _run_em(out: Path, *, size: DemoSize, device: str, progress: bool, log) -> dict[str, Any]:
    from psc_seg.affinities import DEFAULT_OFFSETS
    from psc_seg.engine.pyramid import build_pyramids
    from psc_seg.io import create_volume, open_volume
    from psc_seg.pipelines.evaluate import evaluate
    from psc_seg.pipelines.predict import predict
    from psc_seg.pipelines.segment import segment
    from psc_seg.pipelines.synth import synth_em
    from psc_seg.preview import write_preview
    from psc_seg.segment.baseline import intensity_affinities

    previews = []
    with _stage(log, "synth"):
        # label 0 on the membranes, as in gala / CREMI ground truth: metrics ignore it
        train = synth_em(out / "data" / "em-train.zarr", shape=size.train_shape, seed=0, zero_membranes=True)
        test = synth_em(out / "data" / "em-test.zarr", shape=size.test_shape, seed=1, zero_membranes=True)
        raw = open_volume(test["specs"]["raw"])
        previews.append(write_preview(raw, labels=open_volume(test["specs"]["labels"]),
                                      out=out / "previews" / "1-test-ground-truth.png", title="test raw + ground truth"))
    with _stage(log, "train"):
        data = [f"data.train=[{{raw: '{train['specs']['raw']}', labels: '{train['specs']['labels']}'}}]"]
        summary = _train("em/demo-small", data, out / "run", size=size, device=device, progress=progress)
        log(f"        {summary['iteration']} iterations in {summary['elapsed_s']:.0f} s, loss {summary['loss']:.4f}")
    affinities = str(out / "affinities.zarr")
    with _stage(log, "predict"):
        predict(summary["last"], test["specs"]["raw"], affinities, device=device, progress=progress)
        previews.append(write_preview(affinities=open_volume(affinities), out=out / "previews" / "2-affinities.png",
                                      title="predicted affinities (z, y, x = red, green, blue)"))
    baseline = str(out / "baseline-affinities.zarr")
    raw_array = raw.read()
    base = create_volume(baseline, shape=(3, *raw_array.shape), dtype="float32", voxel_size=raw.voxel_size,
                         unit=raw.unit, axis_names=("c", "z", "y", "x"),
                         attrs={"task": {"kind": "affinities", "offsets": [list(o) for o in DEFAULT_OFFSETS]}},
                         provenance={"command": "psc-seg demo", "config": {"baseline": "intensity", "sigma": 1.0}},
                         pyramid=True)
    base.write(None, intensity_affinities(raw_array, sigma=1.0, offsets=DEFAULT_OFFSETS))
    build_pyramids([base], progress=False)
    base.finalize()
    rows, best = [], {}
    for method, affs in (("learned", affinities), ("baseline", baseline)):
        with _stage(log, f"segment {method}"):
            seg_out = str(out / f"segmentation-{method}.zarr")
            specs = segment(affs, seg_out, thresholds=THRESHOLDS, scoring="hist_quant_75", progress=progress)
        with _stage(log, f"evaluate {method}"):
            scored = evaluate(specs, test["specs"]["labels"])
        for threshold, row in zip(THRESHOLDS, scored):
            rows.append({"method": method, "threshold": threshold, **row})
        best[method] = min((r for r in rows if r["method"] == method), key=lambda r: r["voi"])
        previews.append(write_preview(raw, labels=open_volume(best[method]["prediction"]),
                                      out=out / "previews" / f"3-segmentation-{method}.png",
                                      title=f"{method}: threshold {best[method]['threshold']}, "
                                            f"VI {best[method]['voi']:.3f}"))
    return {"rows": rows, "previews": [str(p) for p in previews],
            "summary": {"iterations": summary["iteration"], "train_seconds": summary["elapsed_s"],
                        "learned_voi": best["learned"]["voi"], "learned_threshold": best["learned"]["threshold"],
                        "baseline_voi": best["baseline"]["voi"], "baseline_threshold": best["baseline"]["threshold"]}}


def _run_mri(out: Path, *, size: DemoSize, device: str, progress: bool, log) -> dict[str, Any]:
    from psc_seg.io import open_volume
    from psc_seg.pipelines.evaluate import evaluate
    from psc_seg.pipelines.predict import predict
    from psc_seg.pipelines.synth import synth_mri
    from psc_seg.preview import write_preview

    previews = []
    with _stage(log, "synth"):
        train = synth_mri(out / "data" / "mri-train", shape=size.train_shape, seed=0)
        test = synth_mri(out / "data" / "mri-test", shape=size.test_shape, seed=1)
        raw = open_volume(test["raw"])
        previews.append(write_preview(raw, labels=open_volume(test["labels"]),
                                      out=out / "previews" / "1-test-ground-truth.png", title="test T1 + tissue labels"))
    with _stage(log, "train"):
        data = [f"data.train=[{{raw: '{train['raw']}', labels: '{train['labels']}'}}]"]
        summary = _train("mri/demo-small", data, out / "run", size=size, device=device, progress=progress)
        log(f"        {summary['iteration']} iterations in {summary['elapsed_s']:.0f} s, loss {summary['loss']:.4f}")
    with _stage(log, "predict"):
        predict(summary["last"], test["raw"], str(out / "tissue.nii.gz"), device=device, progress=progress)
        labels_spec = str(out / "tissue.nii.gz")
        previews.append(write_preview(raw, labels=open_volume(labels_spec), out=out / "previews" / "2-prediction.png",
                                      title="predicted tissue classes"))
    with _stage(log, "evaluate"):
        (row,) = evaluate([labels_spec], test["labels"], semantic=True)
    return {"rows": [{"method": "learned", **row}], "previews": [str(p) for p in previews],
            "summary": {"iterations": summary["iteration"], "train_seconds": summary["elapsed_s"],
                        "mean_dice": row["mean_dice"], "dice": row["dice"]}}
