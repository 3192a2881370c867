"""`psc-seg train` end to end on tiny real files: checkpoints that rebuild, exact resume,
Ctrl-C, clear errors, semantic training on NIfTI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.errors import UserError
from psc_seg.io import open_volume
from psc_seg.models import load_checkpoint
from psc_seg.pipelines.train import train
from psc_seg.train.loop import Trainer, TrainingInterrupted

from .conftest import em_config, mri_config

runner = CliRunner()


def _write(tmp_path, config, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_cli_writes_a_run_whose_checkpoint_rebuilds(tmp_path, em_volume):
    config = _write(tmp_path, em_config(em_volume))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", config, "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "trained to iteration 4" in result.stdout
    for name in ("last", "best"):
        checkpoint = load_checkpoint(run / "checkpoints" / f"{name}.pt")
        meta = checkpoint.metadata
        assert meta["task"] == {"kind": "affinities", "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]}
        assert meta["normalize"] == {"kind": "uint8"}
        assert meta["voxel_size"] == [1.0, 1.0, 1.0]
        assert meta["config"]["train"]["patch_shape"] == [4, 8, 8]
        assert checkpoint.name == "unet" and checkpoint.kwargs["conv"] == "psc(2,2)"
        model = checkpoint.model
        out = model(torch.rand(1, 1, *model.valid_input_shape((4, 8, 8))))
        assert out.shape == (1, 3, 4, 8, 8) and 0 <= out.min() and out.max() <= 1
    assert load_checkpoint(run / "checkpoints" / "last.pt").metadata["iteration"] == 4
    # the choice validation made, for segment's defaults (issue 12, case 4)
    best = load_checkpoint(run / "checkpoints" / "best.pt").metadata
    assert best["segment"] == {"threshold": best["validation"]["val_threshold"], "scoring": "hist_quant_75"}
    rows = _rows(run)
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert [bool(r["val_voi"]) for r in rows] == [False, True, False, True]
    assert all(float(r["loss"]) > 0 and float(r["lr"]) == 1e-3 for r in rows)
    assert float(rows[-1]["val_voi"]) >= 0 and float(rows[-1]["val_threshold"]) in (0.3, 0.6)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["iterations"] == 4
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # validation went through the real predict pipeline; its output stays for inspection
    validated = open_volume(str(run / "validation" / "0-affinities.zarr"))
    assert validated.shape == (3, 16, 32, 32) and validated.complete
    # and `psc-seg predict` takes the checkpoint with nothing else
    out = tmp_path / "pred.zarr"
    result = runner.invoke(app, ["predict", str(run / "checkpoints" / "best.pt"), em_volume["raw"], str(out), "-q"])
    assert result.exit_code == 0, result.output
    affinities = open_volume(str(out)).read()
    assert affinities.shape == (3, 16, 32, 32) and 0 <= affinities.min() and affinities.max() <= 1


def test_resume_continues_the_same_curve(tmp_path, em_volume):
    config = em_config(em_volume, iterations=4, checkpoint_every=1)
    straight = train(config, out=tmp_path / "straight", quiet=True)
    config_file = _write(tmp_path, config)
    first = runner.invoke(app, ["train", config_file, "--out", str(tmp_path / "split"), "-q", "--iterations", "2"])
    assert first.exit_code == 0, first.output
    assert [r["iteration"] for r in _rows(tmp_path / "split")] == ["1", "2"]
    second = runner.invoke(app, ["train", config_file, "--out", str(tmp_path / "split"), "-q", "--resume",
                                 "--iterations", "4"])
    assert second.exit_code == 0, second.output
    split_rows, straight_rows = _rows(tmp_path / "split"), _rows(tmp_path / "straight")
    assert [r["iteration"] for r in split_rows] == ["1", "2", "3", "4"]
    # same samples, same optimizer state: the resumed curve is the uninterrupted one (up to
    # float rounding: multi-threaded oneDNN reductions may sum in another order under load)
    assert [float(r["loss"]) for r in split_rows] == pytest.approx([float(r["loss"]) for r in straight_rows], rel=1e-5)
    assert [r["val_voi"] != "" for r in split_rows] == [r["val_voi"] != "" for r in straight_rows]
    assert [float(r["val_voi"]) for r in split_rows if r["val_voi"]] == pytest.approx(
        [float(r["val_voi"]) for r in straight_rows if r["val_voi"]], abs=1e-4)
    assert float(split_rows[-1]["elapsed_s"]) >= float(split_rows[1]["elapsed_s"])
    a = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    b = load_checkpoint(straight["last"])
    assert a.metadata["iteration"] == b.metadata["iteration"] == 4
    for key, value in a.model.state_dict().items():
        assert torch.allclose(value.float(), b.model.state_dict()[key].float(), rtol=1e-4, atol=1e-6), key


def test_ctrl_c_saves_last_and_resume_picks_up(tmp_path, em_volume, monkeypatch):
    config = em_config(em_volume, iterations=4, validate_every=10)
    step = Trainer.step
    calls = {"n": 0}

    def interrupted_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(Trainer, "step", interrupted_step)
    with pytest.raises(TrainingInterrupted) as info:
        train(config, out=tmp_path / "run", quiet=True)
    assert info.value.iteration == 2
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt").metadata["iteration"] == 2
    monkeypatch.setattr(Trainer, "step", step)
    summary = train(config, out=tmp_path / "run", resume=True, quiet=True)
    assert summary["iteration"] == 4
    assert [r["iteration"] for r in _rows(tmp_path / "run")] == ["1", "2", "3", "4"]


def test_bad_key_fails_with_one_line_naming_it(tmp_path, em_volume):
    config = em_config(em_volume)
    config["train"]["itertions"] = 5
    result = runner.invoke(app, ["train", _write(tmp_path, config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: config key 'train.itertions' is not allowed; did you mean 'train.iterations'?")
    assert not (tmp_path / "run").exists()
    set_result = runner.invoke(app, ["train", _write(tmp_path, em_config(em_volume)), "--set", "model.conv=psc(4,2)"])
    assert set_result.exit_code == 2 and set_result.stderr.startswith("error: config section 'model':")


def test_existing_run_is_not_overwritten_and_resume_needs_the_same_config(tmp_path, em_volume):
    config = em_config(em_volume, iterations=2)
    train(config, out=tmp_path / "run", quiet=True)
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        train(config, out=tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before
    with pytest.raises(UserError, match="differs from the run's config.yaml in train.lr"):
        train(config, out=tmp_path / "run", resume=True, overrides=["train.lr=0.1"], quiet=True)
    with pytest.raises(UserError, match="not both"):
        train(config, out=tmp_path / "run", resume=True, overwrite=True)
    with pytest.raises(UserError, match="nothing to resume"):
        train(config, out=tmp_path / "other", resume=True, quiet=True)
    summary = train(config, out=tmp_path / "run", overwrite=True, iterations=1, quiet=True)
    assert summary["iteration"] == 1 and len(_rows(tmp_path / "run")) == 1


def test_cuda_without_gpu_and_missing_volume_are_user_errors(tmp_path, em_volume):
    config = em_config(em_volume)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            train(config, out=tmp_path / "run", device="cuda")
    config["data"]["train"][0]["labels"] = str(tmp_path / "missing.h5") + ":/gt"
    with pytest.raises(UserError, match="missing.h5"):
        train(config, out=tmp_path / "run")


def test_semantic_training_on_nifti_with_densenet(tmp_path, mri_volume):
    summary = train(mri_config(mri_volume), out=tmp_path / "mri", quiet=True)
    assert summary["iteration"] == 3
    checkpoint = load_checkpoint(tmp_path / "mri" / "checkpoints" / "best.pt")
    assert checkpoint.name == "densenet"
    assert checkpoint.metadata["task"] == {"kind": "semantic", "num_classes": 4}
    assert checkpoint.metadata["normalize"] == {"kind": "zscore"}
    logits = checkpoint.model(torch.zeros(1, 1, 16, 16, 16))
    assert logits.shape == (1, 4, 16, 16, 16)
    rows = _rows(tmp_path / "mri")
    assert [r["iteration"] for r in rows] == ["1", "2", "3"]
    dice = float(rows[-1]["val_dice"])
    assert 0.0 <= dice <= 1.0
    assert {"val_dice_1", "val_dice_2", "val_dice_3"} <= set(rows[-1])
    assert summary["validation"]["val_dice"] == pytest.approx(dice, abs=1e-5)


def test_loss_goes_down_on_the_tiny_volume(tmp_path, em_volume):
    config = em_config(em_volume, iterations=30, validate_every=1000, lr=3e-3, batch_size=1)
    config["data"]["validation"] = []
    config["augment"] = {"flip": False, "transpose": False}
    train(config, out=tmp_path / "run", quiet=True)
    losses = np.array([float(r["loss"]) for r in _rows(tmp_path / "run")])
    assert losses[-10:].mean() < losses[:10].mean()
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()  # no validation: best = last


def test_list_presets_and_missing_config_through_the_cli():
    result = runner.invoke(app, ["train", "--list-presets"])
    assert result.exit_code == 0
    assert {"em/unet-p2sc2", "mri/densenet-p2sc2", "em/demo-small"} <= set(result.stdout.split())
    missing = runner.invoke(app, ["train"])
    assert missing.exit_code == 2 and missing.stderr.startswith("error: give a CONFIG file or preset name")
    typo = runner.invoke(app, ["train", "em/demo-smal"])
    assert typo.exit_code == 2 and "did you mean 'em/demo-small'" in typo.stderr


def test_batch_norm_on_a_single_voxel_is_a_user_error(tmp_path, mri_volume):
    config = mri_config(mri_volume, batch_size=1, iterations=1)
    with pytest.raises(UserError, match="raise train.batch_size or train.patch_shape"):
        train(config, out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "checkpoints").exists()
    # the failed run left no checkpoint: starting again needs no --overwrite
    summary = train(mri_config(mri_volume, iterations=1), out=tmp_path / "run", quiet=True)
    assert summary["iteration"] == 1
