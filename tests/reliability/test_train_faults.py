"""`psc-seg train`, `demo` and `synth` faults: folders and files psc-seg did not write are never
removed, a resume checkpoint that does not fit, NaN / Inf in raw, bad options (RELIABILITY.md)."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.io import create_volume
from psc_seg.models import build_model, save_checkpoint
from tests.train.conftest import _one_thread, blob_labels, em_config

pytestmark = pytest.mark.usefixtures(_one_thread.__name__)  # tiny tensors: one thread each
runner = CliRunner()


@pytest.fixture
def em_volume(tmp_path):
    """``em.h5`` with ``/raw`` (uint8) and ``/gt`` (16 x 32 x 32)."""
    labels = blob_labels()
    raw = np.where(labels == 0, 60, 180).astype(np.uint8)
    path = tmp_path / "em.h5"
    with h5py.File(path, "w") as f:
        f["raw"], f["gt"] = raw, labels
    return {"raw": f"{path}:/raw", "labels": f"{path}:/gt"}


def _config(tmp_path, volume, name="config.yaml", **train):
    """A 2-iteration config without validation, written to ``tmp_path/name``."""
    config = em_config(volume, iterations=2, **train)
    config["data"]["validation"] = []
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _fails(args, *words):
    """Run the CLI; assert exit 2, one line ``error: ...`` holding ``words``, no traceback."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def _train(args):
    result = runner.invoke(app, ["train", *args, "-q"])
    assert result.exit_code == 0, result.output
    return result


# ------------------------------------------------------------------ case 1: folders that are not runs

def test_train_refuses_a_users_folder_and_removes_nothing(tmp_path, em_volume):
    config = _config(tmp_path, em_volume)
    folder = tmp_path / "mine"
    for name in ("validation", "tensorboard"):
        (folder / name).mkdir(parents=True)
        (folder / name / "precious.txt").write_text(name)
    for name in ("config.yaml", "metrics.csv", "curves.png"):
        (folder / name).write_text(f"my {name}")
    before = _tree(folder)
    for flags in ([], ["--overwrite"], ["--resume"]):
        _fails(["train", config, "--out", str(folder), *flags], "not a psc-seg run folder",
               "choose an empty or new folder")
        assert _tree(folder) == before


def test_train_out_that_is_a_file_is_refused(tmp_path, em_volume):
    (tmp_path / "file").write_text("mine")
    _fails(["train", _config(tmp_path, em_volume), "--out", str(tmp_path / "file")], "is a file")
    assert (tmp_path / "file").read_text() == "mine"


def test_train_overwrite_removes_only_what_the_run_wrote(tmp_path, em_volume):
    config = _config(tmp_path, em_volume)
    run = tmp_path / "run"
    _train([config, "--out", str(run)])
    marker = json.loads((run / ".psc-seg-run").read_text())
    assert {"checkpoints", "config.yaml", "metrics.csv"} <= set(marker["entries"])
    (run / "notes.txt").write_text("mine")
    (run / "figures").mkdir()
    _fails(["train", config, "--out", str(run)], "already holds a run", "--resume", "--overwrite")
    _train([config, "--out", str(run), "--overwrite", "-n", "1"])
    assert (run / "notes.txt").read_text() == "mine" and (run / "figures").is_dir()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["iterations"] == 1


def test_train_config_file_may_lie_in_the_new_run_folder(tmp_path, em_volume):
    run = tmp_path / "run"
    run.mkdir()
    config = _config(run, em_volume, name="my-config.yaml")
    _train([config, "--out", str(run)])
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "my-config.yaml").is_file()


def test_run_folder_from_before_markers_resumes_and_overwrite_keeps_other_files(tmp_path, em_volume):
    config = _config(tmp_path, em_volume)
    run = tmp_path / "run"
    _train([config, "--out", str(run)])
    (run / ".psc-seg-run").unlink()  # as psc-seg wrote runs before the marker
    _train([config, "--out", str(run), "--resume", "-n", "3"])
    assert (run / ".psc-seg-run").is_file()  # adopted
    (run / ".psc-seg-run").unlink()
    (run / "notes.txt").write_text("mine")
    _fails(["train", config, "--out", str(run)], "already holds a run")
    _train([config, "--out", str(run), "--overwrite", "-n", "1"])
    assert (run / "notes.txt").read_text() == "mine"
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["metadata"]["iteration"] == 1


def test_demo_overwrite_refuses_a_users_folder(tmp_path):
    folder = tmp_path / "mine"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "scan.zarr").write_text("mine")
    (folder / "keep.txt").write_text("mine")
    before = _tree(folder)
    for flags in ([], ["--overwrite"]):
        _fails(["demo", "--out", str(folder), *flags], "choose an empty or new folder")
        assert _tree(folder) == before


def test_demo_overwrite_removes_only_what_the_demo_wrote(tmp_path, monkeypatch):
    import psc_seg.pipelines.demo as demo

    def fake_run(out, **kwargs):  # the demo's stages, without their minutes
        (out / "run").mkdir()
        (out / "previews").mkdir()
        (out / "extra-output.zarr").mkdir()
        (out / ".extra-output.zarr.psc-seg-blocks").mkdir()
        return {"rows": [], "previews": [], "summary": {}}

    monkeypatch.setattr(demo, "_run_em", fake_run)
    out = tmp_path / "demo"
    demo.run_demo("em", out=out, log=lambda _: None)
    assert "extra-output.zarr" in json.loads((out / ".psc-seg-demo").read_text())["entries"]
    (out / "notes.txt").write_text("mine")
    _fails(["demo", "--out", str(out)], "--overwrite")
    demo.run_demo("em", out=out, overwrite=True, log=lambda _: None)
    assert sorted(p.name for p in out.iterdir()) == [
        ".extra-output.zarr.psc-seg-blocks", ".psc-seg-demo", "extra-output.zarr", "notes.txt", "previews", "run"]
    assert (out / "notes.txt").read_text() == "mine"
    assert "notes.txt" not in json.loads((out / ".psc-seg-demo").read_text())["entries"]


@pytest.mark.parametrize("name", ["mine.zarr", "mine.h5"])
def test_synth_em_overwrite_refuses_a_container_it_did_not_write(tmp_path, name):
    path = tmp_path / name
    spec = f"{path}/raw" if name.endswith(".zarr") else f"{path}:/raw"
    volume = create_volume(spec, shape=(8, 8, 8), dtype=np.uint8)
    volume.write(None, np.full((8, 8, 8), 7, np.uint8))
    volume.finalize()
    before = _tree(tmp_path)
    _fails(["synth", "em", str(path), "--shape", "24", "32", "32", "--overwrite"], "not written by psc-seg synth",
           "--overwrite")
    assert _tree(tmp_path) == before
    # a container synth wrote is replaced
    ours = tmp_path / f"ours{path.suffix}"
    for seed in ("0", "1"):
        result = runner.invoke(app, ["synth", "em", str(ours), "--shape", "24", "32", "32", "--seed", seed,
                                     "--overwrite"])
        assert result.exit_code == 0, result.output
    # one of the user's datasets beside synth's arrays: the container is no longer synth's alone
    if name.endswith(".h5"):
        with h5py.File(ours, "a") as f:
            f["notes"] = np.arange(3)
        _fails(["synth", "em", str(ours), "--shape", "24", "32", "32", "--overwrite"], "holds notes")
        with h5py.File(ours, "r") as f:
            assert list(f["notes"][:]) == [0, 1, 2]


def test_synth_mri_overwrite_refuses_nifti_it_did_not_write(tmp_path):
    import nibabel as nib

    folder = tmp_path / "mri"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.ones((24, 24, 24), np.float32), np.eye(4)), folder / "raw.nii.gz")
    before = _tree(folder)
    _fails(["synth", "mri", str(folder), "--shape", "24", "24", "24", "--overwrite"], "raw.nii.gz",
           "not written by psc-seg synth")
    assert _tree(folder) == before
    (folder / "raw.nii.gz").unlink()
    for seed in ("0", "1"):  # its own files are replaced
        result = runner.invoke(app, ["synth", "mri", str(folder), "--shape", "24", "24", "24", "--seed", seed,
                                     "--overwrite"])
        assert result.exit_code == 0, result.output


# ------------------------------------------------------------------ case 2: a last.pt that does not fit

def test_resume_from_a_last_pt_of_another_network(tmp_path, em_volume):
    config = _config(tmp_path, em_volume)
    run = tmp_path / "run"
    _train([config, "--out", str(run)])
    (run / "config.yaml").unlink()  # nothing to compare the config with: the checkpoint tells
    other = _config(tmp_path, em_volume, name="other.yaml")
    other_run = tmp_path / "other"
    _train([other, "--out", str(other_run), "--set", "model.conv=conv3d"])
    shutil.copy(other_run / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    before = _tree(run)
    _fails(["train", config, "--out", str(run), "--resume", "-n", "3"], "another network",
           "conv 'conv3d' in the checkpoint, 'psc(2,2)' in the config", "--overwrite")
    assert _tree(run) == before


def test_resume_from_a_last_pt_without_optimizer_state(tmp_path, em_volume):
    config = _config(tmp_path, em_volume)
    run = tmp_path / "run"
    _train([config, "--out", str(run)])
    last = run / "checkpoints" / "last.pt"
    payload = torch.load(last, weights_only=True)
    model = build_model(payload["model"]["name"], **payload["model"]["kwargs"])
    save_checkpoint(last, model, metadata=payload["metadata"])  # the model alone, as `models init` writes
    before = _tree(run)
    _fails(["train", config, "--out", str(run), "--resume", "-n", "3"], "no optimizer / iteration / rng state",
           "--overwrite")
    assert _tree(run) == before
    _train([config, "--out", str(run), "--overwrite"])  # what the message says works


# ------------------------------------------------------------------ case 3: NaN / Inf in raw

@pytest.mark.parametrize("preload, normalize", [(False, "uint8"), (False, "zscore"), (True, "zscore")],
                         ids=["lazy-uint8", "lazy-zscore", "preload-zscore"])
def test_nan_or_inf_in_raw_is_refused_naming_the_volume_and_voxel(tmp_path, preload, normalize):
    labels = blob_labels()
    raw = np.where(labels == 0, 60.0, 180.0).astype(np.float32)
    raw[5, 6, 7] = np.nan if not preload else np.inf
    raw[9, 9, 9] = np.nan
    path = tmp_path / "nan.h5"
    with h5py.File(path, "w") as f:
        f["raw"], f["gt"] = raw, labels
    volume = {"raw": f"{path}:/raw", "labels": f"{path}:/gt"}
    config = _config(tmp_path, volume)
    run = tmp_path / "run"
    _fails(["train", config, "--out", str(run), "--set", f"data.preload={str(preload).lower()}",
            "--set", f"data.normalize={{kind: {normalize}}}"],
           f"raw '{path}:/raw' holds NaN or infinite values", "(z, y, x) = (5, 6, 7)", "clean it before training")
    assert not run.exists()


def test_a_data_fault_found_in_a_loader_worker_is_one_line(tmp_path):
    path = tmp_path / "unlabelled.h5"
    with h5py.File(path, "w") as f:  # labels all 0 (unlabelled): found when a worker draws patches
        f["raw"], f["gt"] = np.full((16, 32, 32), 100, np.uint8), np.zeros((16, 32, 32), np.uint64)
    config = _config(tmp_path, {"raw": f"{path}:/raw", "labels": f"{path}:/gt"}, num_workers=1)
    _fails(["train", config, "--out", str(tmp_path / "run"), "-q"], "no training patch with labelled voxels")


def test_training_that_diverges_is_one_line_and_overwrite_starts_again(tmp_path, em_volume):
    config = _config(tmp_path, em_volume, checkpoint_every=1)
    run = tmp_path / "run"
    _fails(["train", config, "--out", str(run), "-q", "--set", "train.lr=1e8"], "at iteration 2: training diverged",
           "lower train.lr (now 1e+08)", "--overwrite")
    _train([config, "--out", str(run), "--overwrite"])


# ------------------------------------------------------------------ case 4: options checked before outputs

@pytest.mark.parametrize("args, words", [
    (["--device", "tpu"], ["--device must be cpu or cuda"]),
    (["--set", "train.batch_size=0"], ["train.batch_size"]),
    (["--set", "train.itertions=3"], ["did you mean 'train.iterations'"]),
    (["--resume"], ["nothing to resume"]),
], ids=["device", "batch_size-0", "misspelt-key", "resume-nothing"])
def test_train_bad_option_leaves_no_run_folder(tmp_path, em_volume, args, words):
    run = tmp_path / "run"
    _fails(["train", _config(tmp_path, em_volume), "--out", str(run), *args], *words)
    assert not run.exists()
