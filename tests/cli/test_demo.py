"""`psc-seg demo` end to end on tiny volumes (the real stages, a few training iterations)."""


import pytest
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.pipelines.demo import DemoSize, run_demo

TINY_EM = DemoSize((24, 64, 64), (16, 48, 48), iterations=2, max_seconds=60,
                   overrides=("train.patch_shape=[8,16,16]",))
TINY_MRI = DemoSize((32, 32, 32), (32, 32, 32), iterations=2, max_seconds=60,
                    overrides=("train.patch_shape=[16,16,16]",))


def test_em_demo_runs_every_stage(tmp_path):
    result = run_demo("em", out=tmp_path / "demo", size=TINY_EM, progress=False, log=lambda _: None)
    methods = {row["method"] for row in result["rows"]}
    assert methods == {"learned", "baseline"}
    for row in result["rows"]:
        assert row["voi"] == pytest.approx(row["voi_split"] + row["voi_merge"])
        assert 0 <= row["arand"] <= 1
    assert result["summary"]["iterations"] == 2
    assert all((tmp_path / "demo" / "previews" / p).exists() for p in
               ["1-test-ground-truth.png", "2-affinities.png", "3-segmentation-learned.png"])
    assert (tmp_path / "demo" / "run" / "checkpoints" / "last.pt").exists()


def test_mri_demo_runs_every_stage(tmp_path):
    result = run_demo("mri", out=tmp_path / "demo", size=TINY_MRI, progress=False, log=lambda _: None)
    (row,) = result["rows"]
    assert set(row["dice"]) == {"1", "2", "3"}
    assert 0 <= result["summary"]["mean_dice"] <= 1
    assert (tmp_path / "demo" / "tissue.nii.gz").exists()


def test_demo_cli_refuses_existing_output_and_bad_task(tmp_path):
    runner = CliRunner()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "full")])
    assert result.exit_code == 2 and "choose an empty or new folder" in result.output
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    result = runner.invoke(app, ["demo", "--task", "video", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "em" in result.output
    assert runner.invoke(app, ["demo", "--help"]).exit_code == 0
