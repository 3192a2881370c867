"""Training data: labelled volumes, random patches with targets, and the torch DataLoader.

Sample ``i`` of a run is drawn with its own generator, ``numpy.random.default_rng([seed, i])``,
so the stream of patches does not depend on the number of loader workers, and a resumed run
(which starts at sample ``iteration * batch_size``) sees exactly the patches an uninterrupted
run would. Patches are read from volumes preloaded into numpy arrays (shared by forked
workers without copies: no Python object per voxel, so no copy-on-read growth) or lazily,
each worker opening its own file handles.

Geometry of one patch (valid networks; for "same" networks input = output)::

    input  ┌──────────────────────────┐   input_shape = output_shape + 2 * context,
           │   context                │   read with mirroring where it leaves the raw;
           │     ┌──────────────┐     │   targets and loss mask on the output region only.
           │     │    output    │     │   Labels outside the sampled region are unknown
           │     └──────────────┘     │   (no loss).
           └──────────────────────────┘

Labels (and mask) may cover a sub-region of the raw (CREMI, daisy containers). Positions are in
voxels of the raw: the output region of every patch lies inside the volume's ``sample_roi``
(labels, mask and the config's ``roi`` intersected), while its input reads the raw around it::

    raw  ┌────────────────────────────────┐
         │          labels                │
         │    ┌───────────────────┐       │
         │ ┌──┼─────┐             │       │   output: inside the labels (sample_roi)
         │ │  │┌───┐│             │       │   input: the raw around it, real raw
         │ │  │└───┘│ input       │       │   beyond the labels, mirrored only
         │ └──┼─────┘             │       │   beyond the raw
         │    └───────────────────┘       │
         └────────────────────────────────┘

With a geometric augmentation that resamples (rotation, scale, elastic, misalignment: see
:mod:`psc_seg.train.augment`), the input patch is sampled from the raw around it, read just
as large as the warp reaches (mirrored only beyond the raw), and the labels from the labels
around it (unknown beyond the labelled region). Labels are sampled, and targets and masks
computed, only on the output region grown by the reach of the affinity offsets
(:attr:`PatchDataset.target_region`): the same values as on the whole patch, at a fraction of
the cost. ``min_labelled`` is checked on the output region before the warp (which turns it
about its centre), so it holds approximately.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from psc_seg.engine import Roi, read_mirrored
from psc_seg.allocator import keep_freed_memory
from psc_seg.errors import UserError
from psc_seg.train.augment import (
    NoiseBank, augment_intensity, flip_and_transpose, resample_linear, resample_nearest, transposable_axes,
    warp_coordinates,
)
from psc_seg.train.config import AugmentConfig, TaskConfig
from psc_seg.affinities import affinities_and_mask, seg_to_affinities

MAX_TRIES = 200


@dataclass
class LabelledVolume:
    """One training (or validation) volume.

    ``raw`` is ``(Z, Y, X)`` or ``(C, Z, Y, X)``, ``labels`` and ``mask`` ``(Z, Y, X)``; each
    is a numpy array or anything with numpy slicing and ``shape`` (a lazily read
    :class:`psc_seg.io.Volume`). ``normalize`` maps a raw patch to float32 network input.

    ``labels_roi`` and ``mask_roi`` place the labels and the mask in voxels of the raw
    (default: at voxel 0, covering the raw); ``roi`` (voxels of the raw, or None) restricts
    the sampled region further. :attr:`sample_roi` is where output patches are drawn."""

    name: str
    raw: Any
    labels: Any
    normalize: Callable[[np.ndarray], np.ndarray]
    voxel_size: tuple[float, float, float]
    mask: Any = None
    meta: dict = field(default_factory=dict)
    labels_roi: Roi | None = None
    mask_roi: Roi | None = None
    roi: Roi | None = None

    def __post_init__(self) -> None:
        if self.labels_roi is None:
            self.labels_roi = Roi((0, 0, 0), self.labels.shape[-3:])
        if self.mask is not None and self.mask_roi is None:
            self.mask_roi = Roi(self.labels_roi.offset, self.mask.shape[-3:])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the labels, ``(Z, Y, X)``."""
        return tuple(self.labels.shape[-3:])  # type: ignore[return-value]

    @property
    def sample_roi(self) -> Roi:
        """Where labels are known, in voxels of the raw: the labels' ROI, intersected with the
        mask's and the ``roi`` where given."""
        region = self.labels_roi
        for other in (self.mask_roi, self.roi):
            if other is not None:
                region = region.intersect(other)
        return region

    @property
    def in_channels(self) -> int:
        return 1 if len(self.raw.shape) == 3 else int(self.raw.shape[0])


class ArrayView:
    """A numpy array seen through the ``spatial_shape`` / ``read`` interface of
    :class:`psc_seg.io.Volume`, so the engine's mirrored reads work on preloaded data."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return self.array.shape[-3:]

    def read(self, region: Any = None) -> np.ndarray:
        if region is None:
            return self.array
        lead = (slice(None),) * (self.array.ndim - 3)
        return self.array[lead + tuple(region)]

    def __getitem__(self, region: Any) -> np.ndarray:
        return self.array[region]


def read_raw(volume: LabelledVolume, start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Normalised float32 raw of a region, mirrored where it leaves the volume (as predict
    reads it): ``(Z, Y, X)`` or ``(C, Z, Y, X)``."""
    raw = volume.raw if hasattr(volume.raw, "spatial_shape") else ArrayView(volume.raw)
    data = read_mirrored(raw, Roi(start, shape))
    return volume.normalize(data).astype(np.float32, copy=False)


def read_known(volume: LabelledVolume, start: Sequence[int], shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the ``known`` mask of a region (``start`` in voxels of the raw): inside the
    volume's :attr:`~LabelledVolume.sample_roi` and (if the volume has a mask) inside the
    mask. Elsewhere labels are 0."""
    region = Roi(start, shape)
    labels = np.zeros(region.shape, dtype=np.uint64)
    known = np.zeros(region.shape, dtype=bool)
    inside = region.intersect(volume.sample_roi)
    if not inside.empty:
        dst = inside.relative_to(region).to_slices()
        labels[dst] = np.asarray(volume.labels[inside.relative_to(volume.labels_roi).to_slices()])
        known[dst] = True if volume.mask is None else (
            np.asarray(volume.mask[inside.relative_to(volume.mask_roi).to_slices()]) != 0)
    return labels, known


def check_room(volume: LabelledVolume, output_shape: Sequence[int]) -> None:
    """UserError unless ``volume``'s :attr:`~LabelledVolume.sample_roi` holds one output patch."""
    room = volume.sample_roi.shape
    if any(r < o for r, o in zip(room, output_shape)):
        what = "labels" if room == volume.labels_roi.shape else "labelled region (labels, mask and roi) of labels"
        raise UserError(
            f"the {what} {volume.meta.get('labels', volume.name)!r} ({_shape(room)} voxels) cannot hold one output patch of "
            f"train.patch_shape {_shape(output_shape)}; lower train.patch_shape or give larger labels"
        )


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


class PatchDataset(Dataset):
    """Random training patches with targets; ``dataset[i]`` is sample ``i`` of the run.

    Each item is a dict of float32 / int64 tensors:
    ``raw (C, *input_shape)``; for affinities ``target (K, *output_shape)`` and
    ``mask (K, *output_shape)`` (one channel per offset); for semantic tasks
    ``target (*output_shape)`` (class ids, int64) and ``mask (*output_shape)``.
    """

    def __init__(
        self, volumes: Sequence[LabelledVolume], *, input_shape: Sequence[int], output_shape: Sequence[int],
        task: TaskConfig, augment_config: AugmentConfig, seed: int, min_labelled: float = 0.25,
        zero_label: str = "ignore",
    ) -> None:
        self.volumes = list(volumes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output_shape = tuple(int(s) for s in output_shape)
        self.task, self.augment_config = task, augment_config
        self.seed, self.min_labelled, self.zero_label = int(seed), float(min_labelled), zero_label
        self.crop = tuple((i - o) // 2 for i, o in zip(self.input_shape, self.output_shape))
        for volume in self.volumes:
            check_room(volume, self.output_shape)
        sizes = np.array([float(v.sample_roi.size) for v in self.volumes])
        self.weights = sizes / sizes.sum()
        self.transpose_groups = [
            transposable_axes(v.voxel_size, self.input_shape, self.output_shape) for v in self.volumes
        ]

    @property
    def noise_bank(self) -> NoiseBank | None:
        """The dataset's :class:`~psc_seg.train.augment.NoiseBank` (Gaussian noise of every
        sample, drawn once from the seed, two input patches' worth), None without noise;
        made on first use in each process (the same in every loader worker)."""
        if self.augment_config.noise_sigma <= 0:
            return None
        if getattr(self, "_noise_bank", None) is None:
            channels = max((v.in_channels for v in self.volumes), default=1)
            self._noise_bank = NoiseBank(channels * int(np.prod(self.input_shape)), self.seed)
        return self._noise_bank

    def __len__(self) -> int:  # the sampler decides which samples are drawn
        return 2**62

    def output_roi(self, rng: np.random.Generator) -> tuple[int, Roi]:
        """One random try: a volume index and an output region inside its
        :attr:`~LabelledVolume.sample_roi` (voxels of the raw)."""
        index = int(rng.choice(len(self.volumes), p=self.weights))
        region = self.volumes[index].sample_roi
        begin = [int(rng.integers(b, e - o + 1)) for b, e, o in zip(region.begin, region.end, self.output_shape)]
        return index, Roi(begin, self.output_shape)

    def choose(self, rng: np.random.Generator, context: Sequence[int]) -> tuple[int, list[int], np.ndarray, np.ndarray]:
        """A patch whose output region is labelled enough: (volume index, start of the input
        region in voxels of the raw, labels and known of the output region grown by
        ``context`` on each side)."""
        best = None
        for _ in range(MAX_TRIES):
            index, output = self.output_roi(rng)
            volume = self.volumes[index]
            labels, known = read_known(volume, [b - c for b, c in zip(output.begin, context)],
                                       [o + 2 * c for o, c in zip(self.output_shape, context)])
            inner = tuple(slice(c, c + o) for c, o in zip(context, self.output_shape))
            fraction = float(np.mean(known[inner] & (labels[inner] != 0)))
            if best is None or fraction > best[0]:
                best = (fraction, index, [b - c for b, c in zip(output.begin, self.crop)], labels, known)
            if fraction >= self.min_labelled and fraction > 0:  # min_labelled 0: still some label
                break
        fraction, index, start, labels, known = best
        if fraction == 0:
            raise UserError(
                f"no training patch with labelled voxels found in {MAX_TRIES} tries; check that the labels "
                "are not all 0 (unlabelled) and the mask covers them, or lower train.min_labelled"
            )
        return index, start, labels, known

    def draw(self, rng: np.random.Generator) -> tuple[int, Roi, np.ndarray, np.ndarray, np.ndarray]:
        """A patch whose output region is labelled enough, before augmentation: (volume index,
        input region in voxels of the raw, raw, labels, known)."""
        index, start, labels, known = self.choose(rng, self.crop)
        raw = read_raw(self.volumes[index], start, self.input_shape)
        return index, Roi(start, self.input_shape), raw, labels, known

    @property
    def target_region(self) -> tuple[slice, slice, slice]:
        """Where in the input patch labels are needed: the output region grown by the reach of
        the affinity offsets (the largest ``|offset|`` per axis; semantic tasks: none), clipped
        to the patch. Affinities computed there equal those computed on the whole patch."""
        reach = [0, 0, 0]
        if self.task.kind == "affinities":
            reach = [max(abs(int(o[axis])) for o in self.task.offsets) for axis in range(3)]
        return tuple(slice(max(0, c - r), min(i, c + o + r))
                     for c, o, r, i in zip(self.crop, self.output_shape, reach, self.input_shape))

    def patch(self, sample: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
        """Sample ``sample`` after its geometric augmentation: (volume index, raw of the input
        patch, labels and known of :attr:`target_region`, the sample's generator for what
        follows)."""
        rng = np.random.default_rng([self.seed, int(sample)])
        config, region = self.augment_config, self.target_region
        if not config.resamples:  # exact flips and transposes of the patch read as it is
            index, _, raw, labels, known = self.draw(rng)
            raw, labels, known = flip_and_transpose([raw, labels, known], rng, config, self.transpose_groups[index])
            return index, np.ascontiguousarray(raw), labels[region], known[region], rng
        index, start, _, _ = self.choose(rng, (0, 0, 0))
        volume = self.volumes[index]
        warp = warp_coordinates(rng, config, self.input_shape, voxel_size=volume.voxel_size,
                                transpose_groups=self.transpose_groups[index])
        begin, shape = warp.box()
        raw = resample_linear(read_raw(volume, [s + b for s, b in zip(start, begin)], shape), warp, begin)
        begin, shape = warp.box(region)
        labels, known = read_known(volume, [s + b for s, b in zip(start, begin)], shape)
        labels, known = resample_nearest([labels, known], warp, begin, region)
        return index, raw, labels, known, rng

    def __getitem__(self, sample: int) -> dict[str, torch.Tensor]:
        index, raw, labels, known, rng = self.patch(sample)
        raw = augment_intensity(raw, rng, self.augment_config, noise=self.noise_bank)
        if self.task.kind == "affinities" and self.zero_label == "ignore":
            known = known & (labels != 0)
        if raw.ndim == 3:
            raw = raw[None]
        region = self.target_region
        inner = tuple(slice(c - r.start, c - r.start + o) for c, o, r in zip(self.crop, self.output_shape, region))
        if self.task.kind == "affinities":
            target = seg_to_affinities(labels, self.task.offsets)[(slice(None), *inner)]
            mask = affinities_and_mask(known.astype(np.uint8), self.task.offsets)[1][(slice(None), *inner)]
            return {
                "raw": torch.from_numpy(np.ascontiguousarray(raw)),
                "target": torch.from_numpy(np.ascontiguousarray(target)),
                "mask": torch.from_numpy(np.ascontiguousarray(mask)),
            }
        classes = labels[inner].astype(np.int64)
        bad = classes[known[inner]]
        if bad.size and (bad.min() < 0 or bad.max() >= self.task.num_classes):
            raise UserError(
                f"labels of {self.volumes[index].name!r} hold class {int(bad.max())}, but task.num_classes is "
                f"{self.task.num_classes}; classes must be 0 .. num_classes - 1"
            )
        return {
            "raw": torch.from_numpy(np.ascontiguousarray(raw)),
            "target": torch.from_numpy(np.ascontiguousarray(np.where(known[inner], classes, 0))),
            "mask": torch.from_numpy(np.ascontiguousarray(known[inner]).astype(np.float32)),
        }


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker differently (base_seed + id); numpy's global RNG would be the
    # same in every forked worker, so derive it too (our patches use their own generators).
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    torch.set_num_threads(1)
    # a sample's 5-19 MB arrays reuse freed heap instead of fresh page-faulted mmaps (inherited from
    # the psc-seg command's process under fork; set here for library callers and spawned workers)
    keep_freed_memory()
    # lazily read volumes: drop file handles inherited from the parent, each worker reopens its own
    info = torch.utils.data.get_worker_info()
    for volume in info.dataset.volumes if info is not None else ():
        for array in (volume.raw, volume.labels, volume.mask):
            if hasattr(array, "close"):
                array.close()


def make_loader(
    dataset: PatchDataset, *, batch_size: int, start_iteration: int, iterations: int, num_workers: int,
    seed: int, pin_memory: bool = False,
) -> DataLoader:
    """Batches for iterations ``start_iteration + 1 .. iterations`` (sample numbers
    ``start_iteration * batch_size`` on), ``num_workers`` processes preparing them."""
    samples = range(start_iteration * batch_size, iterations * batch_size)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=samples, num_workers=num_workers,
        worker_init_fn=_seed_worker if num_workers else None, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed), persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
    )


def worker_error(exc: UserError) -> UserError:
    """The UserError a loader worker raised, as it was raised there: torch re-raises it in the
    main process with its traceback as the message (``"Caught UserError in DataLoader worker
    process 0.\nOriginal Traceback ..."``), which would reach the user as its first line."""
    text = str(exc)
    if not text.startswith("Caught "):
        return exc
    prefix = f"{UserError.__module__}.{UserError.__qualname__}: "
    lines = [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]
    return UserError(lines[-1]) if lines else exc
