"""`psc-seg evaluate` through CliRunner: real gala volumes, JSON schema, one-line errors."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from skimage.metrics import adapted_rand_error as sk_arand
from skimage.metrics import variation_of_information as sk_vi
from typer.testing import CliRunner

from psc_seg.cli.main import app

GALA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gala"
runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.skipif(not (GALA / "train-gt.lzf.h5").exists(), reason="shared gala data not present")
def test_gala_watershed_against_ground_truth_gives_skimage_numbers(tmp_path):
    ws, gt = GALA / "train-ws.lzf.h5", GALA / "train-gt.lzf.h5"
    report = tmp_path / "scores.json"
    result = _run("evaluate", f"{ws}:/stack", "--gt", f"{gt}:/stack", "--json", report, "--quiet")
    assert result.exit_code == 0, result.output
    assert "voi_split" in result.output
    data = json.loads(report.read_text())
    (row,) = data["rows"]
    assert set(data["conventions"]) >= {"voi_units", "ignored", "arand"}
    with h5py.File(ws) as f:
        pred = f["stack"][:]
    with h5py.File(gt) as f:
        truth = f["stack"][:]
    split, merge = sk_vi(truth, pred, ignore_labels=[0])
    assert row["voi_split"] == pytest.approx(split, abs=1e-6)
    assert row["voi_merge"] == pytest.approx(merge, abs=1e-6)
    assert row["voi"] == pytest.approx(split + merge, abs=1e-6)
    assert row["arand"] == pytest.approx(sk_arand(truth, pred, ignore_labels=[0])[0], abs=1e-6)
    assert row["n_segments"] == len(np.unique(pred[pred != 0]))


def _npy(path, array):
    np.save(path, array)
    return path


def test_several_predictions_mask_and_semantic(tmp_path):
    gt = np.zeros((2, 4, 4), dtype=np.uint8)
    gt[:, :, :2], gt[:, :, 2:] = 1, 2
    perfect = _npy(tmp_path / "perfect.npy", gt.astype(np.uint64) + 10)
    merged = _npy(tmp_path / "merged.npy", np.ones_like(gt, dtype=np.uint64))
    gt_path = _npy(tmp_path / "gt.npy", gt)
    report = tmp_path / "r.json"
    result = _run("evaluate", perfect, merged, "--gt", gt_path, "--json", report, "--quiet")
    assert result.exit_code == 0, result.output
    rows = json.loads(report.read_text())["rows"]
    assert [r["prediction"] for r in rows] == [str(perfect), str(merged)]
    assert rows[0]["voi"] == 0 and rows[1]["voi_merge"] == pytest.approx(1.0) and rows[1]["voi_split"] == 0
    # a mask over the left half only: the merge is no longer visible
    mask = _npy(tmp_path / "mask.npy", (np.arange(4) < 2)[None, None, :].repeat(2, 0).repeat(4, 1).astype(np.uint8))
    result = _run("evaluate", merged, "--gt", gt_path, "--mask", mask, "--json", report, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["rows"][0]["voi"] == 0
    # semantic: class 2 predicted as 1 everywhere
    result = _run("evaluate", merged, "--gt", gt_path, "--semantic", "--json", report, "--quiet")
    assert result.exit_code == 0, result.output
    row = json.loads(report.read_text())["rows"][0]
    assert row["dice"] == {"1": pytest.approx(2 * 16 / (16 + 32)), "2": 0.0}
    assert row["mean_dice"] == pytest.approx((2 / 3) / 2)


@pytest.mark.parametrize(
    "pred, gt, message",
    [
        (np.ones((2, 2, 2), np.uint64), np.ones((2, 2, 3), np.uint64), "shape"),
        (np.ones((2, 2, 2), np.float32), np.ones((2, 2, 2), np.uint64), "float32"),
        (np.ones((2, 2, 2), np.uint64), np.zeros((2, 2, 2), np.uint64), "no labelled voxels"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, pred, gt, message):
    result = _run("evaluate", _npy(tmp_path / "p.npy", pred), "--gt", _npy(tmp_path / "g.npy", gt), "--quiet")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_ground_truth_is_named_and_the_positional_form_shows_the_new_one(tmp_path):
    gt = np.ones((2, 4, 4), np.uint64)
    gt[:, :, 2:] = 2
    pred_path, gt_path = _npy(tmp_path / "p.npy", np.ones_like(gt)), _npy(tmp_path / "g.npy", gt)
    result = _run("evaluate", pred_path, gt_path, "-q")  # the old form: the last positional was the ground truth
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error:") and f"psc-seg evaluate {pred_path} --gt {gt_path}" in line
    # named, the order is unambiguous: a merge of the two objects is a merge, not a split
    report = tmp_path / "r.json"
    result = _run("evaluate", pred_path, "--gt", gt_path, "-q", "--json", report)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(report.read_text())["rows"]
    assert row["voi_merge"] == pytest.approx(1.0) and row["voi_split"] == 0


def test_a_class_map_needs_semantic(tmp_path):
    from psc_seg.io import create_volume

    classes = np.zeros((2, 4, 4), np.uint8)
    classes[:, :, 2:] = 1
    out = create_volume(str(tmp_path / "pred.zarr" / "labels"), shape=classes.shape, dtype=np.uint8,
                        attrs={"task": {"kind": "semantic", "num_classes": 2}})
    out.write((slice(None),) * 3, classes)
    out.finalize()
    gt_path = _npy(tmp_path / "g.npy", classes)
    result = _run("evaluate", tmp_path / "pred.zarr" / "labels", "--gt", gt_path, "-q")
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "class map" in line and "--semantic" in line
    result = _run("evaluate", tmp_path / "pred.zarr" / "labels", "--gt", gt_path, "--semantic", "-q")
    assert result.exit_code == 0, result.output


def test_a_report_never_replaces_what_the_user_has(tmp_path):
    gt = np.ones((2, 4, 4), np.uint64)
    pred_path, gt_path = _npy(tmp_path / "p.npy", gt), _npy(tmp_path / "g.npy", gt)
    (tmp_path / "model.pt").write_bytes(b"weights")
    (tmp_path / "folder").mkdir()
    for target, message in [(gt_path, "lies in the input"), (tmp_path / "model.pt", "not an evaluate report"),
                            (tmp_path / "folder", "is a folder"), (tmp_path / "no" / "r.json", "does not exist")]:
        result = _run("evaluate", pred_path, "--gt", gt_path, "--json", target, "-q")
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()
        assert line.startswith("error: --json") and message in line
    assert (tmp_path / "model.pt").read_bytes() == b"weights" and np.load(gt_path).sum() == gt.sum()
    report = tmp_path / "r.json"
    for _ in range(2):  # an earlier report is replaced
        assert _run("evaluate", pred_path, "--gt", gt_path, "--json", report, "-q").exit_code == 0
