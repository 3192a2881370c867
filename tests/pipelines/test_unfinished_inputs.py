"""Inputs psc-seg marked unfinished (issue 12, case 2; issue 13): segment, evaluate, preview,
train and predict refuse them in one line that says how much is written and the command that
finishes them; ``allow_incomplete`` proceeds with a note. A killed predict's output cannot
become a complete segmentation."""

from __future__ import annotations

import itertools
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.engine import BlockRecord
from psc_seg.engine.inference import BlockPredictor
from psc_seg.errors import Note, UserError
from psc_seg.io import create_volume, open_volume, volume_exists
from psc_seg.pipelines.evaluate import evaluate
from psc_seg.pipelines.predict import predict
from psc_seg.pipelines.preview import preview_volume
from psc_seg.pipelines.segment import segment
from psc_seg.pipelines.train import train

runner = CliRunner()


def _volume(spec, data, *, finished: bool = True) -> str:
    volume = create_volume(spec, shape=data.shape, dtype=data.dtype)
    volume.write(None, data)
    if finished:
        volume.finalize()
    return str(spec)


def _raw(path, shape=(32, 32, 32)) -> str:
    return _volume(path, np.random.default_rng(0).integers(0, 256, size=shape).astype(np.uint8))


def _labels(shape=(16, 16, 16)) -> np.ndarray:
    labels = np.ones(shape, dtype=np.uint64)
    labels[:, :, shape[2] // 2:] = 2
    return labels


def _interrupted_predict(checkpoint, raw: str, out: str, monkeypatch, *, after: int = 3) -> None:
    """``predict`` (as the CLI would run it) stopped by an error after ``after`` blocks."""
    original, calls = BlockPredictor.__call__, itertools.count()

    def failing(self, task):
        if next(calls) == after:
            raise RuntimeError("stopped")
        return original(self, task)

    monkeypatch.setattr(BlockPredictor, "__call__", failing)
    monkeypatch.setattr(sys, "argv", ["psc-seg", "predict", "unet.pt", "raw.zarr", "affs.zarr", "--overwrite"])
    with pytest.raises(RuntimeError, match="stopped"):
        predict(checkpoint, raw, out, block_shape=(16, 16, 16), progress=False)
    monkeypatch.undo()


def test_segment_refuses_unfinished_affinities_with_the_fraction_and_the_resume_command(tmp_path, checkpoint,
                                                                                      monkeypatch):
    raw, affs, seg = _raw(tmp_path / "raw.zarr"), str(tmp_path / "affs.zarr"), str(tmp_path / "seg.zarr")
    _interrupted_predict(checkpoint, raw, affs, monkeypatch)
    with pytest.raises(UserError) as error:
        segment(affs, seg, progress=False)
    message = str(error.value)
    assert "affinities" in message and "are unfinished: 3 of 8 blocks (37%) written" in message
    # the command that wrote them, --overwrite dropped (it excludes --resume)
    assert "finish them with `psc-seg predict unet.pt raw.zarr affs.zarr --resume`" in message
    assert "allow_incomplete" in message
    assert not volume_exists(seg)

    with pytest.warns(Note, match="unfinished: 3 of 8 blocks"):
        assert segment(affs, seg, allow_incomplete=True, progress=False) == [seg]
    assert open_volume(seg).complete

    result = runner.invoke(app, ["segment", affs, str(tmp_path / "cli.zarr"), "--quiet"])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and line.endswith("or pass --allow-incomplete to use them as they are")
    result = runner.invoke(app, ["segment", affs, str(tmp_path / "cli.zarr"), "--quiet", "--allow-incomplete"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^note: affinities .* are unfinished: 3 of 8 blocks", result.stderr, re.M)


def test_a_record_without_a_total_says_how_many_blocks_are_done(tmp_path, checkpoint, monkeypatch):
    """Records written before totals were kept stay readable."""
    raw, affs = _raw(tmp_path / "raw.zarr"), str(tmp_path / "affs.zarr")
    _interrupted_predict(checkpoint, raw, affs, monkeypatch, after=2)
    record = BlockRecord(open_volume(affs).sidecar_dir("blocks"))
    for path in record.directory.iterdir():
        if path.name not in ("settings.json", "done.log"):
            path.unlink()
    with pytest.raises(UserError, match=r"are unfinished \(2 blocks done\); finish them with `psc-seg predict"):
        segment(affs, str(tmp_path / "seg.zarr"), progress=False)


def test_evaluate_refuses_an_unfinished_prediction_ground_truth_or_mask(tmp_path):
    labels = _labels()
    done = {name: _volume(f"{tmp_path}/{name}.zarr", labels) for name in ("pred", "gt", "mask")}
    for role, name in (("prediction", "pred"), ("ground truth", "gt"), ("mask", "mask")):
        specs = {**done, name: _volume(f"{tmp_path}/{name}_unfinished.zarr", labels, finished=False)}
        with pytest.raises(UserError, match=f"^{role} .*{name}_unfinished.zarr' is unfinished; .*allow_incomplete"):
            evaluate([specs["pred"]], specs["gt"], mask=specs["mask"])
        with pytest.warns(Note, match=f"{role} .* is unfinished"):
            (row,) = evaluate([specs["pred"]], specs["gt"], mask=specs["mask"], allow_incomplete=True)
        assert row["voi"] == 0
    result = runner.invoke(app, ["evaluate", specs["pred"], "--gt", specs["gt"], "--mask", specs["mask"], "-q"])
    assert result.exit_code == 2 and "--allow-incomplete" in result.stderr
    result = runner.invoke(app, ["evaluate", specs["pred"], "--gt", specs["gt"], "--mask", specs["mask"], "-q",
                                 "--allow-incomplete"])
    assert result.exit_code == 0, result.output
    assert "note: mask" in result.stderr


def test_preview_refuses_every_unfinished_volume_it_shows(tmp_path):
    raw = np.random.default_rng(0).integers(0, 256, size=(8, 16, 16)).astype(np.uint8)
    affs = np.random.default_rng(1).random((3, 8, 16, 16)).astype(np.float32)
    done = {"volume": _volume(f"{tmp_path}/raw.zarr", raw),
            "labels": _volume(f"{tmp_path}/seg.zarr", _labels((8, 16, 16))),
            "affinities": _volume(f"{tmp_path}/affs.zarr", affs)}
    unfinished = {"volume": _volume(f"{tmp_path}/raw_u.zarr", raw, finished=False),
                  "labels": _volume(f"{tmp_path}/seg_u.zarr", _labels((8, 16, 16)), finished=False),
                  "affinities": _volume(f"{tmp_path}/affs_u.zarr", affs, finished=False)}
    for role in ("volume", "labels", "affinities"):
        specs = {**done, role: unfinished[role]}
        volume = specs.pop("volume")
        out = tmp_path / f"{role}.png"
        with pytest.raises(UserError, match=f"^{role} .*_u.zarr' (is|are) unfinished"):
            preview_volume(volume, out=out, **specs)
        assert not out.exists()
        with pytest.warns(Note, match=f"{role} .* unfinished"):
            preview_volume(volume, out=out, **specs, allow_incomplete=True)
        assert out.exists()
    result = runner.invoke(app, ["preview", unfinished["volume"], "-o", str(tmp_path / "cli.png")])
    assert result.exit_code == 2 and "--allow-incomplete" in result.stderr
    result = runner.invoke(app, ["preview", unfinished["volume"], "-o", str(tmp_path / "cli.png"),
                                 "--allow-incomplete"])
    assert result.exit_code == 0, result.output
    assert "note: volume" in result.stderr and (tmp_path / "cli.png").exists()


def _config(train_pair: dict, validation_pair: dict) -> dict:
    return {
        "model": {"name": "unet", "conv": "psc(2,2)", "num_fmaps": 2, "fmap_inc_factor": 2,
                  "downsample_factors": [[1, 2, 2]]},
        "task": {"kind": "affinities"},
        "data": {"train": [train_pair], "validation": [validation_pair]},
        "train": {"iterations": 1, "batch_size": 1, "patch_shape": [4, 8, 8], "validate_every": 100,
                  "num_workers": 0},
    }


def test_train_refuses_unfinished_raw_labels_or_mask_of_training_and_validation(tmp_path):
    shape = (16, 32, 32)
    raw = np.random.default_rng(0).integers(0, 256, size=shape).astype(np.uint8)
    pair = {"raw": _volume(f"{tmp_path}/raw.zarr", raw), "labels": _volume(f"{tmp_path}/gt.zarr", _labels(shape)),
            "mask": _volume(f"{tmp_path}/mask.zarr", np.ones(shape, np.uint8))}
    for part in ("train", "validation"):
        for key, role in (("raw", "raw"), ("labels", "labels"), ("mask", "mask")):
            spec = f"{tmp_path}/{part}_{key}_u.zarr"
            if not Path(spec).exists():
                source = open_volume(pair[key])
                _volume(spec, source.read(), finished=False)
            broken = {**pair, key: spec}
            config = _config(broken, pair) if part == "train" else _config(pair, broken)
            with pytest.raises(UserError, match=f"^{role} .*{part}_{key}_u.zarr' (is|are) unfinished"):
                train(config, out=tmp_path / "run", quiet=True)
            assert not (tmp_path / "run" / "checkpoints").exists()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config({**pair, "labels": f"{tmp_path}/train_labels_u.zarr"}, pair)))
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "cli"), "-q"])
    assert result.exit_code == 2 and "--allow-incomplete" in result.stderr
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "cli"), "-q", "--allow-incomplete"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^note: labels .*train_labels_u.zarr' are unfinished", result.stderr, re.M)


def test_predict_refuses_an_unfinished_input(tmp_path, checkpoint, notes):
    data = np.random.default_rng(0).integers(0, 256, size=(16, 16, 16)).astype(np.uint8)
    raw = _volume(f"{tmp_path}/raw.zarr", data, finished=False)
    with pytest.raises(UserError, match="^input .*raw.zarr' is unfinished; .*allow_incomplete"):
        predict(checkpoint, raw, str(tmp_path / "affs.zarr"), progress=False)
    assert not volume_exists(str(tmp_path / "affs.zarr"))
    predict(checkpoint, raw, str(tmp_path / "affs.zarr"), progress=False, allow_incomplete=True)
    assert any("raw.zarr' is unfinished" in note for note in notes.take())
    result = runner.invoke(app, ["predict", str(checkpoint), raw, str(tmp_path / "cli.zarr"), "-q",
                                 "--allow-incomplete"])
    assert result.exit_code == 0, result.output
    assert "note: input" in result.stderr


def test_killed_predict_cannot_become_a_complete_segmentation(tmp_path, checkpoint, kill_after):
    """A ``psc-seg predict`` killed with SIGKILL after a few blocks: ``psc-seg segment`` on its
    output exits 2 with one line and leaves no segmentation that looks complete."""
    raw, affs = _raw(tmp_path / "raw.zarr"), tmp_path / "affs.zarr"
    exe = Path(sys.executable).with_name("psc-seg")
    cmd = [str(exe if exe.exists() else "psc-seg"), "predict", str(checkpoint), raw, str(affs), "--block-shape",
           "16", "16", "16", "--quiet"]
    log = affs / "0" / ".psc-seg-blocks" / "done.log"
    kill_after(cmd, log, 2, env={**os.environ, "OMP_NUM_THREADS": "1"})
    done = len(BlockRecord(log.parent).done_ids())
    assert 2 <= done < 8
    for extra in ([], ["--block-shape", "16", "16", "16"]):
        seg = tmp_path / f"seg{len(extra)}.zarr"
        result = runner.invoke(app, ["segment", str(affs), str(seg), "--quiet", *extra])
        assert result.exit_code == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: affinities ")
        assert f"unfinished: {done} of 8 blocks" in line
        assert f"`psc-seg predict {checkpoint} {raw} {affs} --block-shape 16 16 16 --quiet --resume`" in line
        assert not volume_exists(str(seg)) or not open_volume(str(seg)).complete
