"""An output that is its input, lies inside it or holds it is refused before anything is written,
for predict and segment, even with --overwrite: the input's files are byte-identical after."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.io import create_volume

runner = CliRunner()


def _digest(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.relative_to(folder).as_posix().encode() + p.read_bytes() for p in files)).hexdigest()


def _write(spec: str, data: np.ndarray, **attrs) -> None:
    volume = create_volume(spec, shape=data.shape, dtype=data.dtype, voxel_size=(8, 8, 8), unit="nanometer",
                           attrs=attrs)
    volume.write(None, data)
    volume.finalize()


@pytest.fixture()
def container(tmp_path):
    rng = np.random.default_rng(0)
    _write(f"{tmp_path}/d.zarr/raw", rng.integers(0, 256, (16, 24, 24), dtype=np.uint8))
    _write(f"{tmp_path}/d.zarr/labels", rng.integers(1, 5, (16, 24, 24)).astype(np.uint64))
    offsets = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    _write(f"{tmp_path}/affs.zarr", rng.random((3, 16, 24, 24), dtype=np.float32),
           task={"kind": "affinities", "offsets": offsets})
    return tmp_path


@pytest.mark.parametrize("args", [
    ["predict", "{ckpt}", "{d}/d.zarr/raw", "{d}/d.zarr", "--overwrite"],
    ["predict", "{ckpt}", "{d}/d.zarr/raw", "{d}/d.zarr/raw/0", "--overwrite"],
    ["predict", "{ckpt}", "{d}/d.zarr/raw/0", "{d}/d.zarr/raw", "--overwrite"],
    ["predict", "{ckpt}", "{d}/d.zarr/raw", "{d}/d.zarr/raw/affs"],
    ["segment", "{d}/affs.zarr", "{d}/affs.zarr", "--overwrite"],
    ["segment", "{d}/affs.zarr", "{d}/affs.zarr/0", "--overwrite", "--block-shape", "8", "8", "8"],
    ["segment", "{d}/affs.zarr/0", "{d}/affs.zarr", "--overwrite"],
    ["segment", "{d}/affs.zarr", "{d}/affs.zarr/seg", "-t", "0.3", "-t", "0.6"],
])
def test_an_output_overlapping_its_input_is_refused_and_the_input_kept(container, checkpoint, args):
    before = {name: _digest(container / name) for name in ("d.zarr", "affs.zarr")}
    result = runner.invoke(app, [a.format(d=container, ckpt=checkpoint) for a in args] + ["-q"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ") and "is the input volume" in line
    assert {name: _digest(container / name) for name in before} == before


def test_the_same_hdf5_dataset_or_file_and_the_same_nifti_file_are_refused(tmp_path, checkpoint):
    """One HDF5 file may hold input and output (other datasets), but not the input's dataset,
    a dataset inside it, or the file itself; a NIfTI input is not its own output."""
    import h5py

    raw = np.random.default_rng(0).integers(0, 256, (16, 24, 24), dtype=np.uint8)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["volumes/raw"] = raw
    _write(str(tmp_path / "raw.nii.gz"), raw)
    before = {name: (tmp_path / name).read_bytes() for name in ("f.h5", "raw.nii.gz")}
    for output in (f"{tmp_path}/f.h5:/volumes/raw", f"{tmp_path}/f.h5:/volumes", f"{tmp_path}/f.h5:/volumes/raw/x"):
        result = runner.invoke(app, ["predict", str(checkpoint), f"{tmp_path}/f.h5:/volumes/raw", output,
                                     "--overwrite", "-q"])
        assert result.exit_code == 2 and "is the input volume" in result.output, result.output
    result = runner.invoke(app, ["predict", str(checkpoint), f"{tmp_path}/raw.nii.gz", f"{tmp_path}/raw.nii.gz",
                                 "--overwrite", "-q"])
    assert result.exit_code == 2 and "is the input volume" in result.output, result.output
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_dots_in_a_node_path_name_the_same_node(tmp_path, checkpoint):
    """``f.h5:/./raw`` is ``f.h5:/raw``: refused as the input, not written over it (it was)."""
    import h5py

    with h5py.File(tmp_path / "h.h5", "w") as f:
        f["raw"] = np.random.default_rng(0).integers(0, 256, (16, 24, 24), dtype=np.uint8)
    before = (tmp_path / "h.h5").read_bytes()
    for output in (f"{tmp_path}/h.h5:/./raw", f"{tmp_path}/h.h5:/x/../raw", f"{tmp_path}/h.h5://raw"):
        result = runner.invoke(app, ["predict", str(checkpoint), f"{tmp_path}/h.h5:/raw", output, "--overwrite",
                                     "-q"])
        assert result.exit_code == 2 and "is the input volume" in result.output, result.output
    assert (tmp_path / "h.h5").read_bytes() == before
    result = runner.invoke(app, ["predict", str(checkpoint), f"{tmp_path}/h.h5:/raw", f"{tmp_path}/d.zarr/../x",
                                 "-q"])
    assert result.exit_code == 2 and "leaves its container with '..'" in result.output, result.output


@pytest.mark.parametrize("command", ["preview", "view"])
def test_a_png_inside_its_input_is_refused(raw_zarr, command):
    """preview -o and view --screenshot write no file among the input's own."""
    pytest.importorskip("neuroglancer") if command == "view" else None
    before = sorted(p.name for p in Path(raw_zarr).rglob("*"))
    result = runner.invoke(app, [command, raw_zarr, "-o", f"{raw_zarr}/shot.png"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: {'preview output' if command == 'preview' else 'screenshot'} '{raw_zarr}/shot.png' lies inside the "
        f"input '{raw_zarr}'; write it outside the input"]
    assert sorted(p.name for p in Path(raw_zarr).rglob("*")) == before
