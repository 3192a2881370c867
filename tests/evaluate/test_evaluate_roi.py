"""`psc-seg evaluate` on world ROIs: ground truth covering a crop of the prediction, placed by
its offset in nanometres (the CREMI / daisy layout), is scored on the intersection, which is
printed and reported; volumes that do not overlap or differ in voxel size are one-line errors."""

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.io import create_volume

runner = CliRunner()
VOXEL = (8, 8, 8)
# nm: voxels (20, 24, 24) of the prediction. (Issue 14 says (400, 800, 800) nm, which at 8 nm
# lies outside a 64 x 96 x 96 prediction: 800 nm is voxel 100 of 96.)
GT_OFFSET = (160, 192, 192)


def _labels(shape=(64, 96, 96)):
    """Boxes of 8 x 16 x 16 voxels, each its own id."""
    z, y, x = np.meshgrid(*map(np.arange, shape), indexing="ij")
    return ((z // 8) * 10000 + (y // 16) * 100 + x // 16 + 1).astype(np.uint64)


def _prediction(tmp_path, data, *, offset=(0, 0, 0), voxel_size=VOXEL, name="pred.zarr"):
    out = create_volume(tmp_path / name, shape=data.shape, dtype=data.dtype, voxel_size=voxel_size, offset=offset,
                        unit="nanometer")
    out.write(None, data)
    out.finalize()
    return str(tmp_path / name)


def _ground_truth(tmp_path, data, *, offset=GT_OFFSET, voxel_size=VOXEL, name="gt"):
    """An HDF5 dataset with gunpowder's attributes."""
    with h5py.File(tmp_path / "sample.hdf", "a") as f:
        ds = f.create_dataset(name, data=data)
        ds.attrs["resolution"], ds.attrs["offset"], ds.attrs["units"] = voxel_size, offset, ["nm"] * 3
    return f"{tmp_path}/sample.hdf:/{name}"


def _evaluate(*args):
    return runner.invoke(app, ["evaluate", *map(str, args), "-q"])


def test_ground_truth_inside_a_larger_prediction_is_scored_on_the_intersection(tmp_path):
    pred = _labels()
    pred_spec = _prediction(tmp_path, pred)
    crop = pred[20:44, 24:72, 24:72].copy()
    gt = _ground_truth(tmp_path, crop)
    report = tmp_path / "scores.json"
    result = _evaluate(pred_spec, "--gt", gt, "--json", report)
    assert result.exit_code == 0, result.output
    assert "scored on [z 160:352, y 192:576, x 192:576] nanometer" in result.output
    (row,) = json.loads(report.read_text())["rows"]
    assert row["voi"] == 0 and row["arand"] == 0
    assert row["roi"] == {"begin": [160, 192, 192], "end": [352, 576, 576], "shape": [192, 384, 384],
                          "unit": "nanometer"}
    # the same labels placed one section off are not the same segmentation: the offset is used
    shifted = _ground_truth(tmp_path, crop, offset=(168, 192, 192), name="shifted")
    result = _evaluate(pred_spec, "--gt", shifted, "--json", report)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["rows"][0]["voi"] > 0


def test_partial_overlap_and_a_mask_with_an_offset(tmp_path):
    """A prediction that covers only part of the ground truth, and a mask of its own region:
    all three are cut to what they share."""
    full = _labels()  # voxels 0:64, 0:96, 0:96
    gt = _ground_truth(tmp_path, _labels((80, 100, 100))[40:, 60:, 60:].copy(), offset=(320, 480, 480))
    pred_spec = _prediction(tmp_path, full)
    mask = create_volume(tmp_path / "mask.zarr", shape=(16, 32, 32), dtype=np.uint8, voxel_size=VOXEL,
                         offset=(400, 560, 560))
    mask.write(None, 1)
    mask.finalize()
    report = tmp_path / "r.json"
    result = _evaluate(pred_spec, "--gt", gt, "--mask", tmp_path / "mask.zarr", "--json", report)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(report.read_text())["rows"]
    assert row["voi"] == 0 and row["roi"]["begin"] == [400, 560, 560] and row["roi"]["end"] == [512, 768, 768]
    # a merge of two ground-truth objects inside the region is seen; it does not matter where
    merged = full.copy()
    merged[merged == full[55, 80, 80]] = full[55, 80, 70]
    other = _prediction(tmp_path, merged, name="merged.zarr")
    result = _evaluate(pred_spec, other, "--gt", gt, "--json", report)
    assert result.exit_code == 0, result.output
    rows = json.loads(report.read_text())["rows"]
    assert rows[0]["voi"] == 0 and rows[1]["voi_merge"] > 0 and rows[1]["voi_split"] == 0


@pytest.mark.parametrize("case, words", [
    ("disjoint", ["do not overlap", "[z 0:512, y 0:768, x 0:768] nanometer",
                  "[z 1024:1216, y 800:1184, x 800:1184] nanometer"]),
    ("voxel size", ["differ in voxel size", "(8, 8, 8)", "(40, 4, 4)", "[z 0:512, y 0:768, x 0:768] nanometer"]),
])
def test_no_common_region_or_another_voxel_size_is_one_line_naming_both(tmp_path, case, words):
    pred_spec = _prediction(tmp_path, _labels())
    crop = _labels()[:24, :48, :48]
    if case == "disjoint":
        gt = _ground_truth(tmp_path, crop, offset=(1024, 800, 800))
    else:
        gt = _ground_truth(tmp_path, crop, offset=(400, 800, 800), voxel_size=(40, 4, 4))
    result = _evaluate(pred_spec, "--gt", gt)
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error:") and all(w in line for w in words), line


def test_same_shape_same_place_is_scored_whole_as_before(tmp_path):
    data = _labels((8, 16, 16))
    pred_spec = _prediction(tmp_path, data, offset=GT_OFFSET)
    gt = _ground_truth(tmp_path, data)
    report = tmp_path / "r.json"
    result = _evaluate(pred_spec, "--gt", gt, "--json", report)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(report.read_text())["rows"]
    assert row["voi"] == 0 and row["roi"]["end"] == [224, 320, 320]


def test_volumes_off_each_others_voxel_grid_are_one_line(tmp_path):
    """NIfTI origins may lie anywhere; two scans half a voxel apart share no voxel grid."""
    import nibabel as nib

    data = _labels((8, 16, 16)).astype(np.uint16).transpose(2, 1, 0)  # x, y, z
    for name, x0 in (("pred.nii.gz", 0.0), ("gt.nii.gz", 0.5)):
        affine = np.eye(4)
        affine[0, 3] = x0
        nib.save(nib.Nifti1Image(data[2:] if name == "gt.nii.gz" else data, affine), tmp_path / name)
    result = _evaluate(tmp_path / "pred.nii.gz", "--gt", tmp_path / "gt.nii.gz")
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error:") and "do not share a voxel grid" in line and "[z 0:8, y 0:16, x 0:16]" in line
