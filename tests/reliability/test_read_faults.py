"""Input data that cannot be read (issue 13, "one line, not a traceback"): a damaged zarr chunk,
HDF5 chunk or NIfTI file, or a chunk file the user may not read, is one line ``error: ...``
(exit status 2) that names the volume, the region in voxels and what to do, for every stage
that reads it, also when the read happens in a dask worker. What was written stays unfinished
and a rerun with ``--resume`` after the repair gives the same result as an uninterrupted run.
A region outside the array, or a bug in a back end, stays a programming error."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.errors import UserError
from psc_seg.io import create_volume, open_volume, volume_complete
from psc_seg.io.volume import ZarrVolume

from .conftest import tiny_checkpoint

runner = CliRunner()
RAW = np.random.default_rng(0).integers(0, 256, (32, 32, 32), dtype=np.uint8)
DAMAGED = "voxels z 16:32, y 0:16, x 16:32"  # the chunk c/1/0/1 of 16^3 chunks


def fails_in_one_line(args: list[str], *words: str) -> str:
    """Run ``psc-seg ARGS``: exit status 2 and one line ``error: ...`` holding ``words``, no
    traceback; returns that line."""
    result = runner.invoke(app, args)
    return _error_line(result.exit_code, result.output, words)  # (stdout and stderr)


def fails_in_one_line_in_a_process(args: list[str], *words: str, unprivileged: bool = False) -> str:
    """:func:`fails_in_one_line` in a new process, where nothing but that line is printed
    (``-q``: no progress bar). ``unprivileged``: one that file permissions apply to: this user,
    or root without the capabilities that override them (skipped where it cannot drop them)."""
    command = [sys.executable, "-c", "from psc_seg.cli.main import main; main()", *args]
    if unprivileged and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root, and no setpriv to drop the capabilities that override file permissions")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *command]
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    line = _error_line(done.returncode, done.stdout + done.stderr, words)
    assert [text for text in done.stderr.splitlines() if text.strip()] == [line], done.stderr
    return line


def _error_line(code: int, output: str, words: tuple[str, ...]) -> str:
    assert code == 2, output
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if line.startswith("error:")]
    for word in words:
        assert word in line, line
    return line


def _zarr(path: Path, data: np.ndarray, chunks=(16, 16, 16), **attrs) -> str:
    volume = create_volume(str(path), shape=data.shape, dtype=data.dtype, chunks=chunks, voxel_size=(8, 8, 8),
                           unit="nanometer", attrs=attrs)
    volume.write(None, data)
    volume.finalize()
    return str(path)


def _damage_chunk(array: Path, key: str = "c/1/0/1") -> bytes:
    """Overwrite the chunk file ``key`` of the zarr array folder ``array`` with garbage of the
    same length; returns the original bytes."""
    chunk = array / key
    original = chunk.read_bytes()
    chunk.write_bytes(np.random.default_rng(1).integers(0, 256, len(original), dtype=np.uint8).tobytes())
    return original


@pytest.fixture
def raw_chunked(tmp_path):
    """``raw.zarr``: :data:`RAW` at 8 nm in 16^3 chunks."""
    return _zarr(tmp_path / "raw.zarr", RAW)


@pytest.fixture
def unet(tmp_path):
    return str(tiny_checkpoint(tmp_path / "unet.pt"))


def test_damaged_zarr_chunk_in_predict_names_volume_region_and_fix_and_resumes(tmp_path, raw_chunked, unet):
    original = _damage_chunk(Path(raw_chunked) / "0")
    out = str(tmp_path / "affs.zarr")
    args = ["predict", unet, raw_chunked, out, "--block-shape", "16", "16", "16", "-q"]
    fails_in_one_line(args, f"cannot read '{raw_chunked}' at {DAMAGED}", "damaged", "Zstd",
                      "restore the file from a copy or re-create the volume")
    assert not volume_complete(out)
    (Path(raw_chunked) / "0" / "c/1/0/1").write_bytes(original)  # restored from a copy
    assert runner.invoke(app, [*args, "--resume"]).exit_code == 0
    reference = str(tmp_path / "reference.zarr")
    assert runner.invoke(app, ["predict", unet, raw_chunked, reference, "--block-shape", "16", "16", "16",
                               "-q"]).exit_code == 0
    assert volume_complete(out)
    np.testing.assert_array_equal(open_volume(out).read(), open_volume(reference).read())


def test_damaged_zarr_chunk_read_in_a_dask_worker_is_one_line(tmp_path, raw_chunked, unet):
    _damage_chunk(Path(raw_chunked) / "0")
    out = str(tmp_path / "affs.zarr")
    line = fails_in_one_line_in_a_process(["predict", unet, raw_chunked, out, "--block-shape", "16", "16", "16",
                                           "--workers", "2", "-q"])
    assert line == (f"error: cannot read '{raw_chunked}' at {DAMAGED}: the data there are damaged (Zstd "
                    "decompression error: invalid input data); restore the file from a copy or re-create the volume")
    assert not volume_complete(out)


def test_user_error_crosses_processes_with_its_options():
    error = UserError("rerun with {resume}: what was written is kept", options=("resume",))
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is UserError and again.options == ("resume",)
    assert again.render(lambda name: f"--{name}") == "rerun with --resume: what was written is kept"
    assert str(again) == str(error)


def _hdf5_with_damaged_chunk(path: Path) -> str:
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("raw", data=RAW, chunks=(16, 16, 16), compression="gzip")
        dataset.attrs["resolution"] = [8, 8, 8]
        dataset.attrs["unit"] = "nanometer"
        info = dataset.id.get_chunk_info_by_coord((16, 0, 16))
    with open(path, "r+b") as f:  # the compressed bytes of that chunk, inside the file's data area
        f.seek(info.byte_offset + 8)
        f.write(bytes(range(200)))
    return f"{path}:/raw"


def test_damaged_hdf5_chunk_in_predict_is_one_line(tmp_path, unet):
    raw = _hdf5_with_damaged_chunk(tmp_path / "raw.h5")
    out = str(tmp_path / "affs.zarr")
    fails_in_one_line(["predict", unet, raw, out, "--block-shape", "16", "16", "16", "-q"],
                      f"cannot read '{raw}' at {DAMAGED}", "damaged", "restore the file from a copy")
    assert not volume_complete(out)


def test_truncated_nifti_in_predict_is_one_line(tmp_path, unet):
    path = tmp_path / "scan.nii"
    nib.save(nib.Nifti1Image(RAW.transpose(2, 1, 0), np.diag([8.0, 8.0, 8.0, 1.0])), path)
    os.truncate(path, path.stat().st_size - 4096)  # a copy cut short
    fails_in_one_line(["predict", unet, str(path), str(tmp_path / "out.zarr"), "-q"],
                      f"cannot read '{path}' at voxels z ", "damaged", "Expected")


def _affinities(tmp_path) -> str:
    affs = np.random.default_rng(2).random((3, 32, 32, 32)).astype(np.float32)
    return _zarr(tmp_path / "affs.zarr", affs, task={"kind": "affinities",
                                                     "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]})


@pytest.mark.parametrize("blockwise", [False, True], ids=["whole", "blockwise"])
def test_damaged_affinities_in_segment_are_one_line(tmp_path, blockwise):
    affs = _affinities(tmp_path)
    original = _damage_chunk(Path(affs) / "0", "c/0/1/0/1")
    out = str(tmp_path / "seg.zarr")
    args = ["segment", affs, out, "-q", *(["--block-shape", "16", "16", "16"] if blockwise else [])]
    fails_in_one_line(args, f"cannot read '{affs}' at {DAMAGED}", "damaged", "blosc")
    if blockwise:  # an output was made: unfinished, and resumable once the chunk is back
        assert not volume_complete(out)
        (Path(affs) / "0" / "c/0/1/0/1").write_bytes(original)
        assert runner.invoke(app, [*args, "--resume"]).exit_code == 0
        assert volume_complete(out)


def test_damaged_ground_truth_in_evaluate_is_one_line(tmp_path):
    labels = (np.arange(32 ** 3).reshape(32, 32, 32) // 4096 + 1).astype(np.uint32)
    gt = _zarr(tmp_path / "gt.zarr", labels)
    prediction = _zarr(tmp_path / "pred.zarr", labels)
    _damage_chunk(Path(gt) / "0")
    fails_in_one_line(["evaluate", prediction, "--gt", gt], f"cannot read '{gt}' at", "damaged")


def train_args(tmp_path: Path, raw: str, labels: str) -> list[str]:
    """``psc-seg train`` arguments for a tiny one-iteration affinity run on ``raw`` / ``labels``."""
    pair = {"raw": raw, "labels": labels}
    config = {
        "model": {"name": "unet", "num_fmaps": 2, "fmap_inc_factor": 2, "downsample_factors": [[1, 2, 2]]},
        "task": {"kind": "affinities"},
        "data": {"train": [pair], "validation": [pair]},
        "train": {"iterations": 1, "batch_size": 1, "patch_shape": [4, 8, 8], "num_workers": 0},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return ["train", str(path), "--out", str(tmp_path / "run"), "-q"]


def test_damaged_raw_in_train_is_one_line(tmp_path):
    raw = _zarr(tmp_path / "raw.zarr", RAW)
    labels = _zarr(tmp_path / "labels.zarr", (RAW > 128).astype(np.uint32) + 1)
    _damage_chunk(Path(raw) / "0")
    fails_in_one_line(train_args(tmp_path, raw, labels), f"cannot read '{raw}' at {DAMAGED}", "damaged")


def test_chunk_the_user_may_not_read_says_so(tmp_path, raw_chunked, unet, monkeypatch):
    original = ZarrVolume._read

    def refused(self, key):
        if key[0].start >= 16 and key[1].stop <= 16 and key[2].start >= 16:  # the chunk c/1/0/1
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(Path(raw_chunked) / "0/c/1/0/1"))
        return original(self, key)

    monkeypatch.setattr(ZarrVolume, "_read", refused)
    fails_in_one_line(["predict", unet, raw_chunked, str(tmp_path / "affs.zarr"), "--block-shape", "16", "16",
                       "16", "-q"], f"cannot read '{raw_chunked}' at {DAMAGED} (Permission denied)",
                      "make it readable for you, then rerun")


def test_chunk_file_without_read_permission_says_so(tmp_path, raw_chunked, unet):
    chunk = Path(raw_chunked) / "0" / "c/1/0/1"
    chunk.chmod(0)
    try:
        fails_in_one_line_in_a_process(["predict", unet, raw_chunked, str(tmp_path / "affs.zarr"), "--block-shape",
                                         "16", "16", "16", "-q"],
                                        f"cannot read '{raw_chunked}' at {DAMAGED} (Permission denied)",
                                        "make it readable for you, then rerun", unprivileged=True)
    finally:
        chunk.chmod(0o644)


def test_a_damaged_chunk_is_named_even_when_a_read_spans_several(raw_chunked):
    _damage_chunk(Path(raw_chunked) / "0")
    with pytest.raises(UserError, match=f"at {DAMAGED}: the data there are damaged"):
        open_volume(raw_chunked).read()  # the whole volume: 8 chunks


def test_a_region_outside_the_array_and_a_bug_in_a_back_end_stay_programming_errors(raw_chunked, monkeypatch):
    volume = open_volume(raw_chunked)
    with pytest.raises(ValueError, match="leaves the array") as caught:
        volume.read((slice(0, 40), slice(0, 8), slice(0, 8)))
    assert not isinstance(caught.value, UserError)

    def broken(self, key):
        raise TypeError("a bug")

    monkeypatch.setattr(ZarrVolume, "_read", broken)
    with pytest.raises(TypeError, match="a bug"):
        volume.read((slice(0, 8),) * 3)
