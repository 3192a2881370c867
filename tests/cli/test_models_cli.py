"""`psc-seg models`, `--help`, `--version` and the one-line error contract, through CliRunner."""

import json

from typer.testing import CliRunner

from psc_seg import __version__
from psc_seg.cli.main import app
from psc_seg.models import load_checkpoint

runner = CliRunner()


def test_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "models" in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_models_list_json():
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    unet = next(row for row in data["models"] if row["name"] == "unet")
    assert set(unet["parameters"]) == {"conv3d", "psc(1,1)", "psc(2,2)", "psc(2,3)", "psc(3,2)"}
    assert unet["parameters"]["psc(2,2)"] < 0.65 * unet["parameters"]["conv3d"]
    paper = next(row for row in data["models"] if row["name"] == "densenet" and row["variant"] == "paper")
    assert abs(paper["parameters"]["conv3d"] - 5.2e6) < 0.52e6  # the paper's DenseNet: 5.2M
    table = runner.invoke(app, ["models", "list"])
    assert table.exit_code == 0 and "unet" in table.output and "densenet" in table.output
    assert "densenet (paper)" in table.output


def test_models_init_writes_loadable_checkpoint(tmp_path):
    out = tmp_path / "m.pt"
    args = ["models", "init", "unet", str(out), "--conv", "psc(2,2)", "--set", "num_fmaps=3",
            "--set", "downsample_factors=[[1,2,2],[1,2,2]]"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    assert ckpt.kwargs["num_fmaps"] == 3 and ckpt.kwargs["downsample_factors"] == [[1, 2, 2], [1, 2, 2]]
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_bad_spec_and_key_are_one_line_errors(tmp_path):
    for extra in (["--conv", "psc(4,1)"], ["--set", "bogus=1"], ["--set", "novalue"]):
        result = runner.invoke(app, ["models", "init", "unet", str(tmp_path / "x.pt"), *extra])
        assert result.exit_code == 2
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ")
        assert "Traceback" not in result.output
    assert not (tmp_path / "x.pt").exists()
