"""One writer per output (issue 13, case 5): a second writer is refused, naming the first's
host and pid; an interrupted run's output is taken over only with ``--resume``; a run whose
output was taken from it never marks it complete."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.engine.inference import BlockPredictor
from psc_seg.engine.owner import OutputOwner
from psc_seg.errors import UserError
from psc_seg.io import create_volume, open_volume, parse_spec, sidecar_beside
from psc_seg.pipelines.predict import predict

runner = CliRunner()


def _psc_seg() -> str:
    exe = Path(sys.executable).with_name("psc-seg")
    return str(exe if exe.exists() else "psc-seg")


def _start(cmd: list[str], log: Path, blocks: int) -> subprocess.Popen:
    """``cmd`` started, once its record ``log`` lists ``blocks`` finished blocks."""
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (log.exists() and log.read_text().count("\n") >= blocks):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
        time.sleep(0.01)
    return proc


def _predict_cmd(checkpoint, raw, out, *extra) -> list[str]:
    return [_psc_seg(), "predict", str(checkpoint), raw, str(out), "--block-shape", "8", "8", "8", "--quiet", *extra]


def _one_error(result) -> str:
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in result.output
    return line


def test_a_second_writer_is_refused_while_the_first_runs_and_the_first_finishes_intact(tmp_path, raw_zarr,
                                                                                      checkpoint):
    reference = tmp_path / "reference.zarr"
    predict(checkpoint, raw_zarr, str(reference), block_shape=(8, 8, 8), progress=False)
    out = tmp_path / "affs.zarr"
    first = _start(_predict_cmd(checkpoint, raw_zarr, out), out / "0" / ".psc-seg-blocks" / "done.log", 1)
    first.send_signal(signal.SIGSTOP)  # still running, however fast the machine: paused half-way
    try:
        for flag in ("--overwrite", "--resume"):
            args = ["predict", str(checkpoint), raw_zarr, str(out), "--block-shape", "8", "8", "8", "--quiet", flag]
            line = _one_error(runner.invoke(app, args))
            assert f"is being written by another psc-seg run, pid {first.pid} on host {socket.gethostname()}" in line
    finally:
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=120) == 0, first.stderr.read().decode()
    assert open_volume(str(out)).complete
    np.testing.assert_array_equal(open_volume(str(out)).read(), open_volume(str(reference)).read())
    assert not sidecar_beside(parse_spec(str(out)), "owner").exists()


def test_an_interrupted_runs_output_is_taken_over_only_with_resume(tmp_path, raw_zarr, checkpoint):
    reference = tmp_path / "reference.zarr"
    predict(checkpoint, raw_zarr, str(reference), block_shape=(8, 8, 8), progress=False)
    out = tmp_path / "affs.zarr"
    killed = _start(_predict_cmd(checkpoint, raw_zarr, out), out / "0" / ".psc-seg-blocks" / "done.log", 2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    owner = sidecar_beside(parse_spec(str(out)), "owner")
    assert owner.exists()
    base = ["predict", str(checkpoint), raw_zarr, str(out), "--block-shape", "8", "8", "8", "--quiet"]
    for extra in ([], ["--overwrite"]):
        line = _one_error(runner.invoke(app, [*base, *extra]))
        assert f"belongs to an interrupted run (pid {killed.pid} on host {socket.gethostname()}" in line
        assert "pass --resume to continue it" in line and str(owner) in line
    result = runner.invoke(app, [*base, "--resume"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(open_volume(str(out)).read(), open_volume(str(reference)).read())
    assert not owner.exists()


def test_a_run_whose_output_was_taken_over_does_not_mark_it_complete(tmp_path, raw_zarr, checkpoint, monkeypatch):
    out = str(tmp_path / "affs.zarr")
    owner = sidecar_beside(parse_spec(out), "owner")
    original, calls = BlockPredictor.__call__, itertools.count()

    def taken_over_at_the_third_block(self, task):
        if next(calls) == 2:
            owner.write_text('{"host": "elsewhere", "pid": 1, "token": "theirs"}')
        return original(self, task)

    monkeypatch.setattr(BlockPredictor, "__call__", taken_over_at_the_third_block)
    with pytest.raises(UserError, match="was taken over by pid 1 on host elsewhere while this run wrote it; this "
                                        "run's result is not marked complete"):
        predict(checkpoint, raw_zarr, out, block_shape=(16, 16, 16), progress=False)
    assert not open_volume(out).complete
    assert owner.read_text().count("theirs") == 1  # the other run's owner file is left to it


def test_segment_refuses_an_output_another_run_writes(tmp_path):
    affs = create_volume(tmp_path / "affs.zarr", shape=(3, 8, 8, 8), dtype=np.float32,
                         attrs={"task": {"kind": "affinities", "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]}})
    affs.write(None, 0.9)
    affs.finalize()
    seg = str(tmp_path / "seg.zarr")
    other = OutputOwner(sidecar_beside(parse_spec(seg), "owner"), seg)  # held by this (living) process
    other.acquire()
    try:
        for extra in ([], ["--block-shape", "4", "4", "4"]):
            line = _one_error(runner.invoke(app, ["segment", str(tmp_path / "affs.zarr"), seg, "--quiet", *extra]))
            assert f"is being written by another psc-seg run, pid {os.getpid()}" in line
    finally:
        other.release()
    result = runner.invoke(app, ["segment", str(tmp_path / "affs.zarr"), seg, "--quiet"])
    assert result.exit_code == 0, result.output


def test_two_runs_cannot_both_own_an_output(tmp_path):
    path = tmp_path / ".out.zarr.psc-seg-owner"
    first, second = OutputOwner(path, "out.zarr"), OutputOwner(path, "out.zarr")
    first.acquire()
    with pytest.raises(UserError, match="being written by another psc-seg run"):
        second.acquire()
    with pytest.raises(UserError, match="being written by another psc-seg run"):
        second.acquire(resume=True)  # a living owner is never taken over
    first.check()
    first.release()
    second.acquire()
    with pytest.raises(UserError, match="taken over"):
        first.check()
    second.release()
    assert not path.exists()


def test_two_trainers_of_one_run_folder(tmp_path):
    """A second ``psc-seg train --out RUN`` while one runs is refused; once the first is gone,
    its run is taken over by ``--resume`` only."""
    import h5py
    import json
    import yaml

    from tests.train.conftest import blob_labels, em_config

    labels = blob_labels()
    with h5py.File(tmp_path / "em.h5", "w") as f:
        f["raw"], f["gt"] = np.where(labels == 0, 60, 180).astype(np.uint8), labels
    config = em_config({"raw": f"{tmp_path}/em.h5:/raw", "labels": f"{tmp_path}/em.h5:/gt"}, iterations=2)
    config["data"]["validation"] = []
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    args = ["train", str(tmp_path / "c.yaml"), "--out", str(run), "-q"]
    first = OutputOwner(tmp_path / ".run.psc-seg-owner", str(run))  # a trainer of this (living) process
    first.acquire()
    line = _one_error(runner.invoke(app, args))
    assert f"output '{run}' is being written by another psc-seg run, pid {os.getpid()}" in line
    assert not run.exists()
    first.release()
    assert runner.invoke(app, args).exit_code == 0
    gone = {"host": socket.gethostname(), "pid": 2 ** 22 + 1, "token": "killed"}  # no such process
    (tmp_path / ".run.psc-seg-owner").write_text(json.dumps(gone))
    line = _one_error(runner.invoke(app, [*args, "--overwrite"]))
    assert "belongs to an interrupted run" in line and "pass --resume to continue it" in line
    result = runner.invoke(app, [*args, "--resume", "--iterations", "3"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / ".run.psc-seg-owner").exists()


def test_an_output_nested_in_one_another_run_writes_is_refused(tmp_path, raw_zarr, checkpoint):
    """``d.zarr/affs`` while another run writes ``d.zarr``, and the other way round: the owner
    files of nested outputs see each other."""
    for held, wanted in (("d.zarr", "d.zarr/affs"), ("d.zarr/affs", "d.zarr")):
        spec = f"{tmp_path}/{held}"
        other = OutputOwner(sidecar_beside(parse_spec(spec), "owner"), spec)
        other.acquire()
        try:
            line = _one_error(runner.invoke(app, ["predict", str(checkpoint), raw_zarr, f"{tmp_path}/{wanted}",
                                                  "-q"]))
            assert f"overlaps output '{spec}', which is being written by another psc-seg run, pid {os.getpid()}" in line
        finally:
            other.release()
        assert not (tmp_path / "d.zarr").exists()
