"""Volumes behind URLs and in other containers: zarr in S3 (moto's server) and over HTTP
(python's server), N5 read, zarr folders without the .zarr suffix; the bookkeeping of remote
outputs (owner object, block record as objects)."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.engine import BlockRecord, block_grid, prepare_outputs, run_blockwise
from psc_seg.engine.resume import check_finished
from psc_seg.engine.roi import Roi
from psc_seg.errors import UserError
from psc_seg.io import (
    create_volume, open_volume, overlaps, parse_spec, remove_output, replace_output, staged_spec, volume_exists,
)

RNG = np.random.default_rng(3)


def test_urls_stay_urls():
    s = parse_spec("s3://bucket/data/vol.zarr/g/raw")
    assert (s.format, s.url, s.inner) == ("zarr", "s3://bucket/data/vol.zarr", "g/raw")
    assert isinstance(s.path, PurePosixPath) and not isinstance(s.path, Path)  # never a local path
    assert str(s) == "s3://bucket/data/vol.zarr/g/raw" and s.node == str(s)
    assert parse_spec("gs://b/x.n5/raw").format == "n5"
    assert parse_spec("https://host:8443/cells").url == "https://host:8443/cells"  # no suffix: the URL is the container
    assert str(staged_spec("s3://b/out.zarr")) == "s3://b/out.psc-seg-new.zarr"
    assert str(staged_spec("s3://b/out.zarr/affs")) == "s3://b/out.zarr/affs.psc-seg-new"
    assert parse_spec("file:///tmp/v.zarr/raw").path == Path("/tmp/v.zarr") and not parse_spec("file:///tmp/v.zarr").url
    assert overlaps("s3://b/v.zarr", "s3://b/v.zarr/raw") and not overlaps("s3://b/v.zarr", "s3://c/v.zarr")
    assert not overlaps("s3://b/v.zarr", "b/v.zarr")
    with pytest.raises(UserError, match="unsupported URL 'ftp://h/v.zarr'"):
        parse_spec("ftp://h/v.zarr")
    with pytest.raises(UserError, match="reads zarr and N5 through URLs, not single files"):
        parse_spec("s3://bucket/data/scan.nii.gz")
    with pytest.raises(UserError, match="not single files"):
        parse_spec("s3://bucket/f.h5:/raw")
    with pytest.raises(UserError, match="names no container"):
        parse_spec("s3://bucket")


def test_zarr_folder_without_suffix(tmp_path):
    data = RNG.random((4, 5, 6)).astype("float32")
    create_volume(tmp_path / "v.zarr", shape=data.shape, dtype="float32").write(None, data)
    (tmp_path / "v.zarr").rename(tmp_path / "cells")
    s = parse_spec(f"{tmp_path}/cells/0")
    assert (s.format, s.path, s.inner) == ("zarr", tmp_path / "cells", "0")
    np.testing.assert_array_equal(open_volume(tmp_path / "cells").read(), data)
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="unsupported volume"):
        parse_spec(tmp_path / "plain")


def _n5(container: Path, inner: str, data: np.ndarray, block, *, compression: str, attrs=None) -> None:
    """An N5 dataset ``inner`` in ``container`` written by hand, as the Java library does (x fastest)."""
    root = container / inner
    root.mkdir(parents=True)
    (container / "attributes.json").write_text(json.dumps({"n5": "2.5.1"}))
    (root / "attributes.json").write_text(json.dumps({
        "dimensions": list(reversed(data.shape)), "blockSize": list(reversed(block)), "dataType": str(data.dtype),
        "compression": {"type": compression}, **(attrs or {})}))
    grid = [-(-n // b) for n, b in zip(data.shape, block)]
    for position in np.ndindex(*grid):
        if position == (0, 0, 1):
            continue  # not stored: reads as zeros
        piece = data[tuple(slice(p * b, (p + 1) * b) for p, b in zip(position, block))]
        payload = piece.astype(piece.dtype.newbyteorder(">")).tobytes()
        payload = gzip.compress(payload) if compression == "gzip" else payload
        header = struct.pack(">HH", 0, 3) + struct.pack(">3I", *reversed(piece.shape))
        target = root.joinpath(*(str(p) for p in reversed(position)))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(header + payload)


@pytest.mark.parametrize("compression", ["raw", "gzip"])
def test_n5_read(tmp_path, http_server, compression):
    data = RNG.integers(0, 60000, (5, 7, 9)).astype("uint16")
    _n5(tmp_path / "c.n5", "volumes/raw", data, (2, 3, 4), compression=compression,
        attrs={"resolution": [4, 4, 40], "offset": [8, 16, 400], "unit": "nm"})
    want = data.copy()
    want[0:2, 0:3, 4:8] = 0
    for spec in (f"{tmp_path}/c.n5/volumes/raw", f"{http_server(tmp_path)}/c.n5/volumes/raw"):
        vol = open_volume(spec)
        assert (vol.format, vol.shape, vol.dtype, vol.chunks) == ("n5", (5, 7, 9), np.uint16, (2, 3, 4))
        assert vol.voxel_size == (40, 4, 4) and vol.offset == (400, 16, 8) and vol.unit == "nanometer"
        np.testing.assert_array_equal(vol.read(), want)
        np.testing.assert_array_equal(vol.read((slice(1, 4), slice(2, 6), slice(3, 9))), want[1:4, 2:6, 3:9])
    with pytest.raises(UserError, match="not an N5 dataset .* name a dataset inside it: raw"):
        open_volume(f"{tmp_path}/c.n5/volumes")
    with pytest.raises(UserError, match="reads N5 but does not write it"):
        create_volume(f"{tmp_path}/c.n5/out", shape=(2, 2, 2), dtype="uint8")


def test_zarr_over_http_is_read_only(tmp_path, http_server):
    data = RNG.random((2, 6, 7, 8)).astype("float32")
    out = create_volume(tmp_path / "pred.zarr" / "affs", shape=data.shape, dtype="float32", chunks=(3, 4, 4),
                        voxel_size=(40, 4, 4), offset=(80, 8, 0), unit="nanometer")
    out.write(None, data)
    out.finalize()
    url = f"{http_server(tmp_path)}/pred.zarr/affs"
    vol = open_volume(url)
    assert vol.complete and vol.voxel_size == (40, 4, 4) and vol.offset == (80, 8, 0)
    np.testing.assert_array_equal(vol.read((slice(1, 5), slice(0, 7), slice(2, 8))), data[:, 1:5, :, 2:])
    assert volume_exists(url) and not volume_exists(url.replace("affs", "nothing"))
    with pytest.raises(UserError, match=r"cannot write 'http://.*': http:// is read only"):
        create_volume(url.replace("affs", "new"), shape=(2, 2, 2), dtype="uint8")
    with pytest.raises(UserError, match="does not exist; check the URL"):
        open_volume(url.replace("pred.zarr", "gone.zarr"))


def test_zarr_in_s3_write_read_replace(s3_bucket):
    s3_bucket = s3_bucket()
    data = RNG.random((2, 6, 7, 8)).astype("float32")
    spec = f"{s3_bucket}/pred.zarr/affs"
    out = create_volume(spec, shape=data.shape, dtype="float32", chunks=(3, 4, 4), voxel_size=(8, 8, 8))
    out.write((slice(0, 3), slice(0, 7), slice(0, 8)), data[:, :3])
    out.write((slice(3, 6), slice(0, 7), slice(0, 8)), data[:, 3:])
    assert not open_volume(spec).complete
    out.finalize()
    back = open_volume(spec)
    assert back.complete and back.voxel_size == (8, 8, 8) and back.chunks == (2, 3, 4, 4)
    np.testing.assert_array_equal(back.read(), data)
    assert str(back.sidecar_dir("blocks")) == f"{s3_bucket}/pred.zarr/affs/0/.psc-seg-blocks"
    with pytest.raises(UserError, match="already exists"):
        create_volume(spec, shape=(2, 2, 2), dtype="uint8")
    new = create_volume(staged_spec(spec), shape=(3, 3, 3), dtype="uint8")
    new.write(None, 7)
    new.finalize()
    replace_output(staged_spec(spec), parse_spec(spec))
    assert not volume_exists(staged_spec(spec))
    np.testing.assert_array_equal(open_volume(spec).read(), np.full((3, 3, 3), 7, np.uint8))
    remove_output(parse_spec(spec))
    assert not volume_exists(spec) and volume_exists(f"{s3_bucket}/pred.zarr")


def test_an_s3_output_in_a_missing_bucket_is_one_line(s3_server):
    from psc_seg.engine.owner import OutputOwner

    with pytest.raises(UserError, match=r"cannot write 's3://no-such-bucket/x.zarr' .*; create the bucket first"):
        create_volume("s3://no-such-bucket/x.zarr", shape=(2, 2, 2), dtype="uint8")
    with pytest.raises(UserError, match="create the bucket first"):
        OutputOwner("s3://no-such-bucket/.x.zarr.psc-seg-owner", "s3://no-such-bucket/x.zarr").acquire()


def test_s3_outputs_keep_their_owner_and_record_in_the_bucket(s3_bucket, monkeypatch):
    """One writer per output and a resumable record, both as objects in the store."""
    import sys

    s3_bucket = s3_bucket()
    monkeypatch.setattr(sys, "argv", ["psc-seg", "predict", "m.pt", "raw.zarr", f"{s3_bucket}/out.zarr"])
    specs = {"probabilities": f"{s3_bucket}/out.zarr/probabilities", "labels": f"{s3_bucket}/out.zarr/labels"}

    def create(where):
        return {name: create_volume(spec, shape=(6, 6, 6), dtype="uint8", chunks=(3, 3, 3))
                for name, spec in where.items()}

    prepared = prepare_outputs(specs, {"run": 1}, create=create)
    assert type(prepared.record).__name__ == "ObjectBlockRecord"
    with pytest.raises(UserError, match="is being written by another psc-seg run"):
        prepare_outputs(specs, {"run": 1}, create=create)
    blocks = block_grid(Roi((0, 0, 0), (6, 6, 6)), write_shape=3)
    run_blockwise(blocks[:3], lambda block: None, record=prepared.record, progress=False)  # then it stopped
    prepared.record.set_total(len(blocks))
    prepared.close()
    assert BlockRecord(prepared.record.directory).done_ids() == {0, 1, 2}
    with pytest.raises(UserError, match=r"unfinished: 3 of 8 blocks \(37%\) written"):
        check_finished(open_volume(specs["labels"]), "labels")
    with pytest.raises(UserError, match="other settings"):
        prepare_outputs(specs, {"run": 2}, create=create, resume=True).close()
    with prepare_outputs(specs, {"run": 1}, create=create, resume=True) as again:
        assert again.resumed and again.record.done_ids() == {0, 1, 2}
        run_blockwise(blocks, lambda block: None, record=again.record, progress=False)
        again.finish()
    with prepare_outputs(specs, {"run": 1}, create=create, resume=True) as done:
        assert done.done
    with prepare_outputs(specs, {"run": 2}, create=create, overwrite=True) as other:  # staged beside, swapped in
        assert other.staged["labels"] == f"{s3_bucket}/out.zarr/labels.psc-seg-new"
        other.volumes["labels"].write(None, 9)
        other.finish()
    assert not volume_exists(f"{s3_bucket}/out.zarr/labels.psc-seg-new")
    assert open_volume(specs["labels"]).read().min() == 9
    with prepare_outputs(specs, {"run": 2}, create=create, resume=True) as done:
        assert done.done


def test_segment_into_s3_in_memory_and_blockwise_refused(tmp_path, s3_bucket):
    from psc_seg.affinities import seg_to_affinities
    from psc_seg.pipelines.segment import segment

    labels = np.repeat(np.arange(1, 5, dtype=np.uint64), 2)[:, None, None] * np.ones((1, 6, 6), np.uint64)
    affs = seg_to_affinities(labels, [[-1, 0, 0], [0, -1, 0], [0, 0, -1]])
    source = create_volume(tmp_path / "affs.zarr", shape=affs.shape, dtype="float32",
                           attrs={"task": {"kind": "affinities", "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]}})
    source.write(None, affs)
    source.finalize()
    out = f"{s3_bucket()}/seg.zarr"
    segment(str(tmp_path / "affs.zarr"), out, decoder="cc", progress=False)
    seg = open_volume(out)
    assert seg.complete and len(np.unique(seg.read())) == 4
    gt = create_volume(tmp_path / "gt.zarr", shape=labels.shape, dtype="uint64")
    gt.write(None, labels)
    gt.finalize()
    report = tmp_path / "scores.json"
    res = CliRunner().invoke(app, ["evaluate", out, "--gt", str(tmp_path / "gt.zarr"), "--json", str(report)])
    assert res.exit_code == 0, res.output
    assert '"voi": 0.0' in report.read_text()  # the segmentation read back from S3 is the ground truth
    with pytest.raises(UserError, match="blockwise segment keeps its fragments .* cannot be in an object store yet"):
        segment(str(tmp_path / "affs.zarr"), f"{out}2", decoder="cc", block_shape=(4, 6, 6), progress=False)
    assert not volume_exists(f"{out}2")
