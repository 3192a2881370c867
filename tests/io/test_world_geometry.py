"""World geometry of volumes: voxel size, offset and ROI from every format's metadata (funlib /
daisy attributes, OME-Zarr, HDF5, the NIfTI affine), offsets off the voxel grid refused, and
a rotated NIfTI affine carried through predict into NIfTI and zarr outputs."""

from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.errors import UserError
from psc_seg.io import create_volume, open_volume
from psc_seg.io.geometry import WorldRoi, moved_affine
from tests.pipelines.conftest import tiny_checkpoint

# a rotation of 30 degrees about z, then a shear: no axis of the voxel grid is a world axis
ROTATED = np.array([[0.866 * 2, -0.5 * 2, 0.1, -40.5],
                    [0.5 * 2, 0.866 * 2, 0.0, 12.25],
                    [0.0, 0.0, 2.0, 7.0],
                    [0.0, 0.0, 0.0, 1.0]])


def test_world_roi_intersection_and_text():
    a = WorldRoi((0, 0, 0), (512, 768, 768), "nanometer")
    b = WorldRoi((400, 800, 800), (192, 384, 384), "nanometer")
    assert a.intersect(b) == WorldRoi((400, 800, 800), (112, 0, 0), "nanometer")  # no y, x in common
    assert a.intersect(b).empty
    c = WorldRoi((0, 0, 0), (512, 1024, 1024), "nanometer").intersect(b)
    assert c.begin == (400, 800, 800) and c.end == (512, 1024, 1024) and not c.empty
    assert str(c) == "[z 400:512, y 800:1024, x 800:1024] nanometer"
    assert c.as_dict() == {"begin": [400, 800, 800], "end": [512, 1024, 1024], "shape": [112, 224, 224],
                           "unit": "nanometer"}


def test_funlib_attributes_on_a_zarr_array(tmp_path):
    """funlib_persistence: voxel size and offset over the spatial axes, channel axes marked
    ``^`` in ``axis_names``, a unit per spatial axis."""
    root = zarr.open_group(str(tmp_path / "c.zarr"), mode="w", zarr_format=2)
    affs = root.create_array("affs", shape=(3, 6, 8, 8), dtype="float32")
    affs.attrs.update({"voxel_size": [40, 4, 4], "offset": [400, 800, 800], "axis_names": ["c^", "z", "y", "x"],
                       "units": ["nm", "nm", "nm"]})
    vol = open_volume(tmp_path / "c.zarr" / "affs")
    assert vol.voxel_size == (40, 4, 4) and vol.offset == (400, 800, 800) and vol.unit == "nanometer"
    assert vol.roi == WorldRoi((400, 800, 800), (240, 32, 32), "nanometer")
    # daisy's older names; values over all axes are cut to the spatial ones
    labels = root.create_array("labels", shape=(6, 8, 8), dtype="uint64")
    labels.attrs.update({"resolution": [8, 8, 8], "offset": [16, 0, 24], "unit": "nm"})
    vol = open_volume(f"{tmp_path}/c.zarr/labels")
    assert vol.voxel_size == (8, 8, 8) and vol.offset == (16, 0, 24) and vol.roi.end == (64, 64, 88)


def test_hdf5_attributes_as_gunpowder_writes_them(tmp_path):
    with h5py.File(tmp_path / "sample.hdf", "w") as f:
        raw = f.create_dataset("volumes/raw", data=np.zeros((5, 6, 7), np.uint8))
        raw.attrs["resolution"] = (40.0, 4.0, 4.0)
        labels = f.create_dataset("volumes/labels/neuron_ids", data=np.zeros((2, 3, 4), np.uint64))
        labels.attrs["resolution"] = (40.0, 4.0, 4.0)
        labels.attrs["offset"] = (80.0, 8.0, 12.0)
        labels.attrs["units"] = ["nm", "nm", "nm"]
    raw = open_volume(f"{tmp_path}/sample.hdf:/volumes/raw")
    assert raw.offset == (0, 0, 0) and raw.roi.end == (200, 24, 28)
    labels = open_volume(f"{tmp_path}/sample.hdf:/volumes/labels/neuron_ids")
    assert labels.offset == (80, 8, 12) and labels.unit == "nanometer"
    assert labels.roi == raw.roi.intersect(labels.roi)  # inside the raw


def test_ome_zarr_translation_is_the_offset(tmp_path):
    out = create_volume(tmp_path / "o.zarr", shape=(4, 5, 6), dtype="uint8", voxel_size=(8, 4, 4),
                        offset=(16, 40, 4), unit="nanometer")
    out.finalize()
    assert open_volume(tmp_path / "o.zarr").roi == WorldRoi((16, 40, 4), (32, 20, 24), "nanometer")
    result = CliRunner().invoke(app, ["info", str(tmp_path / "o.zarr")])
    assert "roi         [z 16:48, y 40:60, x 4:28] nanometer" in result.output, result.output


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_an_offset_off_the_voxel_grid_is_one_line_naming_both(tmp_path, fmt):
    if fmt == "zarr":
        array = zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=(4, 4, 4), dtype="uint8", zarr_format=2)
        array.attrs.update({"resolution": [40, 4, 4], "offset": [400, 6, 8]})
        spec = str(tmp_path / "v.zarr")
    else:
        with h5py.File(tmp_path / "v.h5", "w") as f:
            ds = f.create_dataset("raw", data=np.zeros((4, 4, 4), np.uint8))
            ds.attrs["resolution"], ds.attrs["offset"] = (40, 4, 4), (400, 6, 8)
        spec = f"{tmp_path}/v.h5:/raw"
    with pytest.raises(UserError) as caught:
        open_volume(spec)
    message = str(caught.value)
    assert "\n" not in message and "(400, 6, 8)" in message and "(40, 4, 4)" in message and "axis y" in message
    result = CliRunner().invoke(app, ["info", spec])
    assert result.exit_code == 2 and result.output.startswith("error:") and "not a multiple" in result.output


def test_an_output_off_the_voxel_grid_is_refused_before_it_is_made(tmp_path):
    with pytest.raises(UserError, match=r"offset \(0, 0, 3\) that is not a multiple of its voxel size \(8, 8, 8\)"):
        create_volume(tmp_path / "o.zarr", shape=(4, 4, 4), dtype="uint8", voxel_size=(8, 8, 8), offset=(0, 0, 3))
    assert not (tmp_path / "o.zarr").exists()


def _nifti(path, affine, shape=(6, 5, 4)):
    """A NIfTI of ``shape`` (x, y, z) with ``affine``; values i + 10 j + 100 k."""
    i, j, k = np.meshgrid(*map(np.arange, shape), indexing="ij")
    img = nib.Nifti1Image((i + 10 * j + 100 * k).astype(np.uint8), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return path


def test_nifti_affine_gives_voxel_size_and_offset(tmp_path):
    affine = np.diag([1.5, 1.0, 2.0, 1.0])
    affine[:3, 3] = (-30.0, 12.0, 8.0)  # x, y, z; not on the voxel grid: MRI origins never are
    vol = open_volume(_nifti(tmp_path / "t1.nii.gz", affine))
    assert vol.voxel_size == (2.0, 1.0, 1.5) and vol.offset == (8.0, 12.0, -30.0) and vol.unit == "millimeter"
    assert vol.roi == WorldRoi((8, 12, -30), (8, 5, 9), "millimeter")
    rotated = open_volume(_nifti(tmp_path / "rot.nii.gz", ROTATED))
    assert rotated.offset == (7.0, 12.25, -40.5)
    np.testing.assert_allclose(rotated.affine, ROTATED)


def test_a_rotated_affine_travels_through_zarr_and_back_to_nifti(tmp_path):
    scan = open_volume(_nifti(tmp_path / "rot.nii.gz", ROTATED))
    # NIfTI -> zarr: the affine in the attributes
    out = create_volume(tmp_path / "p.zarr", shape=scan.shape, dtype="uint8", reference=scan)
    out.write(None, scan.read())
    out.finalize()
    meta = json.loads((tmp_path / "p.zarr" / "zarr.json").read_text())["attributes"]["psc_seg"]
    np.testing.assert_allclose(meta["affine"], ROTATED)
    zarr_volume = open_volume(tmp_path / "p.zarr")
    np.testing.assert_allclose(zarr_volume.affine, ROTATED)
    # zarr -> NIfTI: the affine back in the header, the voxels where they were
    back = create_volume(tmp_path / "back.nii.gz", shape=zarr_volume.shape, dtype="uint8", reference=zarr_volume)
    back.write(None, zarr_volume.read())
    back.finalize()
    img = nib.load(tmp_path / "back.nii.gz")
    np.testing.assert_allclose(img.affine, ROTATED, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(nib.load(tmp_path / "rot.nii.gz").dataobj))
    # an HDF5 output keeps it too
    h5 = create_volume(f"{tmp_path}/p.h5:/seg", shape=scan.shape, dtype="uint8", reference=scan)
    np.testing.assert_allclose(open_volume(h5.spec).affine, ROTATED)


def test_an_output_over_a_sub_region_moves_the_affine(tmp_path):
    scan = open_volume(_nifti(tmp_path / "rot.nii.gz", ROTATED))
    begin = (1, 2, 3)  # voxels z, y, x
    offset = tuple(o + b * v for o, b, v in zip(scan.offset, begin, scan.voxel_size))
    moved = moved_affine(scan.affine, voxel_size=scan.voxel_size, offset=scan.offset,
                         new_voxel_size=scan.voxel_size, new_offset=offset)
    np.testing.assert_allclose(moved[:3, :3], ROTATED[:3, :3])
    np.testing.assert_allclose(moved[:3, 3], ROTATED[:3, :3] @ (3, 2, 1) + ROTATED[:3, 3])
    # an axis-aligned NIfTI made from a zarr with an offset lands at that offset
    out = create_volume(tmp_path / "o.zarr", shape=(2, 3, 4), dtype="uint8", voxel_size=(8, 4, 4),
                        offset=(16, 8, 40), unit="nanometer")
    out.finalize()
    nifti = create_volume(tmp_path / "o.nii.gz", shape=(2, 3, 4), dtype="uint8", reference=open_volume(out.spec))
    nifti.finalize()
    np.testing.assert_allclose(nib.load(tmp_path / "o.nii.gz").affine[:3, 3], (40, 8, 16))


@pytest.mark.parametrize("output", ["pred.nii.gz", "pred.zarr"])
def test_a_rotated_nifti_round_trips_through_predict(tmp_path, output):
    """``psc-seg predict`` of a NIfTI with a rotated affine: a NIfTI output has the same
    affine; a zarr output holds it in ``psc_seg.affine``, and ``segment`` of that zarr makes a
    NIfTI with it again."""
    shape = (20, 20, 20)  # x, y, z
    img = nib.Nifti1Image(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8), ROTATED)
    nib.save(img, tmp_path / "scan.nii.gz")
    ckpt = tiny_checkpoint(tmp_path / "unet.pt", voxel_size=[2.0, 2.0, 2.0])
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(ckpt), str(tmp_path / "scan.nii.gz"), str(tmp_path / output),
                                 "--block-shape", "8", "8", "8", "--ignore-voxel-size", "--quiet"])
    assert result.exit_code == 0, result.output
    if output.endswith(".nii.gz"):
        np.testing.assert_allclose(nib.load(tmp_path / output).affine, ROTATED, atol=1e-5)
        return
    affs = open_volume(tmp_path / output)
    np.testing.assert_allclose(affs.attrs["psc_seg"]["affine"], ROTATED)
    result = runner.invoke(app, ["segment", str(tmp_path / output), str(tmp_path / "seg.nii.gz"), "--quiet"])
    assert result.exit_code == 0, result.output
    seg = nib.load(tmp_path / "seg.nii.gz")
    np.testing.assert_allclose(seg.affine, ROTATED, atol=1e-5)
    assert seg.shape == shape


def test_a_damaged_affine_is_not_carried_into_a_zarr_output(tmp_path):
    path = _nifti(tmp_path / "bad.nii", np.eye(4))
    with open(path, "r+b") as f:  # srow_x[3] (x translation) = NaN, as a damaged file holds it
        f.seek(280 + 12)
        f.write(np.float32(np.nan).tobytes())
    scan = open_volume(path)
    assert not np.isfinite(scan.affine).all() and scan.offset == (0.0, 0.0, 0.0)
    out = create_volume(tmp_path / "o.zarr", shape=scan.shape, dtype="uint8", reference=scan)
    out.finalize()
    back = open_volume(tmp_path / "o.zarr")
    assert back.affine is None and back.offset == (0, 0, 0)
