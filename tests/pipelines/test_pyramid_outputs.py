"""predict and segment write OME-Zarr pyramids (mean for affinities, mode for labels) after level
0, in process and on dask workers; an output is complete only with its last level (a run that
dies while building it is refused as an input and finished by --resume); --no-pyramid."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.errors import Interrupted, UserError
from psc_seg.io import open_volume
from psc_seg.io.pyramid import PyramidStep, downsample
from psc_seg.pipelines.predict import predict
from psc_seg.pipelines.segment import segment
from tests.pipelines.conftest import seeded_raw

runner = CliRunner()
BLOCK = (16, 32, 36)  # 16 blocks; pyramid level 1 (32, 32, 36): 2 blocks


def _attrs(path) -> dict:
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    return attrs.get("ome", attrs)


def _levels(path) -> list[np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return [group[d["path"]][...] for d in _attrs(path)["multiscales"][0]["datasets"]]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A seeded ``(64, 64, 72)`` uint8 volume at 8 nm: one pyramid level (32, 32, 36)."""
    spec = str(tmp_path_factory.mktemp("raw") / "raw.zarr")
    seeded_raw(spec, (64, 64, 72))
    return spec


@pytest.fixture(scope="module")
def affinities(tmp_path_factory, raw, checkpoint):
    spec = str(tmp_path_factory.mktemp("affs") / "affs.zarr")
    predict(checkpoint, raw, spec, block_shape=BLOCK, progress=False)
    return spec


def test_predict_writes_a_mean_pyramid(affinities):
    levels = _levels(affinities)
    assert [lv.shape for lv in levels] == [(3, 64, 64, 72), (3, 32, 32, 36)]
    np.testing.assert_array_equal(levels[1], downsample(levels[0], (2, 2, 2), "mean"))
    assert open_volume(affinities).complete and open_volume(affinities).shape == (3, 64, 64, 72)
    ms = _attrs(affinities)["multiscales"][0]
    assert ms["datasets"][1]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 16.0, 16.0, 16.0]}, {"type": "translation", "translation": [0.0, 4.0, 4.0, 4.0]}]
    assert "image-label" not in _attrs(affinities)
    shown = runner.invoke(app, ["info", affinities])
    assert shown.exit_code == 0 and "pyramid     (32, 32, 36) (OME-Zarr levels" in shown.output, shown.output


def test_predict_pyramid_on_workers_equals_in_process(tmp_path, raw, checkpoint, affinities):
    out = str(tmp_path / "workers.zarr")
    predict(checkpoint, raw, out, block_shape=BLOCK, workers=2, progress=False)
    for got, want in zip(_levels(out), _levels(affinities), strict=True):
        np.testing.assert_array_equal(got, want)


def test_no_pyramid_writes_level_0_only(tmp_path, raw, checkpoint, affinities):
    out = str(tmp_path / "flat.zarr")
    result = runner.invoke(app, ["predict", str(checkpoint), raw, out, "--block-shape", "16", "32", "36",
                                 "--no-pyramid", "-q"])
    assert result.exit_code == 0, result.output
    levels = _levels(out)
    assert len(levels) == 1
    np.testing.assert_array_equal(levels[0], _levels(affinities)[0])
    with pytest.raises(UserError, match=r"complete but was written with other settings"):  # pyramid or not: settings
        predict(checkpoint, raw, out, block_shape=BLOCK, resume=True, progress=False)
    predict(checkpoint, raw, out, block_shape=BLOCK, overwrite=True, progress=False)  # built beside, swapped in
    for got, want in zip(_levels(out), _levels(affinities), strict=True):
        np.testing.assert_array_equal(got, want)
    assert "--no-pyramid" in runner.invoke(app, ["segment", "--help"]).output


def _fail_at(monkeypatch, n: int, error: type[BaseException]) -> None:
    original, calls = PyramidStep.compute, []

    def compute(self, region):
        calls.append(1)
        if len(calls) == n:
            raise error("stopped while building the pyramid")
        return original(self, region)

    monkeypatch.setattr(PyramidStep, "compute", compute)


def test_a_run_that_dies_in_the_pyramid_is_unfinished_and_resume_completes_it(tmp_path, raw, checkpoint,
                                                                              affinities, monkeypatch):
    out = tmp_path / "affs.zarr"
    _fail_at(monkeypatch, 2, RuntimeError)  # as a killed run: level 0 written, 1 of 2 pyramid blocks
    with pytest.raises(RuntimeError, match="stopped while building"):
        predict(checkpoint, raw, str(out), block_shape=BLOCK, progress=False)
    monkeypatch.undo()
    assert not open_volume(str(out)).complete
    assert (out / "0" / ".psc-seg-pyramid-1" / "done.log").read_text().count("\n") == 1
    with pytest.raises(UserError, match=r"affinities '.*' are unfinished: all 16 blocks written, not yet its "
                                         r"pyramid levels; finish them with `.*--resume`"):  # not an input yet
        segment(str(out), str(tmp_path / "seg.zarr"), progress=False)
    summary = predict(checkpoint, raw, str(out), block_shape=BLOCK, resume=True, progress=False)
    assert summary["computed"] == 0  # level 0 kept; the pyramid finished from its record
    assert open_volume(str(out)).complete
    for got, want in zip(_levels(out), _levels(affinities), strict=True):
        np.testing.assert_array_equal(got, want)


def test_ctrl_c_in_the_pyramid_says_what_is_kept(tmp_path, raw, checkpoint, monkeypatch):
    _fail_at(monkeypatch, 2, KeyboardInterrupt)
    with pytest.raises(Interrupted, match=r"all 16 blocks of .*affs\.zarr are kept; its pyramid is unfinished"):
        predict(checkpoint, raw, str(tmp_path / "affs.zarr"), block_shape=BLOCK, progress=False)


@pytest.mark.parametrize("blockwise", [False, True])
def test_segmentations_carry_image_label_and_a_mode_pyramid(tmp_path, affinities, blockwise):
    out = tmp_path / "seg.zarr"
    kwargs = {"block_shape": (32, 32, 36)} if blockwise else {}
    segment(affinities, str(out), thresholds=[0.5], progress=False, **kwargs)
    assert "image-label" in _attrs(out) and _attrs(out)["multiscales"][0]["type"] == "mode"
    levels = _levels(out)
    assert [lv.shape for lv in levels] == [(64, 64, 72), (32, 32, 36)]
    assert set(np.unique(levels[1])) <= set(np.unique(levels[0]))
    np.testing.assert_array_equal(levels[1], downsample(levels[0], (2, 2, 2), "mode"))
    assert open_volume(str(out)).complete


def test_segment_into_the_labels_group_of_the_raw_image(tmp_path, raw, affinities):
    image = tmp_path / "raw.zarr"
    shutil.copytree(raw, image)
    (out,) = segment(affinities, f"{image}/labels/seg", thresholds=[0.5], progress=False)
    assert _attrs(image / "labels")["labels"] == ["seg"]
    assert _attrs(image / "labels" / "seg")["image-label"] == {"source": {"image": "../../"}}
    assert open_volume(out).complete and open_volume(out).shape == (64, 64, 72)
    np.testing.assert_array_equal(open_volume(str(image)).read(), open_volume(raw).read())  # the raw as it was


def test_synth_writes_pyramids_raw_by_mean_labels_by_mode(tmp_path):
    from psc_seg.pipelines.synth import synth_em

    specs = synth_em(tmp_path / "em.zarr", shape=(64, 64, 64))["specs"]
    assert _attrs(specs["raw"])["multiscales"][0]["type"] == "mean" and "image-label" not in _attrs(specs["raw"])
    for name in ("labels", "mask"):
        assert "image-label" in _attrs(specs[name]) and _attrs(specs[name])["multiscales"][0]["type"] == "mode"
        levels = _levels(specs[name])
        np.testing.assert_array_equal(levels[1], downsample(levels[0], (2, 2, 2), "mode"))
        assert open_volume(specs[name]).complete
