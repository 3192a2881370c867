"""Segment reads the offsets stored with the affinities and picks the nearest-neighbour
channels by them (DESIGN.md section 1), in any order and position (issue 12, case 1)."""

import numpy as np
import pytest
from typer.testing import CliRunner

from psc_seg.affinities import seg_to_affinities
from psc_seg.cli.main import app
from psc_seg.errors import UserError
from psc_seg.evaluate import variation_of_information
from psc_seg.io import create_volume, open_volume
from psc_seg.pipelines.segment import segment

XYZ = [[0, 0, -1], [0, -1, 0], [-1, 0, 0]]
LONG = [[-3, 0, 0], [0, -3, 0], [0, 0, -3]]
NEAREST = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]


def _voi(a, b):
    return sum(variation_of_information(a, b))


def _write(path, labels, offsets, *, metadata=True):
    """Perfect affinities of ``labels`` for ``offsets``, as psc-seg predict stores them."""
    affs = seg_to_affinities(labels, offsets)
    attrs = {"task": {"kind": "affinities", "offsets": offsets}} if metadata else None
    volume = create_volume(str(path), shape=affs.shape, dtype="float32", attrs=attrs)
    volume.write(None, affs)
    volume.finalize()
    return str(path)


@pytest.fixture
def labels(make_labels):
    return make_labels((16, 24, 24), 10, seed=11)


@pytest.mark.parametrize("block_shape", [None, (8, 12, 12)])
@pytest.mark.parametrize("decoder", ["waterz", "cc"])
def test_affinities_in_xyz_order_segment_by_their_offsets(tmp_path, labels, decoder, block_shape):
    affs = _write(tmp_path / "affs.zarr", labels, XYZ)
    (out,) = segment(affs, str(tmp_path / "seg.zarr"), decoder=decoder, block_shape=block_shape, progress=False)
    assert _voi(labels, open_volume(out).read()) <= 0.05
    assert open_volume(out).attrs["psc_seg"]["provenance"]["config"]["offsets"] == XYZ


@pytest.mark.parametrize("block_shape", [None, (8, 12, 12)])
@pytest.mark.parametrize("offsets", [LONG + NEAREST, NEAREST + LONG, [LONG[0], *XYZ, *LONG[1:]]])
def test_long_range_channels_anywhere_are_ignored_with_a_note(tmp_path, labels, offsets, block_shape, notes):
    affs = _write(tmp_path / "affs.zarr", labels, offsets)
    (out,) = segment(affs, str(tmp_path / "seg.zarr"), block_shape=block_shape, progress=False)
    assert _voi(labels, open_volume(out).read()) <= 0.05
    (note,) = notes.take()
    assert "ignored" in note and all(str(tuple(o)) in note for o in LONG)


def test_affinities_without_offsets_are_refused_unless_given(tmp_path, labels):
    np.save(tmp_path / "bare.npy", seg_to_affinities(labels, XYZ))
    bare = str(tmp_path / "bare.npy")
    with pytest.raises(UserError, match="no offsets") as error:
        segment(bare, str(tmp_path / "a.zarr"), progress=False)
    assert "{offsets}" in error.value.template
    (out,) = segment(bare, str(tmp_path / "b.zarr"), offsets="[[0,0,-1],[0,-1,0],[-1,0,0]]", progress=False)
    assert _voi(labels, open_volume(out).read()) <= 0.05
    (out,) = segment(bare, str(tmp_path / "c.zarr"), offsets=XYZ, progress=False)
    assert _voi(labels, open_volume(out).read()) <= 0.05
    for wrong, message in [("[[-1,0,0],[0,-1,0]]", "2 offsets"), ("[[-1,0,0], [0,-1", "YAML"),
                           ("[[-1,0],[0,-1,0],[0,0,-1]]", "triples")]:
        with pytest.raises(UserError, match=message):
            segment(bare, str(tmp_path / "d.zarr"), offsets=wrong, progress=False)


def test_missing_direction_plus_one_offsets_and_disagreement_are_refused(tmp_path, labels):
    affs = _write(tmp_path / "far.zarr", labels, [[-1, 0, 0], [0, -1, 0], [0, 0, -2]])
    with pytest.raises(UserError, match=r"\(0, 0, -1\).*\(0, 0, -2\)"):
        segment(affs, str(tmp_path / "a.zarr"), progress=False)
    plus = _write(tmp_path / "plus.zarr", labels, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    with pytest.raises(UserError, match=r"\(1, 0, 0\).*p \+ offset"):
        segment(plus, str(tmp_path / "b.zarr"), progress=False)
    xyz = _write(tmp_path / "xyz.zarr", labels, XYZ)
    with pytest.raises(UserError, match="metadata"):
        segment(xyz, str(tmp_path / "c.zarr"), offsets=NEAREST, progress=False)
    (out,) = segment(xyz, str(tmp_path / "d.zarr"), offsets=XYZ, progress=False)  # the same: fine


def test_segment_cli_offsets_and_notes(tmp_path, labels):
    runner = CliRunner()
    np.save(tmp_path / "bare.npy", seg_to_affinities(labels, XYZ))
    result = runner.invoke(app, ["segment", str(tmp_path / "bare.npy"), str(tmp_path / "a.zarr"), "--quiet"])
    assert result.exit_code == 2 and "--offsets" in result.output, result.output
    result = runner.invoke(app, ["segment", str(tmp_path / "bare.npy"), str(tmp_path / "b.zarr"), "--quiet",
                                 "--offsets", "[[0,0,-1],[0,-1,0],[-1,0,0]]"])
    assert result.exit_code == 0, result.output
    assert _voi(labels, open_volume(str(tmp_path / "b.zarr")).read()) <= 0.05
    six = _write(tmp_path / "six.zarr", labels, NEAREST + LONG)
    result = runner.invoke(app, ["segment", six, str(tmp_path / "c.zarr"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "note: " in result.output and "(-3, 0, 0)" in result.output
