"""Inputs psc-seg cannot use as given (issue 13, "one line, not a traceback"): a NIfTI whose
affine is singular or not finite (refused when a NIfTI output would copy it, before any block is
computed, not when the output is assembled at the end), an empty volume (refused as such
wherever an input is opened), complex or bool raw data (refused with the reason), and a
``--block-shape`` larger than the volume (capped to it, with a note, instead of allocating the
oversized block)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.io import open_volume, volume_exists
from tests.pipelines.conftest import seeded_raw

from .test_read_faults import RAW, fails_in_one_line, train_args

runner = CliRunner()
OFFSETS = "[[-1, 0, 0], [0, -1, 0], [0, 0, -1]]"


@pytest.fixture
def unet(checkpoint):
    return str(checkpoint)


def _nifti(path: Path, data: np.ndarray, *, row: int, column: int, value: float) -> str:
    """``data`` (z, y, x[, c]) as an uncompressed NIfTI at 8 mm whose sform holds ``value`` at
    ``(row, column)``, as a damaged header would (nibabel refuses to write such an affine)."""
    image = nib.Nifti1Image(np.moveaxis(data, (-3, -2, -1), (2, 1, 0)) if data.ndim == 4 else data.T,
                            np.diag([8.0, 8.0, 8.0, 1.0]))
    image.set_qform(None, code=0)
    image.set_sform(np.diag([8.0, 8.0, 8.0, 1.0]), code=1)
    nib.save(image, path)
    with open(path, "r+b") as f:  # srow_x, srow_y, srow_z: 4 float32 each, from byte 280
        f.seek(280 + 16 * row + 4 * column)
        f.write(np.float32(value).tobytes())
    return str(path)


BAD_AFFINES = {"singular": (2, 2, 0.0, "a singular affine"), "nan": (0, 3, np.nan, "a non-finite affine"),
               "inf": (1, 1, np.inf, "a non-finite affine")}


@pytest.mark.parametrize("bad", list(BAD_AFFINES))
def test_a_nifti_with_a_bad_affine_is_refused_before_predict_computes_anything(tmp_path, unet, bad):
    row, column, value, words = BAD_AFFINES[bad]
    raw = _nifti(tmp_path / "scan.nii", RAW, row=row, column=column, value=value)
    out = tmp_path / "affs.nii.gz"
    fails_in_one_line(["predict", unet, raw, str(out), "-q"], f"NIfTI '{raw}' has {words}",
                      f"which the NIfTI output '{out}' would copy", "repair its sform / qform, or write a zarr output")
    assert not volume_exists(str(out))
    assert runner.invoke(app, ["predict", unet, raw, str(tmp_path / "affs.zarr"), "-q"]).exit_code == 0


def test_a_bad_affine_does_not_cost_the_output_an_overwrite_would_replace(tmp_path, unet):
    good = tmp_path / "good.nii"
    nib.save(nib.Nifti1Image(RAW.T, np.diag([8.0, 8.0, 8.0, 1.0])), good)
    out = tmp_path / "affs.nii.gz"
    assert runner.invoke(app, ["predict", unet, str(good), str(out), "-q"]).exit_code == 0
    before = out.read_bytes()
    raw = _nifti(tmp_path / "scan.nii", RAW, row=2, column=2, value=0.0)
    fails_in_one_line(["predict", unet, raw, str(out), "--overwrite", "-q"], "a singular affine")
    assert out.read_bytes() == before


def test_nifti_affinities_with_a_bad_affine_are_refused_before_segment_computes_anything(tmp_path):
    affs = np.random.default_rng(0).random((3, 16, 16, 16)).astype(np.float32)
    spec = _nifti(tmp_path / "affs.nii", affs, row=0, column=3, value=np.inf)
    out = tmp_path / "seg.nii.gz"
    fails_in_one_line(["segment", spec, str(out), "--offsets", OFFSETS, "-q"], "a non-finite affine",
                      f"the NIfTI output '{out}' would copy")
    assert not volume_exists(str(out))


def test_an_oversized_block_shape_is_capped_to_the_volume_with_a_note(tmp_path, unet):
    raw = seeded_raw(str(tmp_path / "raw.zarr"), (32, 64, 64))  # the spec
    out, reference = str(tmp_path / "affs.zarr"), str(tmp_path / "reference.zarr")
    result = runner.invoke(app, ["predict", unet, raw, out, "--block-shape", "4096", "4096", "4096", "-q"])
    assert result.exit_code == 0, result.output
    assert "note: block shape 4096 4096 4096 is larger than the 32x64x64 volume; capped to 32 64 64" in result.stderr
    assert open_volume(out).chunks == (3, 32, 64, 64)
    assert runner.invoke(app, ["predict", unet, raw, reference, "--block-shape", "32", "64", "64",
                               "-q"]).exit_code == 0
    np.testing.assert_array_equal(open_volume(out).read(), open_volume(reference).read())
    result = runner.invoke(app, ["predict", unet, raw, str(tmp_path / "fits.zarr"), "--block-shape", "16",
                                 "16", "16", "-q"])
    assert result.exit_code == 0 and "capped" not in result.stderr


def _zarr(path: Path, shape, dtype, data=None, **attrs) -> str:
    """A zarr array written directly (create_volume refuses empty shapes), at 8 nm."""
    array = zarr.create_array(str(path), shape=shape, chunks=tuple(max(1, min(s, 16)) for s in shape), dtype=dtype)
    array.attrs.update({"voxel_size": [8, 8, 8], "unit": "nanometer", **attrs})
    if data is not None:
        array[...] = data
    return str(path)


def _labels(tmp_path: Path) -> str:
    path = tmp_path / "labels.zarr"
    return str(path) if path.exists() else _zarr(path, (32, 32, 32), "uint32", (RAW > 128).astype(np.uint32) + 1)


def test_an_empty_volume_is_refused_as_such_by_every_stage(tmp_path, unet):
    empty = _zarr(tmp_path / "empty.zarr", (0, 32, 32), "uint8")
    empty_affs = _zarr(tmp_path / "empty_affs.zarr", (3, 32, 0, 32), "float32")
    said = "is empty: shape (0, 32, 32); name a volume that holds voxels"
    fails_in_one_line(["predict", unet, empty, str(tmp_path / "affs.zarr"), "-q"], f"volume '{empty}' {said}")
    fails_in_one_line(["segment", empty_affs, str(tmp_path / "seg.zarr"), "--offsets", OFFSETS, "-q"],
                      f"volume '{empty_affs}' is empty: shape (3, 32, 0, 32)")
    fails_in_one_line(["evaluate", _labels(tmp_path), "--gt", empty, "-q"], f"volume '{empty}' {said}")
    fails_in_one_line(train_args(tmp_path, empty, _labels(tmp_path)), f"volume '{empty}' {said}")
    assert not volume_exists(str(tmp_path / "affs.zarr")) and not volume_exists(str(tmp_path / "seg.zarr"))


RAW_DTYPES = {
    "complex": (RAW.astype(np.complex64) * (1 + 1j), "holds complex64 values, not real-valued image data; "
                                                      "store the magnitude (abs)"),
    "bool": (RAW > 128, "holds bool values: a mask, not an image; pass the image it masks"),
}


@pytest.mark.parametrize("kind", list(RAW_DTYPES))
def test_complex_or_bool_raw_is_refused_with_the_reason_by_predict_and_train(tmp_path, unet, kind):
    data, said = RAW_DTYPES[kind]
    raw = _zarr(tmp_path / "raw.zarr", data.shape, data.dtype, data)
    fails_in_one_line(["predict", unet, raw, str(tmp_path / "affs.zarr"), "-q"], f"input '{raw}' {said}")
    assert not volume_exists(str(tmp_path / "affs.zarr"))
    fails_in_one_line(train_args(tmp_path, raw, _labels(tmp_path)), f"raw '{raw}' {said}")


def test_complex_affinities_and_labels_are_refused_by_segment_evaluate_and_train(tmp_path):
    affs = _zarr(tmp_path / "affs.zarr", (3, 16, 16, 16), "complex64", np.ones((3, 16, 16, 16)))
    fails_in_one_line(["segment", affs, str(tmp_path / "seg.zarr"), "--offsets", OFFSETS, "-q"],
                      f"affinities '{affs}' hold complex64; expected float in [0, 1] or uint8")
    labels = _zarr(tmp_path / "cl.zarr", (32, 32, 32), "complex64", np.ones((32, 32, 32)))
    fails_in_one_line(["evaluate", labels, "--gt", _labels(tmp_path), "-q"],
                      f"prediction '{labels}' holds complex64 values; it must hold integers")
    raw = _zarr(tmp_path / "raw.zarr", RAW.shape, RAW.dtype, RAW)
    fails_in_one_line(train_args(tmp_path, raw, labels), f"labels '{labels}' are complex64; labels must be integers")
