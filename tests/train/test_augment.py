"""Augmentations keep raw, labels and mask aligned, keep label ids, and are deterministic."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from psc_seg.errors import UserError
from psc_seg.io import normalize
from psc_seg.train.augment import (
    NoiseBank, Warp, augment, augment_intensity, blur_sections, flip, gaussian_noise, resample_linear, rotation_planes, section_defects, transpose,
    tone, transposable_axes, warp_coordinates,
)
from psc_seg.train.config import AugmentConfig, TaskConfig, load_config
from psc_seg.train.data import LabelledVolume, PatchDataset

from .conftest import blob_labels

NONE = dict(flip=False, transpose=False, intensity_scale=(1, 1), intensity_shift=(0, 0))
GEOMETRY = {
    "flip+transpose": dict(flip=True, transpose=True),
    "rotate z": dict(rotate=180),
    "rotate y, x": dict(rotate_out_of_plane=180),
    "scale": dict(scale=(0.8, 1.25)),
    "elastic": dict(elastic={"enabled": True, "alpha": 3.0, "sigma": 6.0}),
    "sections": dict(sections=True, rotate=180, scale=(0.8, 1.25), elastic={"enabled": True, "alpha": 3.0, "sigma": 6.0}),
    "misalign": dict(misalign={"probability": 0.3, "max_shift": 3.0}),
    "all": dict(flip=True, transpose=True, rotate=180, rotate_out_of_plane=180, scale=(0.8, 1.25),
                elastic={"enabled": True, "alpha": 3.0, "sigma": 6.0}, misalign={"probability": 0.3, "max_shift": 3.0}),
}


DATA = "data.train=[{raw: r.zarr/raw, labels: r.zarr/gt}]"  # presets hold no data

def _config(**keys) -> AugmentConfig:
    return AugmentConfig(**{**NONE, **keys})


def _spheres(shape=(28, 28, 28)) -> tuple[np.ndarray, np.ndarray]:
    """Two labelled balls (ids 5 and 9, off centre) and a raw that is 1 on them, 0 elsewhere."""
    grid = np.indices(shape).astype(np.float64)
    labels = np.zeros(shape, dtype=np.uint64)
    for label, centre, radius in ((5, (10, 9, 12), 6.0), (9, (18, 19, 17), 5.0)):
        labels[sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2] = label
    return labels.astype(np.float32).clip(0, 1), labels


def _agreement(raw: np.ndarray, labels: np.ndarray, known: np.ndarray) -> float:
    """Fraction of known voxels where raw > 0.5 exactly where a label is."""
    return float(np.mean((raw > 0.5)[known] == (labels != 0)[known]))


@pytest.mark.parametrize("name", list(GEOMETRY))
def test_each_transform_keeps_the_raw_on_its_labels_and_the_label_ids(name):
    raw, labels = _spheres()
    known = np.ones(labels.shape, dtype=bool)
    config = _config(**GEOMETRY[name])
    changed = 0
    for seed in range(4):
        out_raw, out_labels, out_known = augment(raw, labels, known, np.random.default_rng(seed), config,
                                                 transpose_groups=[(0, 1, 2)])
        assert out_raw.shape == out_labels.shape == out_known.shape == labels.shape
        assert out_labels.dtype == np.uint64 and out_known.dtype == bool
        assert set(np.unique(out_labels)) <= {0, 5, 9}
        assert out_known.mean() > 0.5
        assert _agreement(out_raw, out_labels, out_known) > 0.97
        assert {5, 9} <= set(np.unique(out_labels[out_known]))  # the balls are still there, labelled
        changed += not np.array_equal(out_labels, labels)
    assert changed >= 3


def test_large_label_ids_survive_nearest_sampling_exactly():
    raw, labels = _spheres()
    big = np.where(labels == 5, np.uint64(2**53 + 1), np.where(labels == 9, np.uint64(2**64 - 3), 0)).astype(np.uint64)
    _, out, _ = augment(raw, big, np.ones(big.shape, bool), np.random.default_rng(0), _config(**GEOMETRY["all"]))
    assert set(np.unique(out)) <= {0, 2**53 + 1, 2**64 - 3} and (out == 2**64 - 3).any()


@pytest.mark.parametrize("name", ["rotate z", "elastic", "all"])
def test_geometry_is_deterministic_per_seed(name):
    raw, labels = _spheres((16, 16, 16))
    known = np.ones(labels.shape, dtype=bool)
    config = _config(**GEOMETRY[name], noise_sigma=0.1, gamma=(0.7, 1.4), blur={"probability": 0.5})
    a = augment(raw, labels, known, np.random.default_rng(3), config)
    b = augment(raw, labels, known, np.random.default_rng(3), config)
    c = augment(raw, labels, known, np.random.default_rng(4), config)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_rotations_only_turn_planes_of_equal_voxel_size():
    config = _config(rotate=180, rotate_out_of_plane=180)
    assert [p for p, _ in rotation_planes((40, 4, 4), config)] == [(1, 2)]
    assert [p for p, _ in rotation_planes((4, 4, 4), config)] == [(1, 2), (0, 2), (0, 1)]
    assert [p for p, _ in rotation_planes((4, 4, 6), config)] == [(0, 1)]
    assert rotation_planes((4, 4, 4), _config(rotate=30)) == [((1, 2), 30.0)]
    for seed in range(5):  # anisotropic: each z section comes from one source section, unscaled
        warp = warp_coordinates(np.random.default_rng(seed), config, (6, 20, 20), voxel_size=(40, 4, 4))
        assert warp.planar == 0
        z = warp.coords()[0].numpy()
        assert np.allclose(z, np.arange(6)[:, None, None], atol=1e-4) or np.allclose(z, np.arange(6)[::-1, None, None], atol=1e-4)
        assert not np.allclose(warp.coords()[1].numpy(), np.arange(20)[None, :, None], atol=0.5)  # yx turned


@pytest.mark.parametrize("sections", [True, False])
def test_the_planar_and_the_3d_resampling_agree(sections):
    source = np.random.default_rng(0).random((2, 60, 64, 64)).astype(np.float32)
    elastic = {"enabled": True, "alpha": 2.0, "sigma": 5.0} if sections else {}  # else blends sections (z scaled)
    config = _config(rotate=180, scale=(0.8, 1.2), elastic=elastic, sections=sections,
                     misalign={"probability": 0.3, "max_shift": 2.0}, flip=True, transpose=True)
    axes = set()
    for seed in range(6):  # transposes put the source z along any patch axis
        warp = warp_coordinates(np.random.default_rng(seed), config, (20, 20, 20), voxel_size=(1, 1, 1),
                                transpose_groups=[(0, 1, 2)])
        axes.add(warp.planar)
        begin, size = warp.box()
        box = source[(slice(None), *(slice(b + 20, b + 20 + n) for b, n in zip(begin, size)))]  # patch at 20
        assert box.shape[1:] == size
        planar = resample_linear(box, warp, begin)
        full = resample_linear(box, dataclasses.replace(warp, planar=None), begin)
        assert planar.shape == (2, 20, 20, 20)
        np.testing.assert_allclose(planar, full, atol=2e-4)
    assert axes == {0} if sections else (len(axes) >= 2 and None not in axes)  # sections: z is never transposed


def test_whole_sections_read_in_reverse_equal_the_mirrored_box():
    """A warp reading whole source sections last to first (a z flip) reverses the grid's slices
    instead of the box: the same patch as the old copy of the box mirrored along z."""
    rng = np.random.default_rng(0)
    source = rng.random((2, 9, 14, 14)).astype(np.float32)
    shape = (9, 12, 12)
    control = np.stack(np.meshgrid(*[np.linspace(0, s - 1, 3) for s in shape], indexing="ij")) + 1.0
    control[1:] += rng.uniform(-1, 1, control[1:].shape)  # y and x warped, differently per z
    control[0] = np.arange(3)[:, None, None] * 4.0  # whole sections 0 .. 8, in order
    mirrored = control.copy()
    mirrored[0] = 8.0 - control[0]  # sections 8 .. 0
    forward = resample_linear(source, Warp(control, shape, planar=0))
    got = resample_linear(source, Warp(mirrored, shape, planar=0))
    np.testing.assert_allclose(got, resample_linear(np.ascontiguousarray(source[:, ::-1]), Warp(control, shape, planar=0)),
                               atol=1e-6)
    assert not np.allclose(got, forward)
    shifts = rng.uniform(-2, 2, (9, 2))  # misalignment: per patch slice, whatever section it reads
    np.testing.assert_allclose(
        resample_linear(source, Warp(mirrored, shape, shifts, planar=0)),
        resample_linear(np.ascontiguousarray(source[:, ::-1]), Warp(control, shape, shifts, planar=0)), atol=1e-6)


def test_sections_stay_whole_sections():
    config = _config(sections=True, rotate=180, scale=(0.7, 1.3), flip=True, elastic={"enabled": True, "alpha": 3.0},
                     misalign={"probability": 0.2, "max_shift": 3.0})
    for seed in range(4):
        warp = warp_coordinates(np.random.default_rng(seed), config, (9, 16, 16), voxel_size=(1, 1, 1),
                                transpose_groups=[(0, 1, 2)])
        z = warp.coords()[0].numpy()
        assert np.allclose(z, np.arange(9)[:, None, None], atol=1e-6) or np.allclose(z, np.arange(9)[::-1, None, None], atol=1e-6)
    with pytest.raises(UserError, match=r"augment.sections keeps z sections whole.*rotate_out_of_plane to 0"):
        load_config("em/unet-p2sc2", [DATA, "augment.rotate_out_of_plane=10"])


def test_the_warp_reaching_outside_the_patch_leaves_labels_unknown():
    raw, labels = _spheres((16, 16, 16))
    known = np.ones(labels.shape, dtype=bool)
    config = _config(rotate=45, scale=(0.7, 0.7))  # zoom out: the corners come from outside
    _, _, out_known = augment(raw, labels, known, np.random.default_rng(0), config)
    assert not out_known[:, 0, 0].any() and not out_known[0].any()  # corners in yx, ends in z
    assert out_known[4:12, 4:12, 4:12].all()


def test_flip_and_transpose_move_all_arrays_alike():
    raw = np.arange(4 * 6 * 6, dtype=np.float32).reshape(4, 6, 6)
    labels = raw.astype(np.uint64)
    for seed in range(8):
        out_raw, out_labels = flip([raw[None], labels], np.random.default_rng(seed))
        assert np.array_equal(out_raw[0].astype(np.uint64), out_labels)
        out_raw, out_labels = transpose([raw[None], labels], [(1, 2)], np.random.default_rng(seed))
        assert np.array_equal(out_raw[0].astype(np.uint64), out_labels)


def test_transposable_axes_need_equal_voxel_size_and_patch_size():
    assert transposable_axes((40, 4, 4), (8, 16, 16), (4, 8, 8)) == [(1, 2)]
    assert transposable_axes((10, 10, 10), (16, 16, 16), (8, 8, 8)) == [(0, 1, 2)]
    assert transposable_axes((10, 10, 10), (16, 20, 16), (8, 12, 8)) == [(0, 2)]
    assert transposable_axes((10, 5, 4), (8, 8, 8), (8, 8, 8)) == []


def test_section_defects_blank_and_flatten_whole_sections():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, (50, 8, 8)).astype(np.float32)
    missing = section_defects(raw, np.random.default_rng(1), missing=1.0, low_contrast=0.0)
    assert np.all(missing == 0)
    low = section_defects(raw, np.random.default_rng(1), missing=0.0, low_contrast=1.0, contrast=0.2)
    np.testing.assert_allclose(low.std(axis=(1, 2)), 0.2 * raw.std(axis=(1, 2)), rtol=1e-4)
    np.testing.assert_allclose(low.mean(axis=(1, 2)), raw.mean(axis=(1, 2)), rtol=1e-4)
    some = section_defects(raw, np.random.default_rng(1), missing=0.3, low_contrast=0.0)
    blank = np.all(some == 0, axis=(1, 2))
    assert 0 < blank.sum() < 50
    assert np.array_equal(some[~blank], raw[~blank])


def test_blur_smooths_whole_sections_only():
    raw = np.random.default_rng(0).uniform(0, 1, (40, 16, 16)).astype(np.float32)
    out = blur_sections(raw, np.random.default_rng(1), probability=0.3, max_sigma=2.0)
    same = np.all(out == raw, axis=(1, 2))
    assert 0 < (~same).sum() < 40
    assert np.all(out[~same].std(axis=(1, 2)) < raw[~same].std(axis=(1, 2)))


def test_tone_is_contrast_then_gamma_then_scale_and_shift():
    raw = np.random.default_rng(0).uniform(-1, 3, (10, 10, 10)).astype(np.float32)
    got = tone(raw, np.random.default_rng(1), contrast=(0.5, 0.5), gamma=(2.0, 2.0), scale=(1.5, 1.5), shift=(0.2, 0.2))
    step = (raw - raw.mean()) * 0.5 + raw.mean()  # contrast
    low, high = step.min(), step.max()
    step = ((step - low) / (high - low)) ** 2.0 * (high - low) + low  # gamma, range kept
    np.testing.assert_allclose(got, step * 1.5 + 0.2, atol=4 * 1.5 * (high - low) / 4096)
    plain = tone(raw, np.random.default_rng(1), contrast=(0.5, 0.5), scale=(1.5, 1.5), shift=(0.2, 0.2))
    np.testing.assert_allclose(plain, ((raw - raw.mean()) * 0.5 + raw.mean()) * 1.5 + 0.2, rtol=1e-5, atol=1e-5)


def test_noise_bank_windows_are_standard_normal_and_deterministic_per_seed():
    bank = NoiseBank(20 * 30 * 30, seed=3)
    assert bank.values.numel() == 2 * 20 * 30 * 30
    np.testing.assert_array_equal(bank.values, NoiseBank(20 * 30 * 30, seed=3).values)
    assert not torch.equal(bank.values, NoiseBank(20 * 30 * 30, seed=4).values)
    rng = np.random.default_rng(0)
    windows = [bank.window((20, 30, 30), rng) for _ in range(20)]
    offsets = {int(w.data_ptr() - bank.values.data_ptr()) for w in windows}
    assert len(offsets) > 15  # random offsets, views into the bank
    for window in windows:
        assert abs(float(window.mean())) < 0.05 and abs(float(window.std()) - 1.0) < 0.03
    with pytest.raises(ValueError, match="cannot fill"):
        bank.window((21, 30, 30), rng)


def test_gaussian_noise_from_the_bank_has_its_sigma_and_adds_in_place():
    raw = np.full((20, 30, 30), 0.5, dtype=np.float32)
    bank = NoiseBank(raw.size, seed=0)
    sigmas = []
    for seed in range(6):
        out = raw.copy()
        got = gaussian_noise(out, np.random.default_rng(seed), max_sigma=0.2, bank=bank, out=out)
        assert got is out
        sigma = float(np.random.default_rng(seed).uniform(0.0, 0.2))  # the first draw of the generator
        assert abs(float(out.mean()) - 0.5) < 0.01 and abs(float(out.std()) - sigma) < 0.03 * sigma + 1e-6
        again = gaussian_noise(raw, np.random.default_rng(seed), max_sigma=0.2, bank=bank)
        np.testing.assert_array_equal(again, out)  # deterministic per seed, input untouched
        sigmas.append(sigma)
    assert np.all(raw == 0.5) and len(set(sigmas)) == 6
    fresh = gaussian_noise(raw, np.random.default_rng(0), max_sigma=0.2)  # no bank: fresh draws
    assert abs(float(fresh.std()) - sigmas[0]) < 0.03 * sigmas[0]


def test_augment_intensity_ranges_and_determinism():
    raw = np.full((4, 8, 8), 0.5, dtype=np.float32)
    labels = np.ones(raw.shape, dtype=np.uint64)
    known = np.ones(raw.shape, dtype=bool)
    config = AugmentConfig(intensity_scale=(2.0, 2.0), intensity_shift=(0.1, 0.1), flip=False, transpose=False)
    out, _, _ = augment(raw, labels, known, np.random.default_rng(0), config)
    np.testing.assert_allclose(out, 1.1)


def test_bad_ranges_are_refused_in_one_line():
    with pytest.raises(UserError, match=r"augment.scale.*low <= high"):
        load_config("em/demo-small", [DATA, "augment.scale=[1.2, 0.9]"])
    with pytest.raises(UserError, match=r"augment.gamma.*above 0"):
        load_config("em/demo-small", [DATA, "augment.gamma=[0, 1]"])
    with pytest.raises(UserError, match=r"augment.contrast.*at least 0"):
        load_config("em/demo-small", [DATA, "augment.contrast=[-1, 1]"])


# ------------------------------------------------------------------ the loader's path

def _volume(labels, raw):
    return LabelledVolume(name="v", raw=raw, labels=labels, voxel_size=(1.0, 1.0, 1.0),
                          normalize=functools.partial(normalize, spec={"kind": "zscore", "mean": 0.0, "std": 1.0}))


class _WholePatch(PatchDataset):
    """Targets computed from the labels of the whole input patch (the old way)."""

    @property
    def target_region(self):
        return tuple(slice(0, s) for s in self.input_shape)


@pytest.mark.parametrize("name", ["none", "flip+transpose", "all"])
def test_targets_on_the_output_region_equal_those_of_the_whole_patch(name):
    labels = blob_labels((24, 40, 40))
    task = TaskConfig(offsets=[[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0], [0, -2, -2]])
    config = _config(**GEOMETRY.get(name, {}))
    kwargs = dict(input_shape=(14, 20, 20), output_shape=(6, 8, 8), task=task, augment_config=config, seed=2,
                  zero_label="ignore", min_labelled=0.0)
    cropped, whole = PatchDataset([_volume(labels, labels.astype(np.float32))], **kwargs), \
        _WholePatch([_volume(labels, labels.astype(np.float32))], **kwargs)
    assert cropped.target_region == (slice(1, 13), slice(4, 16), slice(4, 16))
    for sample in range(3):
        a, b = cropped[sample], whole[sample]
        assert a["target"].shape == (5, 6, 8, 8) and a["target"].sum() > 0
        for key in ("raw", "target", "mask"):
            assert torch.equal(a[key], b[key]), key


def test_loader_patches_keep_the_raw_on_the_labels_and_mark_the_outside_unknown():
    raw, labels = _spheres((30, 30, 30))
    config = _config(**GEOMETRY["all"])
    dataset = PatchDataset([_volume(labels, raw)], input_shape=(20, 20, 20), output_shape=(12, 12, 12),
                           task=TaskConfig(kind="semantic", num_classes=10), augment_config=config, seed=0,
                           min_labelled=0.05)
    unknown = 0
    for sample in range(6):
        item = dataset[sample]
        inner = item["raw"][0, 4:16, 4:16, 4:16].numpy()
        known = item["mask"].numpy() > 0
        assert set(np.unique(item["target"].numpy())) <= {0, 5, 9}
        assert _agreement(inner, item["target"].numpy(), known) > 0.97
        unknown += int((~known).sum())
        again = dataset[sample]
        assert all(torch.equal(item[k], again[k]) for k in item)
    assert unknown > 0  # output regions near the volume's edge, warped, reach outside the labels
