"""psc_seg.io: open/create volumes in every format, metadata, errors, normalisation, `info`."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile
import zarr
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.errors import UserError
from psc_seg.io import create_volume, normalize, open_volume, parse_spec, resolve_normalization, sample_values

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
RNG = np.random.default_rng(0)


def _blob(shape=(6, 7, 8), dtype=np.float32):
    return RNG.random(shape).astype(dtype)


def test_parse_spec_forms():
    assert parse_spec("a/vol.zarr/g/raw").format == "zarr"
    assert parse_spec("a/vol.zarr/g/raw").path == Path("a/vol.zarr")
    assert parse_spec("a/vol.zarr/g/raw").inner == "g/raw"
    assert parse_spec("vol.zarr:/g/raw").inner == "g/raw"
    s = parse_spec("d/f.hdf5:/volumes/raw")
    assert (s.format, s.path, s.inner) == ("hdf5", Path("d/f.hdf5"), "volumes/raw")
    assert parse_spec("scan.nii.gz").format == "nifti"
    assert parse_spec("x.TIF").format == "tiff"
    with pytest.raises(UserError, match="unsupported volume 'x.png'"):
        parse_spec("x.png")


@pytest.mark.parametrize("spec", ["out.zarr", "out.zarr/pred/affs", "out.h5:/pred/affs", "out.nii.gz", "out.tif",
                                  "out.npy"])
def test_roundtrip_each_format(tmp_path, spec):
    data = _blob((2, 6, 7, 8))
    vol = create_volume(tmp_path / spec if ":" not in spec else f"{tmp_path}/{spec}", shape=data.shape,
                        dtype="float32", chunks=(3, 4, 4), voxel_size=(40, 4, 4), offset=(80, 8, 0),
                        unit="nanometer")
    assert not vol.complete
    vol.write((slice(0, 3), slice(0, 7), slice(0, 8)), data[:, :3])
    vol[:, 3:6] = data[:, 3:]
    vol.finalize()
    back = open_volume(f"{tmp_path}/{spec}")
    assert back.shape == (2, 6, 7, 8) and back.channels == 2 and back.spatial_shape == (6, 7, 8)
    assert back.complete
    np.testing.assert_array_equal(back.read(), data)
    np.testing.assert_array_equal(back.read((slice(1, 4), slice(2, 5), slice(0, 8))), data[:, 1:4, 2:5])
    if back.format in ("zarr", "hdf5"):
        assert back.voxel_size == (40, 4, 4) and back.offset == (80, 8, 0)
        assert back.chunks == (2, 3, 4, 4)
        assert back.attrs["psc_seg"]["provenance"]["psc_seg_version"]
    if back.format == "nifti":
        assert back.voxel_size == (40, 4, 4)


def test_zarr_output_is_ome_zarr_05(tmp_path):
    vol = create_volume(tmp_path / "o.zarr", shape=(3, 4, 5, 6), dtype="uint8", voxel_size=(8, 4, 2),
                        offset=(16, 0, 2), unit="nanometer")
    meta = json.loads((tmp_path / "o.zarr" / "zarr.json").read_text())
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["axes"][1] == {"name": "z", "type": "space", "unit": "nanometer"}
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1, 8, 4, 2]
    arr = zarr.open_array(str(tmp_path / "o.zarr" / "0"))
    assert arr.metadata.dimension_names == ("c", "z", "y", "x")
    assert arr.metadata.zarr_format == 3 and arr.compressors  # compressed
    assert not vol.complete and meta["attributes"]["psc_seg"]["complete"] is False


def test_read_zarr_v2_ome_04_and_plain_arrays(tmp_path):
    root = zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
    img = root.create_group("img")
    data = _blob((5, 6, 7))
    img.create_array("s0", shape=data.shape, dtype="float32", chunks=(5, 3, 3))[:] = data
    img.attrs["multiscales"] = [{
        "version": "0.4", "axes": [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"],
        "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [40, 4, 4]}, {"type": "translation", "translation": [40, 8, 8]}]}],
    }]
    raw = root.create_array("raw", shape=data.shape, dtype="float32")
    raw[:] = data
    raw.attrs.update({"resolution": [30, 6, 6], "offset": [30, 12, 6]})
    vol = open_volume(tmp_path / "v2.zarr" / "img")
    assert vol.voxel_size == (40, 4, 4) and vol.offset == (40, 8, 8) and vol.unit == "nanometer"
    np.testing.assert_array_equal(vol[1:3], data[1:3])
    plain = open_volume(f"{tmp_path}/v2.zarr:/raw")
    assert plain.voxel_size == (30, 6, 6) and plain.offset == (30, 12, 6)
    # a new output inside a v2 container stays v2, with OME 0.4 metadata
    create_volume(tmp_path / "v2.zarr" / "out", shape=(5, 6, 7), dtype="uint8").finalize()
    assert zarr.open_group(str(tmp_path / "v2.zarr" / "out")).attrs["multiscales"][0]["version"] == "0.4"


def test_nifti_axes_are_zyx_and_affine_is_copied(tmp_path):
    xyz = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # stored (x, y, z)
    affine = np.array([[0, 0, 2.0, -10], [0, 1.5, 0, 5], [1.0, 0, 0, 3], [0, 0, 0, 1]])
    img = nib.Nifti1Image(xyz, affine)
    img.header.set_zooms((1.0, 1.5, 2.0))
    img.header.set_xyzt_units("mm")
    nib.save(img, tmp_path / "scan.nii.gz")
    vol = open_volume(tmp_path / "scan.nii.gz")
    assert vol.shape == (6, 5, 4) and vol.voxel_size == (2.0, 1.5, 1.0) and vol.unit == "millimeter"
    np.testing.assert_array_equal(vol.read(), xyz.transpose(2, 1, 0))
    np.testing.assert_array_equal(vol[(slice(1, 3), 2, slice(None))], xyz[:, 2, 1:3].T)
    out = create_volume(tmp_path / "labels.nii.gz", shape=vol.shape, dtype="uint8", reference=vol)
    out.write(None, (vol.read() % 3).astype(np.uint8))
    assert not (tmp_path / "labels.nii.gz").exists()  # nothing complete-looking before finalize
    with pytest.raises(UserError, match="is unfinished"):
        open_volume(tmp_path / "labels.nii.gz")
    out.finalize()
    written = nib.load(tmp_path / "labels.nii.gz")
    np.testing.assert_allclose(written.affine, affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), xyz % 3)
    assert not list(tmp_path.glob("*.partial*"))


def test_hdf5_single_dataset_and_real_data(tmp_path):
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f.create_dataset("deep/stack", data=np.ones((3, 4, 5), np.uint16))
    assert open_volume(tmp_path / "one.h5").shape == (3, 4, 5)
    gala = DATA / "gala" / "train-image.h5"
    if not gala.exists():
        pytest.skip("shared data absent")
    vol = open_volume(f"{gala}:/stack")
    assert vol.shape == (50, 100, 200) and vol.dtype == np.uint8
    with h5py.File(gala) as f:
        np.testing.assert_array_equal(vol[10:12, 5:9, 100:150], f["stack"][10:12, 5:9, 100:150])


def test_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_volume(tmp_path / "missing.zarr")
    with pytest.raises(UserError, match="does not exist"):
        open_volume(f"{tmp_path}/missing.h5:/raw")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("raw", data=np.zeros((2, 3, 4)))
        f.create_dataset("labels", data=np.zeros((2, 3, 4)))
        f.create_dataset("flat", data=np.zeros((3, 4)))
        f.create_dataset("five", data=np.zeros((1, 1, 2, 3, 4)))
    with pytest.raises(UserError, match=r"no dataset '/gt' in .*it holds: /five, /flat, /labels, /raw"):
        open_volume(f"{tmp_path}/f.h5:/gt")
    with pytest.raises(UserError, match="name a dataset"):
        open_volume(tmp_path / "f.h5")
    with pytest.raises(UserError, match=r"is 2D \(shape \(3, 4\)\)"):
        open_volume(f"{tmp_path}/f.h5:/flat")
    with pytest.raises(UserError, match="is 5D"):
        open_volume(f"{tmp_path}/f.h5:/five")
    create_volume(tmp_path / "o.zarr/a", shape=(2, 3, 4), dtype="uint8").finalize()
    with pytest.raises(UserError, match=r"no 'b' in zarr container .*it holds: a/, a/0"):
        open_volume(tmp_path / "o.zarr/b")
    with pytest.raises(UserError, match="already exists; pass overwrite"):
        create_volume(tmp_path / "o.zarr/a", shape=(2, 3, 4), dtype="uint8")
    again = create_volume(tmp_path / "o.zarr/a", shape=(4, 3, 4), dtype="uint8", overwrite=True)
    assert again.shape == (4, 3, 4) and not again.complete
    with pytest.raises(UserError, match="unsupported volume"):
        open_volume(tmp_path / "x.mrc")
    for msg in ("does not exist", "no dataset", "is 2D"):
        assert "\n" not in msg


def test_tiff_and_npy_read(tmp_path):
    data = (np.arange(60).reshape(3, 4, 5) % 7).astype(np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", data, photometric="minisblack")
    np.save(tmp_path / "s.npy", data)
    for name in ("s.tif", "s.npy"):
        vol = open_volume(tmp_path / name)
        np.testing.assert_array_equal(vol[1:3, :, 2:4], data[1:3, :, 2:4])


def test_normalisation_from_a_sample(tmp_path):
    data = RNG.normal(100.0, 10.0, size=(40, 40, 40)).astype(np.float32)
    vol = create_volume(tmp_path / "r.zarr", shape=data.shape, dtype="float32")
    vol.write(None, data)
    spec = resolve_normalization({"kind": "zscore"}, vol)
    assert spec["mean"] == pytest.approx(data.mean(), abs=1e-3) and spec["std"] == pytest.approx(data.std(), rel=1e-4)
    # a sample of random crops when the volume is larger than the sample budget
    sample = sample_values(vol, max_voxels=8000, cube=10)
    assert sample.size == 8000 and abs(sample.mean() - 100) < 1.0
    z = normalize(data, spec)
    assert z.dtype == np.float32 and abs(float(z.mean())) < 1e-3
    p = resolve_normalization({"kind": "percentile", "low": 1, "high": 99}, vol)
    assert p["low_value"] == pytest.approx(np.percentile(data, 1), rel=1e-4)
    scaled = normalize(data, p)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    np.testing.assert_allclose(normalize(np.array([0, 255], np.uint8), {"kind": "uint8"}), [0.0, 1.0])
    assert resolve_normalization(None, vol)["kind"] == "zscore"
    with pytest.raises(UserError, match="constant"):
        resolve_normalization({"kind": "zscore"}, open_volume(_const(tmp_path)))
    with pytest.raises(UserError, match="NaN"):
        bad = data.copy()
        bad[3, 3, 3] = np.nan
        np.save(tmp_path / "nan.npy", bad)
        resolve_normalization({"kind": "zscore"}, open_volume(tmp_path / "nan.npy"))


def _const(tmp_path):
    np.save(tmp_path / "c.npy", np.full((4, 4, 4), 3.0))
    return tmp_path / "c.npy"


def test_info_cli(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    vol = create_volume(tmp_path / "i.zarr", shape=data.shape, dtype="uint8", voxel_size=(40, 4, 4), unit="nanometer")
    vol.write(None, data)
    runner = CliRunner()
    res = runner.invoke(app, ["info", str(tmp_path / "i.zarr")])
    assert res.exit_code == 0, res.output
    assert "(2, 3, 4)" in res.output and "min 0  max 23" in res.output and "NO (unfinished output)" in res.output
    vol.finalize()
    res = runner.invoke(app, ["info", str(tmp_path / "i.zarr"), "--json"])
    info = json.loads(res.output)
    assert info["voxel_size"] == [40, 4, 4] and info["complete"] is True and info["sample"]["max"] == 23
    res = runner.invoke(app, ["info", str(tmp_path / "nope.h5:/raw")])
    assert res.exit_code == 2 and "error:" in res.output and "does not exist" in res.output


def test_ome_zarr_tczyx_with_singleton_time_and_channel(tmp_path):
    root = zarr.open_group(str(tmp_path / "tczyx.zarr"), mode="w", zarr_format=2)
    data = _blob((1, 1, 4, 5, 6))
    root.create_array("0", shape=data.shape, dtype="float32", chunks=(1, 1, 2, 5, 6))[:] = data
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1, 1, 0.5, 0.25, 0.25]}]}]}]
    vol = open_volume(tmp_path / "tczyx.zarr")
    assert vol.shape == (4, 5, 6) and vol.channels is None and vol.chunks == (2, 5, 6)
    assert vol.voxel_size == (0.5, 0.25, 0.25) and vol.unit == "micrometer"
    np.testing.assert_array_equal(vol[1:3, :, 2:], data[0, 0, 1:3, :, 2:])


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_zarr_codecs_blosc_for_floats_zstd_for_labels(tmp_path, zarr_format):
    if zarr_format == 2:
        zarr.open_group(str(tmp_path / "c.zarr"), mode="w", zarr_format=2)
        affs_spec, labels_spec = tmp_path / "c.zarr" / "affs", tmp_path / "c.zarr" / "labels"
    else:
        affs_spec, labels_spec = tmp_path / "affs.zarr", tmp_path / "labels.zarr"
    data = np.random.default_rng(0).random((3, 8, 8, 8)).astype(np.float32)
    affs = create_volume(affs_spec, shape=data.shape, dtype="float32")
    affs.write(None, data)
    affs.finalize()
    labels = create_volume(labels_spec, shape=(8, 8, 8), dtype="uint64")
    labels.write(None, np.arange(512, dtype=np.uint64).reshape(8, 8, 8))
    labels.finalize()
    np.testing.assert_array_equal(open_volume(affs_spec).read(), data)
    codecs = [str(zarr.open_array(str(affs_spec / "0")).compressors), str(zarr.open_array(str(labels_spec / "0")).compressors)]
    assert "lz4" in codecs[0].lower() and "shuffle" in codecs[0].lower()
    assert "zstd" in codecs[1].lower()


def test_nifti_outputs_describe_themselves_not_their_reference(tmp_path):
    """A label map predicted from a T1 is not a T1: its own description and NIFTI_INTENT_LABEL."""
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))
    img.header["descrip"] = b"T1 MPRAGE"
    img.header.set_intent("estimate", name="t1w")
    nib.save(img, tmp_path / "t1.nii.gz")
    t1 = open_volume(tmp_path / "t1.nii.gz")
    assert "task" not in t1.attrs
    task = {"task": {"kind": "semantic", "num_classes": 3}}
    written = {}
    for name, dtype, attrs in [("classes", "uint8", task), ("probabilities", "float32", task),
                               ("segments", "uint64", {})]:
        shape = (3, *t1.shape) if name == "probabilities" else t1.shape
        out = create_volume(tmp_path / f"{name}.nii.gz", shape=shape, dtype=dtype, reference=t1, attrs=attrs)
        out.finalize()
        header = nib.load(tmp_path / f"{name}.nii.gz").header
        written[name] = (header["descrip"].item().decode(), header.get_intent()[0], header.get_intent()[2])
    assert written == {
        "classes": ("psc-seg class labels", "label", "psc-seg classes"),
        "probabilities": ("psc-seg class probabilities", "none", ""),
        "segments": ("psc-seg segmentation", "label", "psc-seg segments"),
    }
    # read back, a class map says it holds classes, as zarr and HDF5 outputs do in their attributes
    assert open_volume(tmp_path / "classes.nii.gz").attrs["task"]["kind"] == "semantic"
    assert "task" not in open_volume(tmp_path / "segments.nii.gz").attrs


def test_nifti_outputs_keep_the_spatial_unit(tmp_path):
    """A NIfTI written without a reference says its unit, so it reads back with a voxel size."""
    out = create_volume(tmp_path / "phantom.nii.gz", shape=(4, 5, 6), dtype="float32", voxel_size=(1, 1, 1),
                        unit="millimeter")
    out.finalize()
    back = open_volume(tmp_path / "phantom.nii.gz")
    assert back.unit == "millimeter" and back.has_voxel_size


def test_the_level0_array_of_an_image_is_that_image(tmp_path):
    """``out.zarr/0`` carries the image group's metadata: an unfinished output named by its array
    is still unfinished, with its task and voxel size."""
    out = create_volume(tmp_path / "affs.zarr", shape=(3, 4, 5, 6), dtype="float32", voxel_size=(40, 4, 4),
                        unit="nanometer", attrs={"task": {"kind": "affinities"}})
    out.write(None, np.ones((3, 4, 5, 6), np.float32))
    for spec in (tmp_path / "affs.zarr", f"{tmp_path / 'affs.zarr'}/0"):
        vol = open_volume(spec)
        assert not vol.complete and vol.attrs["task"] == {"kind": "affinities"} and vol.voxel_size == (40, 4, 4)
    out.finalize()
    assert open_volume(f"{tmp_path / 'affs.zarr'}/0").complete
    np.testing.assert_array_equal(open_volume(f"{tmp_path / 'affs.zarr'}/0").read(), 1)
