"""Every command and sub-command answers --help (the docstring is the help)."""

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from psc_seg.cli.main import app

runner = CliRunner()


def _command_paths(command, prefix=()):
    yield prefix
    for name, sub in getattr(command, "commands", {}).items():
        yield from _command_paths(sub, (*prefix, name))


PATHS = list(_command_paths(get_command(app)))


def test_every_stage_is_registered():
    top = {path[0] for path in PATHS if path}
    assert {"demo", "train", "predict", "segment", "evaluate", "info", "synth", "preview", "models"} <= top


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "psc-seg")
def test_help(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
