"""predict from one S3 bucket to another (moto's S3 server on 127.0.0.1), with two dask
workers, killed with SIGKILL and resumed; and from an HTTP server (read only) to a local output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from psc_seg.engine import BlockRecord
from psc_seg.io import create_volume, open_volume
from psc_seg.pipelines.predict import predict


def _raw(spec: str, shape=(32, 48, 48), seed=4) -> np.ndarray:
    data = np.random.default_rng(seed).integers(0, 256, shape).astype("uint8")
    raw = create_volume(spec, shape=shape, dtype="uint8", chunks=(16, 16, 16), voxel_size=(8, 8, 8))
    raw.write(None, data)
    raw.finalize()
    return data


def _cli() -> str:
    exe = Path(sys.executable).with_name("psc-seg")
    return str(exe if exe.exists() else "psc-seg")


def test_predict_s3_to_s3_two_workers_resumes_after_sigkill(tmp_path, checkpoint, s3_bucket, kill_after):
    source, target = s3_bucket("-in"), s3_bucket("-out")
    _raw(f"{source}/raw.zarr")
    out = f"{target}/affs.zarr"
    cmd = [_cli(), "predict", str(checkpoint), f"{source}/raw.zarr", out, "--block-shape", "16", "16", "16",
           "--workers", "2", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    record = BlockRecord(f"{out}/0/.psc-seg-blocks")
    kill_after(cmd, lambda: len(record.done_ids()), 4, env=env, timeout=300)  # two workers start slowly on 2 cores
    assert not open_volume(out).complete  # the killed output does not look complete
    recorded = record.done_ids()
    assert 4 <= len(recorded) < 18
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    match = re.search(r"(\d+) blocks computed, (\d+) already done \(of 18\)", res.stdout)
    assert match, res.stdout + res.stderr
    assert int(match.group(2)) == len(recorded) and int(match.group(1)) == 18 - len(recorded)
    assert open_volume(out).complete
    assert not any(p.name.startswith(".affs.zarr") for p in tmp_path.iterdir())  # nothing written locally
    local = tmp_path / "full.zarr"
    predict(checkpoint, f"{source}/raw.zarr", str(local), block_shape=(16, 16, 16), progress=False)
    np.testing.assert_array_equal(open_volume(out).read(), open_volume(local).read())


def test_predict_from_http(tmp_path, checkpoint, http_server):
    _raw(str(tmp_path / "served" / "raw.zarr"), shape=(16, 24, 24))
    url = f"{http_server(tmp_path / 'served')}/raw.zarr"
    summary = predict(checkpoint, url, str(tmp_path / "affs.zarr"), block_shape=(16, 16, 16), progress=False)
    assert summary is not None
    direct = tmp_path / "direct.zarr"
    predict(checkpoint, str(tmp_path / "served" / "raw.zarr"), str(direct), block_shape=(16, 16, 16), progress=False)
    np.testing.assert_array_equal(open_volume(tmp_path / "affs.zarr").read(), open_volume(direct).read())
