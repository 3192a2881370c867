"""predict --precision on CPU: bfloat16 against float32 with the demo's trained network, the
choice in the provenance, a resumed auto run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from psc_seg.evaluate.metrics import variation_of_information
from psc_seg.io import open_volume
from psc_seg.pipelines.predict import predict
from psc_seg.pipelines.segment import segment
from psc_seg.pipelines.synth import synth_em

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo-em.pt"  # how it was made: tests/data/README.md


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The demo's test volume (synth em, seed 1, as `psc-seg demo` makes it, smaller) predicted
    by the demo's trained network in float32 and in bfloat16."""
    root = tmp_path_factory.mktemp("precision")
    test = synth_em(root / "em-test.zarr", shape=(24, 64, 64), seed=1, zero_membranes=True)
    outputs = {}
    for precision in ("float32", "bfloat16"):
        out = root / f"affs-{precision}.zarr"
        summary = predict(DEMO, test["specs"]["raw"], str(out), precision=precision, progress=False)
        assert summary["precision"].used == precision
        outputs[precision] = str(out)
    return root, test["specs"], outputs


def test_bfloat16_affinities_are_within_1e_2_of_float32(both):
    """A trained network's bfloat16 affinities: 99.9 % within 1e-2 of float32's, none more than
    2e-2 off (the full-resolution level runs in float32: engine.precision.to_bfloat16)."""
    root, specs, outputs = both
    f32, bf16 = (open_volume(outputs[p]).read() for p in ("float32", "bfloat16"))
    assert f32.std() > 0.2  # a trained network's confident affinities
    difference = np.abs(bf16 - f32)
    assert difference.mean() <= 1e-3 and np.quantile(difference, 0.999) <= 1e-2 and difference.max() <= 2e-2
    assert 0 < difference.max()  # it did compute in bfloat16
    compute = open_volume(outputs["bfloat16"]).attrs["psc_seg"]["provenance"]["config"]["compute_precision"]
    assert compute["used"] == compute["requested"] == "bfloat16" and compute["cpu"]["model"]


def test_bfloat16_segmentation_is_within_vi_0_01_of_float32s(both):
    root, specs, outputs = both
    gt = open_volume(specs["labels"]).read()
    thresholds = [0.3, 0.4, 0.5, 0.6, 0.7]
    vi = {}
    for precision, affs in outputs.items():
        segs = segment(affs, str(root / f"seg-{precision}.zarr"), thresholds=thresholds, scoring="hist_quant_75",
                       progress=False)  # as the demo segments
        vi[precision] = [sum(variation_of_information(gt, open_volume(seg).read())) for seg in segs]
    assert min(vi["float32"]) < 1.0  # the network segments the demo volume
    for t, v32, v16 in zip(thresholds, vi["float32"], vi["bfloat16"]):
        assert abs(v16 - v32) <= 0.01, (t, v32, v16)


def test_a_resumed_auto_run_keeps_the_precision_it_started_with(both, monkeypatch):
    """An output begun in bfloat16 is continued in bfloat16 by --resume with auto, whatever auto
    would pick now (float32 here: the tests' PSC_SEG_AUTO_BF16=0)."""
    root, specs, outputs = both
    summary = predict(DEMO, specs["raw"], outputs["bfloat16"], precision="auto", resume=True, progress=False)
    assert summary["precision"].used == "bfloat16" and summary["computed"] == 0
    assert summary["precision"].reason == "the precision of the run being resumed"
