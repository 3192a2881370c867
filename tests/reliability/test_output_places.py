"""Outputs that cannot be where the user put them: one line each, nothing written (issue 13)."""

from __future__ import annotations

import errno
import os

from typer.testing import CliRunner

from psc_seg.cli.main import app

runner = CliRunner()


def _one_error(result) -> str:
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in result.output
    return line


def test_an_output_inside_another_volumes_array_is_refused(tmp_path, raw_zarr, checkpoint):
    other = tmp_path / "other.zarr"
    runner.invoke(app, ["predict", str(checkpoint), raw_zarr, str(other), "--quiet"])
    before = sorted(p.relative_to(other) for p in other.rglob("*"))
    line = _one_error(runner.invoke(app, ["predict", str(checkpoint), raw_zarr, f"{other}/0/affs", "--quiet"]))
    assert f"would lie inside the image '{other}'" in line and "choose an output in a group" in line
    assert sorted(p.relative_to(other) for p in other.rglob("*")) == before


def test_an_output_under_a_file_is_refused(tmp_path, raw_zarr, checkpoint):
    (tmp_path / "notes").write_text("mine")
    line = _one_error(runner.invoke(app, ["predict", str(checkpoint), raw_zarr, f"{tmp_path}/notes/affs.zarr"]))
    assert f"'{tmp_path}/notes' is a file, not a folder" in line
    assert (tmp_path / "notes").read_text() == "mine"


def test_an_output_folder_the_user_cannot_write_to(tmp_path, raw_zarr, checkpoint, monkeypatch):
    """The OS refuses the first file of the run (faked: the tests may run as root, whom a
    read-only folder does not stop)."""
    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "ro"))

    monkeypatch.setattr(os, "link", refused)
    line = _one_error(runner.invoke(app, ["predict", str(checkpoint), raw_zarr, f"{tmp_path}/ro/affs.zarr"]))
    assert "cannot create output" in line and "(Permission denied); make its folder writable for you" in line
    assert not (tmp_path / "ro" / "affs.zarr").exists()


def test_an_output_inside_an_existing_image_is_refused(tmp_path, raw_zarr, checkpoint):
    image = tmp_path / "seg.zarr"
    assert runner.invoke(app, ["predict", str(checkpoint), raw_zarr, str(image), "-q"]).exit_code == 0
    line = _one_error(runner.invoke(app, ["predict", str(checkpoint), raw_zarr, f"{image}/affs", "-q"]))
    assert f"would lie inside the image '{image}'" in line


def test_an_hdf5_output_in_a_file_that_is_not_hdf5(tmp_path, raw_zarr, checkpoint):
    (tmp_path / "notes.h5").write_text("hello")
    line = _one_error(runner.invoke(app, ["predict", str(checkpoint), raw_zarr, f"{tmp_path}/notes.h5:/affs"]))
    assert "exists and is not an HDF5 file" in line
    assert (tmp_path / "notes.h5").read_text() == "hello"


def test_overwrite_through_a_symbolic_link_is_refused(tmp_path, raw_zarr, checkpoint):
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "real.zarr"
    assert runner.invoke(app, ["predict", str(checkpoint), raw_zarr, str(real), "-q"]).exit_code == 0
    (tmp_path / "link.zarr").symlink_to(real)
    line = _one_error(runner.invoke(app, ["predict", str(checkpoint), raw_zarr, str(tmp_path / "link.zarr"),
                                          "--overwrite", "-q", "--dtype", "uint8"]))
    assert "symbolic link" in line and "name the real path" in line
    assert (tmp_path / "link.zarr").is_symlink()
