"""Ctrl-C (SIGINT) in predict, segment and train: one line saying what was kept and the command
that continues, status 130, no traceback; that command then finishes the output, equal to an
uninterrupted run (RELIABILITY.md)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.io import create_volume, open_volume
from tests.pipelines.conftest import seeded_raw

runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
EXE = Path(sys.executable).with_name("psc-seg")
PSC_SEG = str(EXE if EXE.exists() else "psc-seg")


def interrupt_after(cmd: list[str], folder: Path, *, blocks: int = 1, timeout: float = 60) -> tuple[int, str, str]:
    """Run ``cmd`` in a process group of its own; send SIGINT to the group, as Ctrl-C in a
    terminal does, once a block record (``done.log``) under ``folder`` lists ``blocks`` finished
    blocks (it must not end before). Returns status, stdout, stderr."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(log.read_text().count("\n") >= blocks for log in folder.rglob("done.log")):
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def continue_command(stderr: str, pattern: str) -> list[str]:
    """The one ``interrupted: ...`` line of ``stderr``, checked against ``pattern``; the command
    it says continues the run, as argv."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert re.fullmatch(pattern, lines[0]), lines[0]
    command = re.search(r"; continue with `(.+)`$", lines[0])
    assert command, lines[0]
    words = shlex.split(command.group(1))
    assert words[0] == "psc-seg" and words[-1] == "--resume" and "--overwrite" not in words
    return [PSC_SEG, *words[1:]]


def interrupt_at_call(monkeypatch, owner, name: str, n: int):
    """Make ``owner.name`` (a function or method) raise KeyboardInterrupt, as Ctrl-C does, at its
    ``n``-th call; returns the original."""
    original, calls = getattr(owner, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)
    return original


def assert_interrupted(args: list[str], message: str) -> None:
    """Run the CLI in this process (a KeyboardInterrupt planted, :func:`interrupt_at_call`);
    assert status 130, no traceback and ``message`` alone on stderr."""
    result = runner.invoke(app, args)
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output
    assert result.stderr.strip() == message


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A seeded ``(32, 64, 64)`` uint8 volume at 8 nm."""
    spec = str(tmp_path_factory.mktemp("raw") / "raw.zarr")
    seeded_raw(spec, (32, 64, 64))
    return spec


@pytest.fixture(scope="module")
def affinities(tmp_path_factory, raw, checkpoint):
    """Affinities of :func:`raw`, in a folder of their own."""
    from psc_seg.pipelines.predict import predict

    spec = str(tmp_path_factory.mktemp("affs") / "affs.zarr")
    predict(checkpoint, raw, spec, progress=False)
    return spec


def test_sigint_in_blockwise_predict_keeps_blocks_and_resume_finishes(tmp_path, raw, checkpoint):
    from psc_seg.pipelines.predict import predict

    out = str(tmp_path / "pred.zarr")
    cmd = [PSC_SEG, "predict", str(checkpoint), raw, out, "--block-shape", "16", "16", "16", "-q", "--overwrite"]
    status, _, err = interrupt_after(cmd, tmp_path)
    assert status == 130, err
    resume = continue_command(err, rf"interrupted: (\d+) of 32 blocks written to {re.escape(out)} are kept; "
                                   r"continue with `.*`")
    kept = int(re.search(r"(\d+) of 32", err).group(1))
    assert 1 <= kept < 32
    assert not open_volume(out).complete  # left unfinished
    done = subprocess.run(resume, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"{32 - kept} blocks computed, {kept} already done (of 32)" in done.stdout
    reference = str(tmp_path / "reference.zarr")
    predict(checkpoint, raw, reference, block_shape=(16, 16, 16), progress=False)
    assert open_volume(out).complete
    np.testing.assert_array_equal(open_volume(out).read(), open_volume(reference).read())


def test_sigint_with_dask_workers_is_one_line(tmp_path, raw, checkpoint):
    out = str(tmp_path / "pred.zarr")
    cmd = [PSC_SEG, "predict", str(checkpoint), raw, out, "--block-shape", "8", "8", "8", "-q", "--workers", "1"]
    status, _, err = interrupt_after(cmd, tmp_path)  # the worker process gets SIGINT too, and ignores it
    assert status == 130, err
    continue_command(err, rf"interrupted: \d+ of 256 blocks written to {re.escape(out)} are kept; continue with `.*`")


def test_workers_beside_another_cluster_on_port_8787_print_nothing(tmp_path, raw, checkpoint):
    """Another dask cluster's dashboard (8787) does not make predict's workers warn on stderr."""
    import socket

    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 8787))
        taken.listen()
    except OSError:
        pass  # already taken by someone else: the same situation
    try:
        out = str(tmp_path / "pred.zarr")
        done = subprocess.run([PSC_SEG, "predict", str(checkpoint), raw, out, "--block-shape", "16", "32", "32", "-q",
                               "--workers", "1"], env=ENV, capture_output=True, text=True, timeout=300)
    finally:
        taken.close()
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_sigint_in_blockwise_segment_keeps_blocks_and_resume_finishes(tmp_path, affinities):
    from psc_seg.pipelines.segment import segment

    out = str(tmp_path / "seg.zarr")
    cmd = [PSC_SEG, "segment", affinities, out, "--block-shape", "16", "32", "32", "-q"]
    status, _, err = interrupt_after(cmd, tmp_path)
    assert status == 130, err
    resume = continue_command(err, rf"interrupted: {re.escape(out)} unfinished, stopped in step \d/4 \(\w+\) with "
                                   r"\d+ of 8 blocks done; they and the steps before are kept; continue with `.*`")
    assert not open_volume(out).complete
    done = subprocess.run(resume, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    reference = str(tmp_path / "reference.zarr")
    segment(affinities, reference, block_shape=(16, 32, 32), progress=False)
    assert open_volume(out).complete
    np.testing.assert_array_equal(open_volume(out).read(), open_volume(reference).read())


def test_ctrl_c_while_whole_volume_segment_decodes_leaves_the_outputs_as_they_were(tmp_path, affinities,
                                                                                    monkeypatch):
    import psc_seg.segment.whole as whole

    out = tmp_path / "seg.zarr"
    assert runner.invoke(app, ["segment", affinities, str(out), "-q"]).exit_code == 0
    before = open_volume(str(out)).read()
    interrupt_at_call(monkeypatch, whole, "segment_affinities", 1)
    assert_interrupted(["segment", affinities, str(out), "-q", "--overwrite", "-t", "0.7"], (
        "interrupted: stopped before writing; nothing was written and existing outputs are as they were; run "
        f"`psc-seg segment {affinities} {out} -q -t 0.7` again to start over"))
    assert open_volume(str(out)).complete
    np.testing.assert_array_equal(open_volume(str(out)).read(), before)


def test_ctrl_c_while_whole_volume_segment_writes_says_resume(tmp_path, affinities, monkeypatch):
    from psc_seg.io.volume import ZarrVolume

    out = tmp_path / "seg.zarr"
    finalize = interrupt_at_call(monkeypatch, ZarrVolume, "finalize", 2)
    args = ["segment", affinities, str(out), "-q", "-t", "0.3", "-t", "0.6"]
    assert_interrupted(args, (
        f"interrupted: stopped while writing {out}/threshold_0.30, {out}/threshold_0.60, which the run has not "
        f"finished; continue with `psc-seg {' '.join(args)} --resume`"))
    monkeypatch.setattr(ZarrVolume, "finalize", finalize)
    assert runner.invoke(app, [*args, "--resume"]).exit_code == 0
    reference = tmp_path / "reference.zarr"
    assert runner.invoke(app, ["segment", affinities, str(reference), "-q", "-t", "0.3", "-t", "0.6"]).exit_code == 0
    for name in ("threshold_0.30", "threshold_0.60"):
        assert open_volume(f"{out}/{name}").complete
        np.testing.assert_array_equal(open_volume(f"{out}/{name}").read(), open_volume(f"{reference}/{name}").read())


def test_ctrl_c_in_train_prints_the_resume_command(tmp_path, monkeypatch):
    import h5py
    import yaml

    from psc_seg.train.loop import Trainer
    from tests.train.conftest import blob_labels, em_config

    path = tmp_path / "em.h5"
    labels = blob_labels()
    with h5py.File(path, "w") as f:
        f["raw"], f["gt"] = np.where(labels == 0, 60, 180).astype(np.uint8), labels
    config = em_config({"raw": f"{path}:/raw", "labels": f"{path}:/gt"}, iterations=3)
    config["data"]["validation"] = []
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    step = interrupt_at_call(monkeypatch, Trainer, "step", 2)
    run = tmp_path / "run"
    args = ["train", str(tmp_path / "c.yaml"), "--out", str(run), "-q", "--set", "train.lr=2e-3"]
    # the run folder alone continues: config, overrides and data are in its config.yaml
    assert_interrupted(args, (
        f"interrupted: training stopped at iteration 1; {run}/checkpoints/last.pt saved; continue with "
        f"`psc-seg train --resume {run} -q`"))
    monkeypatch.setattr(Trainer, "step", step)
    resumed = runner.invoke(app, ["train", "--resume", str(run), "-q"])
    assert resumed.exit_code == 0 and "trained to iteration 3" in resumed.stdout
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 2e-3


def test_ctrl_c_elsewhere_is_one_line_and_status_130(tmp_path, monkeypatch):
    import psc_seg.pipelines.evaluate as evaluate

    for name in ("gt", "seg"):
        volume = create_volume(str(tmp_path / f"{name}.zarr"), shape=(4, 4, 4), dtype=np.uint64)
        volume.finalize()
    interrupt_at_call(monkeypatch, evaluate, "contingency_tables_blockwise", 1)
    assert_interrupted(["evaluate", str(tmp_path / "seg.zarr"), "--gt", str(tmp_path / "gt.zarr")], "interrupted")
