"""Running a training for real (issue 15): ``psc-seg train --resume RUN_DIR`` alone, presets
without data (``--show``, ``--list-presets``, the one-line refusal), validation volumes that do
not outlive an override of the training data, the last line naming its metric, curves.png at
each validation and TensorBoard scalars and images."""

from __future__ import annotations

import csv
import sys
import warnings

import pytest
import torch
import yaml
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.errors import Note, UserError
from psc_seg.pipelines.train import train
from psc_seg.train.config import list_presets, load_config, preset_description, preset_text
from psc_seg.train.loop import Trainer, smoothed

from .conftest import em_config, mri_config

runner = CliRunner()


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _data(volume) -> list[str]:
    """``--set`` options giving ``volume`` as the training data (and no validation)."""
    pair = f"{{raw: '{volume['raw']}', labels: '{volume['labels']}'}}"
    return ["--set", f"data.train=[{pair}]", "--set", "data.validation=[]"]


def _no_data(config: dict) -> dict:
    """``config`` without its volumes, as a preset is."""
    config["data"].pop("train")
    config["data"].pop("validation")
    return config


def test_resume_with_the_run_folder_alone_continues_as_an_uninterrupted_run(tmp_path, em_volume):
    config = em_config(em_volume, iterations=4, checkpoint_every=1, lr=2.0e-3)
    config["data"]["validation"] = []
    straight = train(config, out=tmp_path / "straight", quiet=True)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_no_data(em_config(em_volume, checkpoint_every=1))))
    run = tmp_path / "split"
    first = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--out", str(run), "-q", "-n", "2",
                                *_data(em_volume), "--set", "train.lr=2e-3"])
    assert first.exit_code == 0, first.output
    # the config file is gone: config, overrides and data come from the run folder
    (tmp_path / "c.yaml").unlink()
    second = runner.invoke(app, ["train", "--resume", str(run), "-q", "-n", "4"])
    assert second.exit_code == 0, second.output
    rows, straight_rows = _rows(run), _rows(tmp_path / "straight")
    assert [r["iteration"] for r in rows] == ["1", "2", "3", "4"]
    assert [float(r["loss"]) for r in rows] == pytest.approx([float(r["loss"]) for r in straight_rows], rel=1e-5)
    a, b = (torch.load(p, weights_only=True)["state_dict"] for p in (run / "checkpoints" / "last.pt", straight["last"]))
    for key, value in a.items():
        assert torch.allclose(value.float(), b[key].float(), rtol=1e-4, atol=1e-6), key
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["iterations"] == 4 and saved["train"]["lr"] == 2e-3
    assert straight["metric"] is None
    assert second.stdout.strip().splitlines()[-1] == (
        f"trained to iteration 4 (loss {float(rows[-1]['loss']):.4f}); no validation data (best.pt is the final "
        f"model); checkpoints in {run}/checkpoints")


def test_a_run_given_relative_paths_resumes_from_another_folder(tmp_path, em_volume, monkeypatch):
    """config.yaml stores the volumes' absolute paths: the run resumes wherever the user stands."""
    monkeypatch.chdir(tmp_path)  # em.h5 lies here: give it by a relative path
    relative = {"raw": "em.h5:/raw", "labels": "em.h5:/gt"}
    config = em_config(relative, iterations=1)
    config["data"]["validation"] = [{"raw": "em.h5:/raw", "labels": "em.h5:/gt"}]
    run = tmp_path / "run"
    train(config, out=run, quiet=True)
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert saved["train"] == [{"raw": f"{tmp_path}/em.h5:/raw", "labels": f"{tmp_path}/em.h5:/gt",
                               "mask": None, "roi": None}]
    assert saved["validation"][0]["raw"] == f"{tmp_path}/em.h5:/raw"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["train", "--resume", str(run), "-q", "-n", "2"])
    assert result.exit_code == 0, result.output
    assert [r["iteration"] for r in _rows(run)] == ["1", "2"]
    # the same config with its relative paths, given from the folder they are relative to, is the same run
    monkeypatch.chdir(tmp_path)
    assert train(config, out=run, resume=True, iterations=3, quiet=True)["iteration"] == 3


def test_the_runs_own_config_yaml_resumes_and_folder_mistakes_are_one_line(tmp_path, em_volume):
    config = em_config(em_volume, iterations=1, validate_every=10)
    config["data"]["validation"] = []
    run = tmp_path / "run"
    train(config, out=run, quiet=True)
    saved = str(run / "config.yaml")
    result = runner.invoke(app, ["train", saved, "--out", str(run), "--resume", "-n", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert "trained to iteration 2" in result.stdout and "no validation data" in result.stdout
    for args, words in [
        ([saved, "--out", str(run)], ["is where the run writes its resolved config", "pass --resume"]),
        ([str(run)], ["is a folder, not a config file; pass --resume"]),
        (["--resume", str(run), "--out", str(tmp_path / "other")], ["two run folders"]),
        (["--resume", str(tmp_path)], ["nothing to resume", "config.yaml' does not exist"]),
        (["--resume", str(run), "--set", "train.lr=0.5"], ["differs from the run's config.yaml in train.lr"]),
        (["--resume", str(run)], [f"the run in '{run}' is finished: trained to iteration 2 of train.iterations 2; "
                                  "pass --iterations with more to train longer"]),
    ]:
        failed = runner.invoke(app, ["train", *args, "-q"])
        assert failed.exit_code == 2, (args, failed.output)
        lines = failed.stderr.strip().splitlines()
        assert len(lines) == 1 and all(w in lines[0] for w in words), (args, lines)


def test_show_prints_the_preset_which_loads_once_data_is_given(tmp_path):
    result = runner.invoke(app, ["train", "--show", "em/unet-p2sc2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# The paper's EM UNet with P2SC2")
    assert '--set "data.train=[{raw: ' in result.stdout
    path = tmp_path / "mine.yaml"
    path.write_text(result.stdout)
    config = load_config(path, ["data.train=[{raw: a.zarr/raw, labels: a.zarr/gt}]"])
    assert config.model.conv == "psc(2,2)" and config.data.validation == []
    typo = runner.invoke(app, ["train", "--show", "em/unet-p2cs2"])
    assert typo.exit_code == 2 and "did you mean 'em/unet-p2sc2'" in typo.stderr


def test_list_presets_is_one_line_with_a_description_each():
    result = runner.invoke(app, ["train", "--list-presets"])
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list_presets()
    for line, name in zip(lines, list_presets()):
        description = preset_description(name)
        assert len(description) > 20 and line.endswith("  " + description), line


@pytest.mark.parametrize("name", ["em/unet-p2sc2", "mri/densenet-p2sc2", "em/demo-small"])
def test_a_preset_without_data_is_one_line_showing_the_set_form(name):
    result = runner.invoke(app, ["train", name, "-q"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f'error: preset {name} has no training data; give it with --set '
        '"data.train=[{raw: train.zarr/raw, labels: train.zarr/labels}]" (and data.validation likewise)')


def test_no_preset_points_at_files():
    """An installed wheel has no ../shared or data/ beside it: presets name no volumes."""
    for name in list_presets():
        data = yaml.safe_load(preset_text(name))["data"]
        assert "train" not in data and "validation" not in data, name


def test_the_set_form_shown_is_a_working_override():
    config = load_config("em/demo-small", ["data.train=[{raw: train.zarr/raw, labels: train.zarr/labels}]"])
    assert config.data.train[0].labels == "train.zarr/labels"


def test_overriding_the_training_data_drops_the_files_validation(tmp_path):
    path = tmp_path / "c.yaml"
    config = em_config({"raw": "a.h5:/raw", "labels": "a.h5:/gt"})
    config["data"]["validation"] = [{"raw": "b.h5:/raw", "labels": "b.h5:/gt"}]
    path.write_text(yaml.safe_dump(config))
    mine = "data.train=[{raw: mine.zarr/raw, labels: mine.zarr/gt}]"
    for overrides in ([mine], ["data.train.0.raw=mine.zarr/raw"]):
        with pytest.warns(Note, match=r"replaces the training data of .*c.yaml, so its data.validation \(b.h5:/raw\)"):
            assert load_config(path, overrides).data.validation == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Note)
        kept = load_config(path, [mine, "data.validation=[{raw: v.zarr/raw, labels: v.zarr/gt}]"])
        assert kept.data.validation[0].raw == "v.zarr/raw"
        assert load_config(path, ["train.lr=0.1"]).data.validation[0].raw == "b.h5:/raw"
    with pytest.raises(UserError, match=r"^config .*c.yaml has no training data; give it with --set"), \
            pytest.warns(Note, match="is left out"):
        load_config(path, ["data.train=[]"])


def test_the_last_line_names_mean_dice_for_mri(tmp_path, mri_volume):
    config = mri_config(mri_volume, iterations=1, validate_every=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 0, result.output
    assert "; best validation mean Dice " in result.stdout and "at iteration 1;" in result.stdout


def test_curves_are_redrawn_at_each_validation_and_the_last_line_names_vi(tmp_path, em_volume, monkeypatch):
    run = tmp_path / "run"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(em_config(em_volume, iterations=5, validate_every=2)))
    seen = []
    step = Trainer.step

    def watching(self, batch):
        curves = run / "curves.png"
        seen.append(curves.stat().st_mtime_ns if curves.exists() else None)
        return step(self, batch)

    monkeypatch.setattr(Trainer, "step", watching)
    result = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--out", str(run), "-q"])
    assert result.exit_code == 0, result.output
    # seen[i]: before iteration i + 1; drawn after the validations at iterations 2 and 4, before the end
    assert seen[:2] == [None, None] and None not in seen[2:]
    assert seen[2] == seen[3] < seen[4] and (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    rows = _rows(run)
    best = min(float(r["val_voi"]) for r in rows if r["val_voi"])
    at = next(r["iteration"] for r in rows if r["val_voi"] and float(r["val_voi"]) == best)
    assert f"; best validation VI {best:.4f} at iteration {at}; checkpoints in {run}/checkpoints" in result.stdout


def test_the_smoothed_loss_follows_the_trend():
    assert smoothed([]) == []
    assert smoothed([3.0, 1.0, 2.0], span=1) == [3.0, 1.0, 2.0]
    assert smoothed([2.0, 0.0], span=3) == [2.0, 1.0]  # weight 2 / (span + 1)
    noisy = [1.0 + (0.5 if i % 2 else -0.5) - i / 200 for i in range(200)]
    trend = smoothed(noisy)
    assert len(trend) == 200 and abs(trend[-1] - (1 - 199 / 200)) < 0.1
    assert max(abs(a - b) for a, b in zip(trend[100:], trend[101:])) < 0.15  # the zig-zag is gone


def test_tensorboard_gets_scalars_and_images(tmp_path, em_volume, mri_volume):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name, config, metric in [("em", em_config(em_volume, iterations=2, validate_every=2), "val_voi"),
                                 ("mri", mri_config(mri_volume, iterations=1, validate_every=1), "val_dice")]:
        train(config, out=tmp_path / name, quiet=True)
        events = EventAccumulator(str(tmp_path / name / "tensorboard"), size_guidance={"images": 0})
        events.Reload()
        tags = events.Tags()
        assert {"train/loss", "train/lr", f"validation/{metric}"} <= set(tags["scalars"]), tags
        assert [e.step for e in events.Scalars(f"validation/{metric}")] == [config["train"]["iterations"]]
        assert {"images/raw", "images/target", "images/prediction"} <= set(tags["images"]), tags
        raw = events.Images("images/raw")[-1]
        # a section of the scored region: the whole (labelled) volume's y, x
        assert (raw.height, raw.width) == (32, 32) and raw.step == config["train"]["iterations"]


def test_tensorboard_drops_what_a_resumed_run_trains_again(tmp_path, em_volume, monkeypatch):
    """A run killed after logging iteration 2 but before its checkpoint: the resumed run's
    iteration 2 replaces the first one's in TensorBoard, as in metrics.csv."""
    pytest.importorskip("tensorboard")
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, kept = tmp_path / "run", tmp_path / "last-at-1.pt"
    save = Trainer.save

    def keeping(self, name):
        path = save(self, name)
        if name == "last" and self.state.iteration == 1:
            shutil.copy(path, kept)
        return path

    monkeypatch.setattr(Trainer, "save", keeping)
    config = em_config(em_volume, iterations=2, checkpoint_every=1, validate_every=10)
    config["data"]["validation"] = []
    train(config, out=run, quiet=True)
    shutil.copy(kept, run / "checkpoints" / "last.pt")  # as if killed before the checkpoint of iteration 2
    train(config, out=run, resume=True, quiet=True)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2]
    assert losses[-1].value == pytest.approx(float(_rows(run)[-1]["loss"]), rel=1e-5)


def test_training_without_tensorboard_installed(tmp_path, em_volume, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    summary = train(em_config(em_volume, iterations=2, validate_every=2), out=tmp_path / "run", quiet=True)
    assert summary["iteration"] == 2 and not (tmp_path / "run" / "tensorboard").exists()
    assert torch.isfinite(torch.tensor(summary["loss"]))
