"""Inputs psc-seg cannot use as given (issue 13, "one line, not a traceback"): a NIfTI whose
affine is singular or not finite (refused when a NIfTI output would copy it, before any block is
computed, not when the output is assembled at the end), and a ``--block-shape`` larger than the volume (capped to it, with a note, instead of allocating the
oversized block)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.io import create_volume, open_volume, volume_exists

from .test_read_faults import RAW, fails_in_one_line

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
    raw = create_volume(str(tmp_path / "raw.zarr"), shape=(32, 64, 64), dtype=np.uint8, voxel_size=(8, 8, 8),
                        unit="nanometer")
    raw.write(None, np.random.default_rng(0).integers(0, 256, (32, 64, 64), dtype=np.uint8))
    raw.finalize()
    out, reference = str(tmp_path / "affs.zarr"), str(tmp_path / "reference.zarr")
    result = runner.invoke(app, ["predict", unet, raw.spec, out, "--block-shape", "4096", "4096", "4096", "-q"])
    assert result.exit_code == 0, result.output
    assert "note: block shape 4096 4096 4096 is larger than the 32x64x64 volume; capped to 32 64 64" in result.stderr
    assert open_volume(out).chunks == (3, 32, 64, 64)
    assert runner.invoke(app, ["predict", unet, raw.spec, reference, "--block-shape", "32", "64", "64",
                               "-q"]).exit_code == 0
    np.testing.assert_array_equal(open_volume(out).read(), open_volume(reference).read())
    result = runner.invoke(app, ["predict", unet, raw.spec, str(tmp_path / "fits.zarr"), "--block-shape", "16",
                                 "16", "16", "-q"])
    assert result.exit_code == 0 and "capped" not in result.stderr
