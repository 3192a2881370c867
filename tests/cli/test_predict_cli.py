"""psc-seg predict's options reach the stage: --precision."""

from typer.testing import CliRunner

from psc_seg.cli.main import app


def test_precision_float16_on_cpu_is_a_one_line_error(tmp_path):
    # refused before the checkpoint or the input is opened
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "m.pt"), str(tmp_path / "raw.zarr"),
                                   str(tmp_path / "out.zarr"), "--precision", "float16", "--device", "cpu"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: --precision float16 is for --device cuda; on CPU use float32, bfloat16 or auto"]
