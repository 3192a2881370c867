"""Outputs that cannot be where the user put them: one line each, nothing written (issue 13)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
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
    assert f"would lie inside the array '{other}/0'" in line and "choose an output in a group" in line
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


def _as_user() -> list[str] | None:
    """The command prefix that runs a command as an unprivileged user (``nobody``), whom a
    read-only folder stops: none needed when the tests do not run as root; None where root
    cannot drop its privileges here."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"] if setpriv else None


@pytest.mark.skipif(_as_user() is None, reason="root, and no setpriv to run as an unprivileged user")
def test_a_read_only_output_folder(raw_zarr, checkpoint):
    """For real: ``psc-seg predict`` as an unprivileged user into a folder it may not write."""
    place = Path(tempfile.mkdtemp(prefix="psc-seg-ro-"))  # pytest's tmp_path is closed to other users
    try:
        place.chmod(0o755)
        shutil.copytree(raw_zarr, place / "raw.zarr")
        shutil.copy(checkpoint, place / "unet.pt")
        (place / "ro").mkdir(mode=0o555)
        exe = Path(sys.executable).with_name("psc-seg")
        cmd = [*_as_user(), str(exe if exe.exists() else "psc-seg"), "predict", str(place / "unet.pt"),
               str(place / "raw.zarr"), str(place / "ro" / "affs.zarr"), "--quiet"]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=place,
                                env={**os.environ, "HOME": str(place), "MPLCONFIGDIR": str(place)})
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: cannot create output") and "Permission denied" in line
        assert list((place / "ro").iterdir()) == []
    finally:
        shutil.rmtree(place)
