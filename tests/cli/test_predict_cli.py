"""psc-seg predict's options reach the stage: --precision."""

from typer.testing import CliRunner

from psc_seg.cli.main import app


def test_precision_bfloat16_on_cpu_is_a_one_line_error(tmp_path):
    # refused before the checkpoint or the input is opened
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "m.pt"), str(tmp_path / "raw.zarr"),
                                   str(tmp_path / "out.zarr"), "--precision", "bfloat16", "--device", "cpu"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: --precision bfloat16 is for --device cuda; on CPU predict runs in float32"]
