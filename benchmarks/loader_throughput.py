"""Training loader throughput: samples per second per loader worker, every augmentation on.

    python benchmarks/loader_throughput.py [--samples 20] [--repeats 3] [--old-samples 4] [--no-step]

One process, ``torch.set_num_threads(1)`` and :func:`psc_seg.allocator.keep_freed_memory`:
what one DataLoader worker does (the loader's workers run single-threaded with that allocator
setting, :func:`psc_seg.train.data._seed_worker`). Each row times
``PatchDataset[i]`` (choose a labelled patch, read it, warp it, intensity augmentations,
targets and masks) for ``--samples`` consecutive samples, ``--repeats`` times, and prints the
median samples/s by wall clock and by the process's CPU time (the box these figures come from
is shared, so wall time also counts time spent waiting for a core):

* ``em preset``: ``em/unet-p2sc2`` as shipped (132^3 input, 44^3 output) on the gala
  training crop, preloaded: whole sections (``augment.sections``) warped by a rotation about
  z, scale, elastic and misalignment; blur, missing and low-contrast sections, flips,
  transposes, contrast, gamma, noise.
* ``em 3d``: the same without ``sections``, with rotations about y and x as well (gala is
  isotropic): 3D elastic and scale, the 3D resampling path.
* ``em old``: the code before this benchmark (whole-field ``scipy.ndimage.map_coordinates``
  elastic over the 132^3 patch, flips and transposes, intensity, targets computed on the whole
  patch), reproduced here for the before/after ratio (``--old-samples`` samples).
* ``mri preset``: ``mri/densenet-p2sc2`` as shipped (64^3) on a 96^3 MRI phantom
  (``psc-seg synth mri``): rotations about z, y and x, scale, flips, gamma, intensity, noise.
* ``mri all``: the same with 3D elastic and misalignment, blur and contrast too.

Then, unless ``--no-step``, one CPU training step of the EM preset model (forward, backward
and Adam step on one 132^3 patch, torch's default threads) against the time the preset's
``num_workers`` loader workers need per sample: the step does not wait on the loader while
``step seconds >= (1 / samples per second) / num_workers``.

Measured on a quiet 2-core AMD EPYC VM (AVX2) at 03064b8 (RESULTS.md, loader_throughput):
em preset 13.4 samples/s (7.4 before the speed work), em 3d 6.0, em old 1.0 (13x slower), mri
preset 40.8, mri all 31.2; a CPU training step of the EM model 8.4 s, so it never waits on
the loader.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

GALA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gala"
EM_3D = ["augment.sections=false", "augment.rotate_out_of_plane=180"]
MRI_ALL = ["augment.elastic={enabled: true, alpha: 4.0, sigma: 8.0}", "augment.misalign={probability: 0.05, max_shift: 4}",
           "augment.blur={probability: 0.05, max_sigma: 2}", "augment.contrast=[0.8, 1.2]",
           "augment.missing_section=0.02", "augment.low_contrast=0.02"]


def dataset_for(preset: str, data: list[str], overrides: list[str]):
    from psc_seg.pipelines.train import prepare
    from psc_seg.train.config import load_config
    from psc_seg.train.data import PatchDataset

    config = load_config(preset, [*data, "data.validation=[]", *overrides])
    model, input_shape, volumes, _ = prepare(config)
    dataset = PatchDataset(volumes, input_shape=input_shape, output_shape=config.train.patch_shape,
                           task=config.task, augment_config=config.augment, seed=0,
                           min_labelled=config.train.min_labelled, zero_label=config.data.zero_label)
    return config, model, dataset


def old_sample(dataset, sample: int) -> dict[str, np.ndarray]:
    """One sample as the loader made it before: map_coordinates elastic over full-resolution
    fields of the whole input patch, then targets on the whole patch, cropped."""
    from scipy import ndimage

    from psc_seg.affinities import affinities_and_mask, seg_to_affinities
    from psc_seg.train.augment import augment_intensity, flip, transpose

    rng = np.random.default_rng([dataset.seed, int(sample)])
    config = dataset.augment_config
    index, _, raw, labels, known = dataset.draw(rng)
    arrays = [raw, labels, known]
    shape = raw.shape
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    coords = []
    for axis in range(3):
        field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), config.elastic.sigma)
        coords.append(grid[axis] + field * (config.elastic.alpha / (float(np.abs(field).max()) or 1.0)))
    arrays = [ndimage.map_coordinates(a.view(np.uint8) if a.dtype == bool else a, coords, order=1 if i == 0 else 0,
                                      mode="mirror") for i, a in enumerate(arrays)]
    arrays = transpose(flip(arrays, rng), dataset.transpose_groups[index], rng)
    raw, labels, known = (np.ascontiguousarray(a) for a in arrays)
    raw = augment_intensity(raw, rng, config)
    inner = tuple(slice(c, c + o) for c, o in zip(dataset.crop, dataset.output_shape))
    target = seg_to_affinities(labels, dataset.task.offsets)[(slice(None), *inner)]
    mask = affinities_and_mask(known.astype(np.uint8), dataset.task.offsets)[1][(slice(None), *inner)]
    return {"raw": raw, "target": target, "mask": mask}


def rate(make, samples: int, repeats: int, first: int = 0) -> tuple[float, float]:
    """Median samples/s over ``repeats`` runs of ``samples`` samples: (wall, CPU time)."""
    make(first + 10**6)  # warm-up (first touches, lazy imports)
    wall, cpu = [], []
    for repeat in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for sample in range(samples):
            make(first + repeat * samples + sample)
        wall.append(samples / (time.perf_counter() - start))
        cpu.append(samples / (time.process_time() - start_cpu))
    return statistics.median(wall), statistics.median(cpu)


def step_seconds(model, dataset, config, steps: int = 2) -> float:
    """Median seconds of one training step (forward, BCE, backward, Adam) on one patch."""
    from psc_seg.train.losses import affinity_loss

    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    item = dataset[0]
    raw, target, mask = item["raw"][None], item["target"][None], item["mask"][None]
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        out = model(raw)
        loss = affinity_loss(out, target, mask, kind=config.train.loss, balance=config.train.balance)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--old-samples", type=int, default=4)
    parser.add_argument("--no-step", action="store_true")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from psc_seg.allocator import keep_freed_memory

    keep_freed_memory()  # as the psc-seg command does for itself and its forked loader workers

    gala = GALA.resolve()
    em_data = [f"data.train=[{{raw: '{gala}/train-image.h5:/stack', labels: '{gala}/train-gt.lzf.h5:/stack'}}]"]
    rows = []
    em_config, em_model, em = dataset_for("em/unet-p2sc2", em_data, [])
    rows.append(("em preset", em.input_shape, *rate(em.__getitem__, args.samples, args.repeats)))
    _, _, em3d = dataset_for("em/unet-p2sc2", em_data, EM_3D)
    rows.append(("em 3d", em3d.input_shape, *rate(em3d.__getitem__, args.samples, args.repeats)))
    if args.old_samples:
        rows.append(("em old", em.input_shape, *rate(lambda i: old_sample(em, i), args.old_samples, 1)))
    with tempfile.TemporaryDirectory() as folder:
        from psc_seg.pipelines.synth import synth_mri

        synth_mri(folder, shape=(96, 96, 96), seed=0)
        mri_data = [f"data.train=[{{raw: '{folder}/raw.nii.gz', labels: '{folder}/labels.nii.gz'}}]"]
        _, _, mri = dataset_for("mri/densenet-p2sc2", mri_data, [])
        rows.append(("mri preset", mri.input_shape, *rate(mri.__getitem__, args.samples, args.repeats)))
        _, _, mri_all = dataset_for("mri/densenet-p2sc2", mri_data, MRI_ALL)
        rows.append(("mri all", mri_all.input_shape, *rate(mri_all.__getitem__, args.samples, args.repeats)))

    print(f"{'loader (1 thread)':<20}{'input':>14}{'samples/s':>11}{'cpu samples/s':>15}")
    for name, shape, wall, cpu in rows:
        print(f"{name:<20}{'x'.join(map(str, shape)):>14}{wall:>11.2f}{cpu:>15.2f}")
    if args.old_samples:
        print(f"em preset vs em old: {rows[0][2] / rows[2][2]:.1f}x (wall), {rows[0][3] / rows[2][3]:.1f}x (cpu)")
    if not args.no_step:
        torch.set_num_threads(default_threads)
        seconds = step_seconds(em_model, em, em_config)
        workers = em_config.train.num_workers
        need = 1 / rows[0][2] / workers
        print(f"em training step ({default_threads} threads): {seconds:.2f} s; {workers} loader workers give a sample "
              f"every {need:.3f} s -> the step {'does not wait' if seconds >= need else 'WAITS'} on the loader")


if __name__ == "__main__":
    main()
