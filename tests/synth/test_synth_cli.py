"""``psc-seg synth em|mri`` through CliRunner: real zarr / HDF5 / NIfTI files read back."""

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.io import open_volume
from psc_seg.synth import em_volume, mri_volume

runner = CliRunner()
EM_SHAPE = ("16", "32", "32")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("name, fmt, spec", [("em.zarr", "zarr", "{out}/{name}"), ("em.h5", "hdf5", "{out}:/{name}"),
                                             ("plain", "zarr", "{out}.zarr/{name}")])
def test_synth_em_writes_readable_volumes(tmp_path, name, fmt, spec):
    out = tmp_path / name
    result = run("synth", "em", out, "--shape", *EM_SHAPE, "--seed", 4)
    assert result.exit_code == 0, result.output
    assert f"({fmt})" in result.output
    expected = em_volume((16, 32, 32), seed=4)
    for array, want in (("raw", expected["raw"]), ("labels", expected["labels"]), ("mask", expected["mask"])):
        volume = open_volume(spec.format(out=out, name=array))
        assert volume.format == fmt
        assert volume.complete
        assert volume.shape == (16, 32, 32)
        assert volume.voxel_size == (8.0, 8.0, 8.0)
        assert volume.unit == "nanometer"
        data = volume.read()
        assert data.dtype == (np.uint8 if array != "labels" else np.uint64)
        np.testing.assert_array_equal(data, want.astype(data.dtype))
    assert open_volume(spec.format(out=out, name="raw")).attrs["psc_seg"]["provenance"]["synth"]["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []  # renamed when complete


def test_synth_em_refuses_to_overwrite(tmp_path):
    out = tmp_path / "em.zarr"
    assert run("synth", "em", out, "--shape", *EM_SHAPE).exit_code == 0
    before = open_volume(f"{out}/raw").read()
    result = run("synth", "em", out, "--shape", *EM_SHAPE, "--seed", 1)
    assert result.exit_code == 2
    assert "exists; pass --overwrite" in result.output
    np.testing.assert_array_equal(open_volume(f"{out}/raw").read(), before)
    result = run("synth", "em", out, "--shape", *EM_SHAPE, "--seed", 1, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not np.array_equal(open_volume(f"{out}/raw").read(), before)


def test_synth_em_options(tmp_path):
    out = tmp_path / "em.h5"
    result = run("synth", "em", out, "--shape", *EM_SHAPE, "--cell-size", 8, "--noise", 0, "--zero-membranes")
    assert result.exit_code == 0, result.output
    expected = em_volume((16, 32, 32), seed=0, cell_size=8, noise=0, zero_membranes=True)
    np.testing.assert_array_equal(open_volume(f"{out}:/labels").read(), expected["labels"])
    np.testing.assert_array_equal(open_volume(f"{out}:/raw").read(), expected["raw"])


def test_synth_em_bad_input(tmp_path):
    result = run("synth", "em", tmp_path / "em.tif", "--shape", *EM_SHAPE)
    assert result.exit_code == 2 and "error: " in result.output and ".zarr or .h5" in result.output
    result = run("synth", "em", tmp_path / "em.zarr", "--shape", "2", "32", "32")
    assert result.exit_code == 2 and ">= 8" in result.output
    assert not (tmp_path / "em.zarr").exists()


def test_synth_mri_writes_nifti(tmp_path):
    out = tmp_path / "mri"
    result = run("synth", "mri", out, "--shape", 32, 32, 32, "--seed", 2)
    assert result.exit_code == 0, result.output
    expected = mri_volume((32, 32, 32), seed=2)
    raw_img = nib.load(out / "raw.nii.gz")
    labels_img = nib.load(out / "labels.nii.gz")
    for img in (raw_img, labels_img):
        np.testing.assert_array_equal(img.affine, np.eye(4))
        assert img.header.get_zooms()[:3] == (1.0, 1.0, 1.0)
    # NIfTI stores (x, y, z); the arrays are (z, y, x)
    np.testing.assert_array_equal(np.asarray(raw_img.dataobj).transpose(2, 1, 0), expected["raw"])
    np.testing.assert_array_equal(np.asarray(labels_img.dataobj).transpose(2, 1, 0), expected["labels"])
    assert labels_img.get_data_dtype() == np.uint8
    raw = open_volume(out / "raw.nii.gz")
    assert raw.shape == (32, 32, 32) and raw.voxel_size == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(raw.read(), expected["raw"])


def test_synth_mri_refuses_to_overwrite(tmp_path):
    out = tmp_path / "mri"
    assert run("synth", "mri", out, "--shape", 32, 32, 32).exit_code == 0
    result = run("synth", "mri", out, "--shape", 32, 32, 32)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert run("synth", "mri", out, "--shape", 32, 32, 32, "--seed", 1, "--overwrite").exit_code == 0
    np.testing.assert_array_equal(open_volume(out / "labels.nii.gz").read(), mri_volume((32, 32, 32), seed=1)["labels"])


@pytest.mark.parametrize("command", [["synth"], ["synth", "em"], ["synth", "mri"]])
def test_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_interrupted_synth_em_leaves_no_output(tmp_path, monkeypatch):
    import psc_seg.pipelines.synth as pipeline

    real_write = pipeline._write

    def failing_write(spec, data, **kwargs):
        if spec.endswith("labels"):
            raise KeyboardInterrupt
        real_write(spec, data, **kwargs)

    monkeypatch.setattr(pipeline, "_write", failing_write)
    out = tmp_path / "em.zarr"
    with pytest.raises(KeyboardInterrupt):
        pipeline.synth_em(out, shape=(16, 32, 32))
    assert not out.exists()
    monkeypatch.setattr(pipeline, "_write", real_write)
    pipeline.synth_em(out, shape=(16, 32, 32))  # the leftover partial container is replaced
    assert open_volume(f"{out}/labels").complete
    assert [p.name for p in tmp_path.iterdir()] == ["em.zarr"]
