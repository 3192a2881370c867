"""Outputs that cannot be written (issue 13, "one line, not a traceback"): a full disk or
quota, a folder without write permission, a read-only file system, met when an output is
created, when a block, the block record or the metadata is written, or when a NIfTI output is
assembled. Each is one line ``error: ...`` (exit status 2) naming the output and the OS reason;
during a run it says that what was written is kept and to rerun with ``--resume`` once the fault
is fixed; the output stays unfinished, and that rerun completes it with the same values as an
uninterrupted run.

Faults are raised from the write call (as root, a read-only folder does not stop writes), and
for real on a small tmpfs where this user may mount one."""

from __future__ import annotations

import errno
import itertools
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr.storage._local as zarr_local
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.engine import BlockRecord
from psc_seg.io import open_volume, partial_path, volume_complete, volume_exists
from psc_seg.io.volume import ZarrVolume

from .test_read_faults import fails_in_one_line, fails_in_one_line_in_a_process

runner = CliRunner()
BLOCKS = ["--block-shape", "16", "16", "16", "-q"]
FIXES = {  # errno: what the line says to do
    errno.ENOSPC: "free space on its disk",
    errno.EDQUOT: "free space or raise your disk quota",
    errno.EACCES: "make its folder writable for you",
    errno.EROFS: "remount its file system writable",
}


class Fault:
    """Zarr chunk writes (the ``c/...`` files) that fail with an OS error after some succeed."""

    def __init__(self, monkeypatch) -> None:
        self.monkeypatch, self.original = monkeypatch, zarr_local._put

    def arm(self, number: int, *, after: int = 0, every_file: bool = False) -> None:
        """Fail chunk writes (every file write with ``every_file``) with ``number`` after ``after``."""
        count, original = itertools.count(), self.original

        def put(path, value, *args, **kwargs):
            if (every_file or "c" in Path(path).parts) and next(count) >= after:
                raise OSError(number, os.strerror(number), str(path))
            return original(path, value, *args, **kwargs)

        self.monkeypatch.setattr(zarr_local, "_put", put)

    def clear(self) -> None:
        self.monkeypatch.setattr(zarr_local, "_put", self.original)


@pytest.fixture
def fault(monkeypatch):
    return Fault(monkeypatch)


@pytest.fixture
def unet(checkpoint):
    return str(checkpoint)


def _predict(unet: str, raw: str, out: str, *extra: str):
    return runner.invoke(app, ["predict", unet, raw, out, *BLOCKS, *extra])


def _same_as_uninterrupted(unet: str, raw: str, out: str, tmp_path: Path) -> None:
    reference = str(tmp_path / "reference.zarr")
    assert _predict(unet, raw, reference).exit_code == 0
    assert volume_complete(out)
    np.testing.assert_array_equal(open_volume(out).read(), open_volume(reference).read())


def _done(out: str) -> int:
    return len(BlockRecord(open_volume(out).sidecar_dir("blocks")).done_ids())


def _fails_then_resumes(unet: str, raw: str, out: str, tmp_path: Path, *words: str, done: int | None,
                        fix: Callable[[], None]) -> None:
    """predict ``out`` fails in one line holding ``words`` and leaves it unfinished (``done``
    blocks recorded, unless None); once ``fix()`` has removed the fault, a rerun with
    ``--resume`` completes it with the values of an uninterrupted run."""
    fails_in_one_line(["predict", unet, raw, out, *BLOCKS], *words)
    assert not volume_complete(out)
    assert done is None or _done(out) == done
    fix()
    assert _predict(unet, raw, out, "--resume").exit_code == 0
    _same_as_uninterrupted(unet, raw, out, tmp_path)


@pytest.mark.parametrize("number", list(FIXES), ids=[errno.errorcode[n] for n in FIXES])
def test_a_block_write_that_fails_is_one_line_and_a_resume_completes_it(tmp_path, raw_zarr, unet, fault, number):
    out = str(tmp_path / "affs.zarr")
    fault.arm(number, after=3)
    _fails_then_resumes(unet, raw_zarr, out, tmp_path, f"cannot write output '{out}' at voxels z ",
                        f"({os.strerror(number)}); {FIXES[number]}, then rerun with --resume: what was written is kept",
                        done=3, fix=fault.clear)


def test_an_output_that_cannot_be_created_is_one_line(tmp_path, raw_zarr, unet, fault):
    out = str(tmp_path / "affs.zarr")
    fault.arm(errno.EACCES, every_file=True)
    fails_in_one_line(["predict", unet, raw_zarr, out, *BLOCKS],
                      f"cannot create output '{out}' (Permission denied); make its folder writable for you, "
                      "then rerun")
    fault.clear()
    result = _predict(unet, raw_zarr, out)
    assert result.exit_code == 0, result.output  # a plain rerun: nothing in its way


def test_a_folder_without_write_permission_is_one_line(tmp_path, raw_zarr, unet):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        for out in (folder / "affs.zarr", f"{folder / 'affs.h5'}:/affs", folder / "affs.nii.gz"):
            fails_in_one_line_in_a_process(["predict", unet, raw_zarr, str(out), *BLOCKS],
                                            f"cannot create output '{out}' (Permission denied); make its folder "
                                            "writable for you, then rerun", unprivileged=True)
    finally:
        folder.chmod(0o755)


class SmallDisk:
    """A tmpfs of a few MB mounted at ``path`` for one test, filled up to ``fill(free)``."""

    def __init__(self, path: Path) -> None:
        self.path, self.ballast = path, path / "ballast"

    def fill(self, free: int) -> None:
        """Leave about ``free`` bytes free (a ballast file takes the rest)."""
        stat = os.statvfs(self.path)
        with open(self.ballast, "wb") as f:
            f.write(b"\1" * max(0, stat.f_bavail * stat.f_frsize - free))

    def free_up(self) -> None:
        self.ballast.unlink()


@pytest.fixture
def small_disk(tmp_path):
    path = tmp_path / "disk"
    path.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("this user cannot mount a small file system")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.mark.parametrize("kind", ["zarr", "hdf5"])
def test_a_disk_that_fills_up_during_predict_is_one_line_and_resumable(tmp_path, raw_zarr, unet, small_disk,
                                                                       kind):
    """For real: HDF5 itself cannot recover from a full disk in the middle of a write (it
    crashes at exit), so psc-seg refuses an HDF5 write first where the disk has no room."""
    out = str(small_disk.path / "affs.zarr") if kind == "zarr" else f"{small_disk.path / 'affs.h5'}:/affs"
    small_disk.fill(150_000 if kind == "zarr" else (1 << 20) + 150_000)

    def free_up():
        assert 0 < _done(out) < 8
        small_disk.free_up()

    _fails_then_resumes(unet, raw_zarr, out, tmp_path, f"cannot write output '{out}'",
                        "(No space left on device); free space on its disk, then rerun with --resume", done=None,
                        fix=free_up)


def test_a_read_only_file_system_is_one_line(tmp_path, raw_zarr, unet, small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk.path)], check=True)
    for out in (small_disk.path / "affs.zarr", f"{small_disk.path / 'affs.h5'}:/affs",
                small_disk.path / "affs.nii.gz"):
        fails_in_one_line(["predict", unet, raw_zarr, str(out), *BLOCKS], f"cannot create output '{out}'",
                          "(Read-only file system); remount its file system writable, then rerun")


def test_an_hdf5_block_write_that_fails_is_one_line_and_resumable(tmp_path, raw_zarr, unet, monkeypatch):
    import h5py

    out, original, count = f"{tmp_path / 'affs.h5'}:/affs", h5py.Dataset.__setitem__, itertools.count()

    def full(self, key, value):
        if next(count) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", full)
    _fails_then_resumes(unet, raw_zarr, out, tmp_path, f"cannot write output '{out}' at voxels",
                        "(No space left on device); free space on its disk, then rerun with --resume", done=2,
                        fix=monkeypatch.undo)


def test_no_room_for_a_nifti_output_is_said_when_it_is_created(tmp_path, raw_zarr, unet, monkeypatch):
    """A NIfTI output is assembled in a memory-mapped file: its blocks are allocated when it is
    made, or a write into a full disk would kill the process (SIGBUS)."""
    out = tmp_path / "affs.nii.gz"

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    fails_in_one_line(["predict", unet, raw_zarr, str(out), *BLOCKS],
                      f"cannot create output '{out}' (No space left on device); free space on its disk, then rerun")
    assert not volume_exists(str(out))  # nothing left that a rerun would trip over
    monkeypatch.undo()
    assert _predict(unet, raw_zarr, str(out)).exit_code == 0


def test_a_nifti_output_that_cannot_be_assembled_is_kept_for_resume(tmp_path, raw_zarr, unet, monkeypatch):
    import psc_seg.io.volume as volume_module

    out = tmp_path / "affs.nii.gz"

    def full(path, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(path))

    monkeypatch.setattr(volume_module, "_write_nifti", full)
    fails_in_one_line(["predict", unet, raw_zarr, str(out), *BLOCKS],
                      f"cannot finish output '{out}' (Disk quota exceeded); free space or raise your disk quota, "
                      "then rerun with --resume: what was written is kept")
    assert not out.exists() and partial_path(out).exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []
    monkeypatch.undo()
    assert _predict(unet, raw_zarr, str(out), "--resume").exit_code == 0
    reference = tmp_path / "reference.nii.gz"
    assert _predict(unet, raw_zarr, str(reference)).exit_code == 0
    np.testing.assert_array_equal(open_volume(str(out)).read(), open_volume(str(reference)).read())


def test_metadata_that_cannot_be_written_at_the_end_is_one_line_and_resumable(tmp_path, raw_zarr, unet,
                                                                               monkeypatch):
    out = str(tmp_path / "affs.zarr")

    def full(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ZarrVolume, "_store_attrs", full)
    _fails_then_resumes(unet, raw_zarr, out, tmp_path, f"cannot write the metadata of output '{out}' (No space left "
                        "on device)", "--resume", done=8, fix=monkeypatch.undo)


def test_a_block_record_that_cannot_be_appended_is_one_line_and_resumable(tmp_path, raw_zarr, unet, monkeypatch):
    out, original, count = str(tmp_path / "affs.zarr"), BlockRecord.mark_done, itertools.count()

    def full(self, ids):
        if next(count) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.log_file))
        return original(self, ids)

    monkeypatch.setattr(BlockRecord, "mark_done", full)
    _fails_then_resumes(unet, raw_zarr, out, tmp_path, "cannot write the block record",
                        "(No space left on device); free space on its disk, then rerun with --resume", done=2,
                        fix=monkeypatch.undo)


def test_a_block_record_that_cannot_be_made_says_to_start_again(tmp_path, raw_zarr, unet, monkeypatch):
    out = str(tmp_path / "affs.zarr")

    def full(cls, directory, settings):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))

    monkeypatch.setattr(BlockRecord, "create", classmethod(full))
    fails_in_one_line(["predict", unet, raw_zarr, out, *BLOCKS], f"cannot write the block record of output '{out}'",
                      "(No space left on device); free space on its disk, then rerun with --overwrite")
    assert not volume_complete(out)
    monkeypatch.undo()
    assert _predict(unet, raw_zarr, out, "--overwrite").exit_code == 0
    _same_as_uninterrupted(unet, raw_zarr, out, tmp_path)


def _affinities(tmp_path: Path, unet: str, raw: str) -> str:
    affs = str(tmp_path / "affs.zarr")
    assert _predict(unet, raw, affs).exit_code == 0
    return affs


@pytest.mark.parametrize("blockwise", [False, True], ids=["whole", "blockwise"])
def test_a_segment_write_that_fails_is_one_line_and_resumable(tmp_path, raw_zarr, unet, fault, blockwise):
    affs = _affinities(tmp_path, unet, raw_zarr)
    out, reference = str(tmp_path / "seg.zarr"), str(tmp_path / "reference.zarr")
    args = ["segment", affs, out, "-q", *(["--block-shape", "16", "16", "16"] if blockwise else [])]
    fault.arm(errno.ENOSPC, after=5 if blockwise else 0)
    fails_in_one_line(args, "cannot write", "(No space left on device); free space on its disk, then rerun with "
                      "--resume: what was written is kept")
    assert not volume_complete(out)
    fault.clear()
    assert runner.invoke(app, [*args, "--resume"]).exit_code == 0
    assert runner.invoke(app, [*args[:2], reference, *args[3:]]).exit_code == 0
    np.testing.assert_array_equal(open_volume(out).read(), open_volume(reference).read())


def test_hdf5_writes_go_ahead_on_a_file_system_that_reports_no_size(tmp_path, raw_zarr, unet, monkeypatch):
    """Some network and FUSE file systems report 0 blocks, 0 free: that is not a full disk."""
    import psc_seg.io.volume as volume_module

    unknown = os.statvfs_result((4096, 4096, 0, 0, 0, 0, 0, 0, 0, 255))
    monkeypatch.setattr(volume_module.os, "statvfs", lambda path: unknown)
    out = f"{tmp_path / 'affs.h5'}:/affs"
    assert _predict(unet, raw_zarr, out).exit_code == 0 and volume_complete(out)
