"""Every option is checked before any output is made (issue 13: `segment --workers -1` made the
outputs, then the corrected rerun was refused as "already exists"). For each command, a bad
option fails in one line, leaves the folder as it was, and the corrected command then runs
without --resume or --overwrite. (train: tests/reliability/test_train_faults.py.)"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.io import create_volume
from tests.pipelines.conftest import seeded_raw

runner = CliRunner()


def _free_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NOBODY = f"tcp://127.0.0.1:{_free_port()}"


def _ids(cases) -> list[str]:
    """Test ids from the options of each case: ``workers_-1``, ``scheduler_unreachable``."""
    def word(option: str) -> str:
        if option == NOBODY:
            return "unreachable"
        return option if option.lstrip("-").replace(".", "").isdigit() else option.lstrip("-")

    return ["_".join(map(word, options)) for options, _ in cases]


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _refused(args, words, folder):
    """Run the CLI; assert exit 2, an ``error:`` line (or, for typer's own range checks, its
    message) holding ``words``, no traceback, and ``folder`` unchanged."""
    before = _listing(folder)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    text = " ".join(result.stderr.split())
    if not text.startswith("Usage:"):  # typer's usage errors are boxed; ours are one line
        assert len(result.stderr.strip().splitlines()) == 1 and text.startswith("error: "), result.stderr
    for word in words:
        assert word in text, text
    assert _listing(folder) == before


@pytest.fixture(scope="module")
def affinities(tmp_path_factory, checkpoint):
    """Affinities predicted from a seeded ``(32, 32, 32)`` volume (``raw.zarr`` beside them)."""
    folder = tmp_path_factory.mktemp("affs")
    raw = str(folder / "raw.zarr")
    seeded_raw(raw, (32, 32, 32))
    result = runner.invoke(app, ["predict", str(checkpoint), raw, str(folder / "affs.zarr"), "-q"])
    assert result.exit_code == 0, result.output
    return str(folder / "affs.zarr")


PREDICT_CASES = [
    (["--workers", "-1"], ["Invalid value for '--workers'"]),
    (["--batch-size", "0"], ["Invalid value for '--batch-size'"]),
    (["--block-shape", "5", "8", "8"], ["--block-shape 5 8 8 must be a multiple of the model's shape step"]),
    (["--dtype", "int8"], ["--dtype must be one of float32, uint8"]),
    (["--precision", "half"], ["--precision must be one of"]),
    (["--device", "tpu"], ["--device must be cpu or cuda"]),
    (["--normalize", "foo"], ["--normalize must be one of"]),
    (["--scheduler", "nonsense"], ["--scheduler 'nonsense' is not a dask scheduler address"]),
    (["--scheduler", NOBODY], [f"cannot reach the dask scheduler at '{NOBODY}'"]),
    (["--workers", "1", "--scheduler", NOBODY], ["--workers and --scheduler exclude each other"]),
    (["--resume", "--overwrite"], ["--resume and --overwrite exclude each other"]),
]


@pytest.mark.parametrize("options, words", PREDICT_CASES, ids=_ids(PREDICT_CASES))
def test_predict_bad_option_makes_no_output(tmp_path, raw_zarr, checkpoint, options, words):
    out = str(tmp_path / "pred.zarr")
    _refused(["predict", str(checkpoint), raw_zarr, out, "-q", *options], words, tmp_path)
    result = runner.invoke(app, ["predict", str(checkpoint), raw_zarr, out, "-q"])  # corrected: no flag needed
    assert result.exit_code == 0, result.output


BLOCKS = ["--block-shape", "16", "16", "16"]
SEGMENT_CASES = [
    (["--workers", "-1", *BLOCKS], ["--workers must be >= 0, got -1"]),
    (["--workers", "-1"], ["--workers / --scheduler need --block-shape"]),
    (["--scheduler", NOBODY, *BLOCKS], [f"cannot reach the dask scheduler at '{NOBODY}'"]),
    (["--scheduler", "nonsense", *BLOCKS], ["is not a dask scheduler address"]),
    (["--workers", "1", "--scheduler", NOBODY, *BLOCKS], ["--workers and --scheduler exclude each other"]),
    (["--block-shape", "0", "16", "16"], ["--block-shape needs three positive sizes"]),
    (["--threshold", "2"], ["thresholds must lie in [0, 1]"]),
    (["--min-size", "-1"], ["--min-size must be >= 0"]),
    (["--scoring", "x"], ["unknown --scoring 'x'"]),
    (["--fragments", "x"], ["unknown --fragments 'x'"]),
    (["--decoder", "x"], ["unknown --decoder 'x'"]),
    (["--offsets", "[[1]]"], ["--offsets must be a list of (dz, dy, dx) triples"]),
    (["-t", "0.5", "-t", "0.501"], ["give the same output name at two decimals"]),
    (["--resume", "--overwrite"], ["--resume and --overwrite exclude each other"]),
]


@pytest.mark.parametrize("options, words", SEGMENT_CASES, ids=_ids(SEGMENT_CASES))
def test_segment_bad_option_makes_no_output(tmp_path, affinities, options, words):
    out = str(tmp_path / "seg.zarr")
    _refused(["segment", affinities, out, "-q", *options], words, tmp_path)
    blockwise = BLOCKS if "--block-shape" in options or "--workers" in options else []
    result = runner.invoke(app, ["segment", affinities, out, "-q", *blockwise])
    assert result.exit_code == 0, result.output


@pytest.fixture
def labels(tmp_path):
    """``gt.zarr`` and ``seg.zarr``: two small label volumes."""
    specs = {}
    for name, seed in (("gt", 0), ("seg", 1)):
        spec = str(tmp_path / f"{name}.zarr")
        volume = create_volume(spec, shape=(8, 8, 8), dtype=np.uint64)
        volume.write(None, np.random.default_rng(seed).integers(0, 4, (8, 8, 8)).astype(np.uint64))
        volume.finalize()
        specs[name] = spec
    return specs


@pytest.fixture
def no_scoring(monkeypatch):
    """Scoring fails the test: the refusals must come before it."""
    import psc_seg.pipelines.evaluate as evaluate

    def scored(*args, **kwargs):
        raise AssertionError("scored before the options were checked")

    monkeypatch.setattr(evaluate, "contingency_tables_blockwise", scored)


def test_evaluate_json_that_is_a_folder_fails_before_scoring(tmp_path, labels, no_scoring):
    folder = tmp_path / "reports"
    folder.mkdir()
    _refused(["evaluate", labels["seg"], "--gt", labels["gt"], "--json", str(folder)],
             ["--json", "is a folder; give a file name"], tmp_path)


@pytest.mark.parametrize("where, words", [
    ("missing/scores.json", ["is in a folder that does not exist"]),
    ("notes.txt", ["exists and is not an evaluate report"]),
    ("gt.zarr/scores.json", ["lies in the input"]),
], ids=["missing-folder", "not-a-report", "inside-an-input"])
def test_evaluate_json_that_would_destroy_something_fails_before_scoring(tmp_path, labels, no_scoring, where,
                                                                          words):
    (tmp_path / "notes.txt").write_text("mine")
    _refused(["evaluate", labels["seg"], "--gt", labels["gt"], "--json", str(tmp_path / where)], words, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_evaluate_bad_mask_writes_no_report(tmp_path, labels):
    report = tmp_path / "scores.json"
    _refused(["evaluate", labels["seg"], "--gt", labels["gt"], "--mask", str(tmp_path / "missing.zarr"),
              "--json", str(report)], ["missing.zarr"], tmp_path)
    result = runner.invoke(app, ["evaluate", labels["seg"], "--gt", labels["gt"], "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["rows"][0]["prediction"] == labels["seg"]
