"""Labels that cover a sub-region of the raw, placed by their world offsets (the CREMI / funkelab
layout, issue 14): patches whose output lies inside the labels and whose input reads the real raw
around them; `psc-seg train` on it; one-line refusals of layouts that cannot be placed."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
import torch
import yaml
from skimage import measure
from typer.testing import CliRunner

from psc_seg.affinities import seg_to_affinities
from psc_seg.cli.main import app
from psc_seg.engine import Roi, read_mirrored
from psc_seg.io import create_volume, open_volume
from psc_seg.pipelines import validate
from psc_seg.pipelines.train import open_labelled
from psc_seg.train.config import AugmentConfig, TaskConfig, load_config
from psc_seg.train.data import ArrayView, PatchDataset

from .conftest import blob_labels, em_config, mri_config

runner = CliRunner()
NO_AUGMENT = AugmentConfig(flip=False, transpose=False, intensity_scale=(1, 1), intensity_shift=(0, 0))
VOXEL = (8.0, 8.0, 8.0)
RAW_SHAPE = (64, 96, 96)
AT = (20, 24, 24)  # the labels' first voxel, in voxels of the raw
LABELLED = Roi(AT, (24, 48, 48))


@pytest.fixture
def layout(tmp_path) -> dict:
    """``cremi.h5``: ``/raw`` 64x96x96 at offset 0 and ``/gt`` 24x48x48 at offset (160, 192, 192)
    nm, voxel size 8x8x8 (``resolution`` / ``offset`` attributes as in CREMI files). ``full``:
    the labels placed in an array of the raw's shape (0 elsewhere)."""
    cells = blob_labels(RAW_SHAPE, n=60, seed=4)
    rng = np.random.default_rng(5)
    raw = (np.where(cells == 0, 60.0, 180.0) + rng.normal(0, 20, RAW_SHAPE)).clip(0, 255).astype(np.uint8)
    # one connected piece per id (a cell cut by the crop may fall apart), so perfect affinities score VI 0
    gt = measure.label(cells[LABELLED.to_slices()], background=0, connectivity=1).astype(np.uint64)
    full = np.zeros(RAW_SHAPE, dtype=np.uint64)
    full[LABELLED.to_slices()] = gt
    path = tmp_path / "cremi.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = raw
        f["raw"].attrs.update(resolution=VOXEL, offset=(0.0, 0.0, 0.0))
        f["gt"] = gt
        f["gt"].attrs.update(resolution=VOXEL, offset=tuple(a * v for a, v in zip(AT, VOXEL)))
    return {"raw": f"{path}:/raw", "labels": f"{path}:/gt", "path": path, "raw_data": raw, "full": full}


def _labels(path, name, data, *, offset, resolution=VOXEL) -> str:
    with h5py.File(path, "a") as f:
        f[name] = data
        f[name].attrs.update(resolution=resolution, offset=offset)
    return f"{path}:/{name}"


def _config(layout, **volume) -> dict:
    config = em_config({"raw": layout["raw"], "labels": layout["labels"]}, iterations=2, validate_every=2)
    for pair in config["data"]["train"] + config["data"]["validation"]:
        pair.update(volume)
    return config


def _dataset(layout, *, roi=None, input_shape=(12, 40, 40), output_shape=(4, 8, 8)) -> PatchDataset:
    cfg = load_config(_config(layout, **({"roi": roi} if roi else {})))
    volume = open_labelled(cfg.data.train[0], cfg, preload=True)
    return PatchDataset([volume], input_shape=input_shape, output_shape=output_shape, task=TaskConfig(),
                        augment_config=NO_AUGMENT, seed=0, zero_label="boundary", min_labelled=0.0)


def test_labels_are_placed_by_their_world_offset(layout):
    volume = _dataset(layout).volumes[0]
    assert volume.labels_roi == LABELLED and volume.sample_roi == LABELLED


def test_every_output_region_lies_inside_the_labels(layout):
    dataset = _dataset(layout)
    rng = np.random.default_rng(0)
    outputs = [dataset.output_roi(rng)[1] for _ in range(2000)]
    assert all(LABELLED.contains(o) for o in outputs)
    # and the draws reach every side of the labels, not only their middle
    begins, ends = np.array([o.begin for o in outputs]), np.array([o.end for o in outputs])
    assert tuple(begins.min(0)) == LABELLED.begin and tuple(ends.max(0)) == LABELLED.end


def test_the_input_reads_the_real_raw_around_the_labels(layout):
    dataset = _dataset(layout)
    volume, raw = dataset.volumes[0], layout["raw_data"]
    rng = np.random.default_rng(1)
    beyond = 0
    for _ in range(40):
        _, region, patch, labels, known = dataset.draw(rng)
        # the input leaves the labels but not the raw: every voxel is the raw's own, not mirrored
        assert Roi((0, 0, 0), RAW_SHAPE).contains(region)
        assert np.array_equal(patch, volume.normalize(raw[region.to_slices()]).astype(np.float32))
        beyond += not LABELLED.contains(region)
        # labels are the labels' own where known, and unknown outside them
        inside = region.intersect(LABELLED)
        assert known.sum() == inside.size
        assert np.array_equal(labels[inside.relative_to(region).to_slices()], layout["full"][inside.to_slices()])
    assert beyond == 40  # context 16 in y and x: every input reaches past the 48-voxel labels


def test_a_roi_in_world_units_restricts_the_sampled_region(layout):
    roi = {"offset": [200, 240, 280], "shape": [64, 128, 96]}  # nm: voxels (25, 30, 35) + (8, 16, 12)
    dataset = _dataset(layout, roi=roi)
    region = Roi((25, 30, 35), (8, 16, 12))
    assert dataset.volumes[0].sample_roi == region
    rng = np.random.default_rng(2)
    assert all(region.contains(dataset.output_roi(rng)[1]) for _ in range(500))
    _, input_region, _, _, known = dataset.draw(rng)
    assert known.sum() == input_region.intersect(region).size  # labels outside the roi are not learnt


def test_a_mask_with_its_own_offset_narrows_the_sampled_region(layout):
    mask = np.zeros((16, 32, 32), dtype=np.uint8)
    mask[:, :, 16:] = 1
    spec = _labels(layout["path"], "mask", mask, offset=(208.0, 160.0, 224.0))  # voxels (26, 20, 28)
    cfg = load_config(_config(layout, mask=spec))
    volume = open_labelled(cfg.data.train[0], cfg, preload=False)
    assert volume.mask_roi == Roi((26, 20, 28), (16, 32, 32))
    region = Roi((26, 24, 28), (16, 28, 32))  # the part of the mask over the labels
    assert volume.sample_roi == region
    dataset = PatchDataset([volume], input_shape=(12, 40, 40), output_shape=(4, 8, 8), task=TaskConfig(),
                           augment_config=NO_AUGMENT, seed=0, zero_label="boundary", min_labelled=0.0)
    rng = np.random.default_rng(3)
    assert all(region.contains(dataset.output_roi(rng)[1]) for _ in range(500))
    _, input_region, _, _, known = dataset.draw(rng)
    inside = input_region.intersect(region)
    kept = mask[inside.relative_to(volume.mask_roi).to_slices()] != 0
    assert np.array_equal(known[inside.relative_to(input_region).to_slices()], kept) and known.sum() == kept.sum()


def test_the_input_is_mirrored_only_where_it_leaves_the_raw(layout):
    spec = _labels(layout["path"], "corner", layout["full"][LABELLED.to_slices()], offset=(0.0, 0.0, 0.0))
    cfg = load_config(_config(layout, labels=spec))
    volume = open_labelled(cfg.data.train[0], cfg, preload=True)
    dataset = PatchDataset([volume], input_shape=(12, 40, 40), output_shape=(4, 8, 8), task=TaskConfig(),
                           augment_config=NO_AUGMENT, seed=0, zero_label="boundary", min_labelled=0.0)
    rng = np.random.default_rng(4)
    left = 0
    for _ in range(20):
        _, region, patch, _, _ = dataset.draw(rng)
        expected = read_mirrored(ArrayView(layout["raw_data"]), region)
        assert np.array_equal(patch, volume.normalize(expected).astype(np.float32))
        left += min(region.begin) < 0
    assert left > 0


def test_validation_scores_the_labelled_region_of_a_prediction_over_the_raw(tmp_path, layout, monkeypatch):
    cfg = load_config(_config(layout))
    volumes = [open_labelled(v, cfg, preload=False) for v in cfg.data.validation]

    # what predict writes, over the whole raw: right in the labelled region only (0 elsewhere),
    # so VI 0 needs the scores to be taken exactly there
    def perfect(checkpoint, raw, output, *, config, device):
        affs = seg_to_affinities(layout["full"])
        volume = create_volume(str(output), shape=affs.shape, dtype="float32", overwrite=True,
                               attrs={"task": {"kind": "affinities", "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]}})
        volume.write(None, affs)
        volume.finalize()

    monkeypatch.setattr(validate, "_predict", perfect)
    validator = validate.make_validator(cfg, volumes, tmp_path / "validation")
    assert validator(tmp_path / "unused.pt", torch.device("cpu"))["val_voi"] < 1e-3  # waterz leaves a few voxels
    volumes[0].labels_roi = Roi((0, 0, 0), LABELLED.shape)  # scored at index 0, as before issue 14
    assert validator(tmp_path / "unused.pt", torch.device("cpu"))["val_voi"] > 1


def test_semantic_validation_scores_the_labelled_region_too(tmp_path, layout, monkeypatch):
    classes = (layout["full"] % 3).astype(np.uint8)  # 0 outside the labels
    spec = _labels(layout["path"], "classes", classes[LABELLED.to_slices()], offset=(160.0, 192.0, 192.0))
    config = mri_config({"raw": layout["raw"], "labels": spec})
    config["task"]["num_classes"] = 3
    cfg = load_config(config)
    volumes = [open_labelled(v, cfg, preload=False) for v in cfg.data.validation]

    def perfect(checkpoint, raw, output, *, config, device):  # the classes over the whole raw
        volume = create_volume(f"{output}/labels", shape=classes.shape, dtype="uint8", overwrite=True)
        volume.write(None, np.where(np.arange(RAW_SHAPE[0])[:, None, None] < AT[0], 1, classes))
        volume.finalize()

    monkeypatch.setattr(validate, "_predict", perfect)
    figures = validate.make_validator(cfg, volumes, tmp_path / "validation")(tmp_path / "unused.pt", torch.device("cpu"))
    assert figures["val_dice"] == 1.0


def test_train_cli_runs_on_labels_inside_a_larger_raw(tmp_path, layout):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(layout)))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "trained to iteration 2" in result.stdout
    assert (run / "checkpoints" / "best.pt").is_file()
    # validation predicted over the whole raw (context for the labels) and scored the labels' region
    assert open_volume(str(run / "validation" / "0-affinities.zarr")).shape == (3, *RAW_SHAPE)
    with open(run / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    assert int(last["iteration"]) == 2 and float(last["val_voi"]) >= 0


def _refused(tmp_path, config) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "bad-run"
    result = runner.invoke(app, ["train", str(path), "--out", str(run), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not run.exists()
    return lines[0]


def test_layouts_that_cannot_be_placed_are_one_line_errors(tmp_path, layout):
    path, gt = layout["path"], layout["full"][LABELLED.to_slices()]
    cases = {
        # the offset (400, 800, 800) nm lies outside a 64x96x96 raw of 8 nm voxels
        _labels(path, "outside", gt, offset=(400.0, 800.0, 800.0)): ("is not inside raw", "y 800:1184", "z 0:512, y 0:768"),
        _labels(path, "coarse", gt, offset=(160.0, 192.0, 192.0), resolution=(8.0, 16.0, 16.0)):
            ("voxel size (8, 16, 16) but raw", "resample the labels"),
        _labels(path, "offgrid", gt, offset=(164.0, 192.0, 192.0)):  # refused as soon as it is read
            ("offset (164, 192, 192) that is not a multiple of its voxel size (8, 8, 8)",),
        _labels(path, "tiny", gt[:2, :6, :8], offset=(160.0, 192.0, 192.0)):
            ("(2x6x8 voxels) cannot hold one output patch of train.patch_shape 4x8x8",),
    }
    with h5py.File(path, "a") as f:  # no voxel size to place smaller labels by
        f["bare"] = gt
    cases[f"{path}:/bare"] = ("without a voxel size in the metadata of the labels",)
    for labels, words in cases.items():
        message = _refused(tmp_path, _config(layout, labels=labels))
        assert all(w in message for w in words), message
    masks = {
        _labels(path, "far-mask", np.ones((8, 8, 8), np.uint8), offset=(0.0, 0.0, 640.0)):
            ("does not overlap labels", "x 640:704"),
        _labels(path, "out-mask", np.ones((8, 8, 8), np.uint8), offset=(480.0, 0.0, 0.0)):
            ("mask", "(z 480:544, y 0:64, x 0:64) is not inside raw"),
        _labels(path, "fine-mask", np.ones((8, 8, 8), np.uint8), offset=(160.0, 192.0, 192.0),
                resolution=(8.0, 4.0, 4.0)): ("mask", "voxel size (8, 4, 4) but raw"),
    }
    for mask, words in masks.items():
        message = _refused(tmp_path, _config(layout, mask=mask))
        assert all(w in message for w in words), message


@pytest.mark.parametrize("roi, words", [
    ({"offset": [0, 0, 0], "shape": [64, 64, 64]}, ("is not inside labels", "z 160:352")),
    ({"offset": [164, 192, 192], "shape": [64, 64, 64]}, ("off the voxel grid",)),
    ({"offset": [160, 192, 192], "shape": [16, 64, 64]}, ("cannot hold one output patch",)),
    ({"offset": [160, 192, 192], "shape": [64, 64, 64], "unit": "nm"},
     ("'data.train.0.roi.unit' is not allowed", "allowed keys here: offset, shape")),
    ({"offset": [160, 192, 192], "shape": [0, 64, 64]}, ("roi shape must be positive",)),
], ids=["outside-labels", "off-grid", "too-small", "unknown-key", "empty"])
def test_bad_rois_are_one_line_errors(tmp_path, layout, roi, words):
    config = _config(layout)
    config["data"]["train"][0]["roi"] = roi
    message = _refused(tmp_path, config)
    assert all(w in message for w in words), message


def test_the_cremi_layout_end_to_end(tmp_path, layout):
    """Issue 14's layout through every stage: train samples inside the labels; ``predict --roi``
    over the labelled region gives an output placed at the labels' offset; evaluate reports the
    intersection of the world ROIs; the labels placed in a raw-sized volume score VI 0 against
    themselves."""
    import json

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_config(layout)))
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", str(config), "--out", str(run), "-q"]).exit_code == 0
    begin = [a * v for a, v in zip(AT, VOXEL)]
    end = [b + s * v for b, s, v in zip(begin, LABELLED.shape, VOXEL)]
    roi = ",".join(f"{b:g}:{e:g}" for b, e in zip(begin, end))  # 160:352,192:576,192:576 (nm)
    affs = tmp_path / "affs.zarr"
    result = runner.invoke(app, ["predict", str(run / "checkpoints" / "last.pt"), layout["raw"], str(affs),
                                 "--roi", roi, "-q"])
    assert result.exit_code == 0, result.output
    predicted = open_volume(str(affs))
    assert predicted.spatial_shape == tuple(LABELLED.shape) and predicted.offset == tuple(begin)
    seg = tmp_path / "seg.zarr"
    assert runner.invoke(app, ["segment", str(affs), str(seg), "-t", "0.5", "-q"]).exit_code == 0
    assert open_volume(str(seg)).offset == tuple(begin)
    result = runner.invoke(app, ["evaluate", str(seg), "--gt", layout["labels"], "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert "160:352" in result.output and "192:576" in result.output  # the intersection, in nm

    full = create_volume(tmp_path / "full.zarr", shape=RAW_SHAPE, dtype=np.uint64, voxel_size=VOXEL)
    full.write(None, layout["full"])
    full.finalize()
    result = runner.invoke(app, ["evaluate", str(tmp_path / "full.zarr"), "--gt", layout["labels"], "--json",
                                 str(tmp_path / "same.json")])
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "same.json").read_text())["rows"]
    assert row["voi_split"] == 0 and row["voi_merge"] == 0 and row["arand"] == 0, row
    assert (row["roi"]["begin"], row["roi"]["end"]) == (begin, end)
