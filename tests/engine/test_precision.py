"""psc_seg.engine.precision: what predict computes in, and why."""

from __future__ import annotations

import pytest
import torch

from psc_seg.engine import precision as precision_module
from psc_seg.engine.precision import (
    MIN_SPEEDUP, calibrate, calibration_shape, check_precision, choose_precision, cpu_info,
)
from psc_seg.errors import UserError
from psc_seg.models import build_model


@pytest.fixture(autouse=True)
def auto_bf16(monkeypatch):
    """These tests are about auto's choice: tests/conftest.py's PSC_SEG_AUTO_BF16=0 lifted."""
    monkeypatch.delenv("PSC_SEG_AUTO_BF16", raising=False)


def _unet():
    torch.manual_seed(0)
    return build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[2, 2, 2]]).eval()


def test_bad_precisions_are_refused_before_any_work():
    with pytest.raises(UserError, match="precision must be one of auto, float32, bfloat16, float16"):
        check_precision("int8", "cpu")
    with pytest.raises(UserError, match="float16 is for --device cuda; on CPU use float32, bfloat16 or auto"):
        check_precision("float16", "cpu")


def test_auto_never_picks_bfloat16_without_the_instructions(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_info", lambda: ("Some CPU", ()))

    def measure(model, shape):
        raise AssertionError("no calibration on a CPU without bfloat16 instructions")

    choice = choose_precision("auto", "cpu", model=None, shape=None, measure=measure)
    assert choice.used == "float32" and "no bfloat16 instructions" in choice.reason
    asked = choose_precision("bfloat16", "cpu")  # asked for: done, and said to be emulated
    assert asked.used == "bfloat16" and "emulated and slower" in asked.reason
    assert choose_precision("float32", "cpu").used == "float32"


@pytest.mark.parametrize("seconds, expected", [((2.0, 1.0), "bfloat16"), ((1.0, 1.0 / (MIN_SPEEDUP - 0.05)), "float32"),
                                               ((1.0, 2.6), "float32")])
def test_auto_follows_the_calibration_where_the_cpu_has_bfloat16(monkeypatch, seconds, expected):
    monkeypatch.setattr(precision_module, "cpu_computes_bf16", lambda: True)
    monkeypatch.setattr(precision_module, "cpu_info", lambda: ("Test CPU", ("avx512_bf16",)))
    seen = []

    def measure(model, shape):
        seen.append(shape)
        return {"float32": seconds[0], "bfloat16": seconds[1]}

    choice = choose_precision("auto", "cpu", model="net", shape=(40, 40, 40), measure=measure)
    assert seen == [(40, 40, 40)] and choice.used == expected and choice.requested == "auto"
    assert f"{seconds[0] / seconds[1]:.2f}x" in choice.reason and "avx512_bf16" in choice.reason
    record = choice.provenance("cpu")
    assert record["used"] == expected and record["cpu"] == {"model": "Test CPU", "bf16_flags": ["avx512_bf16"]}


def test_the_environment_switches_bf16_off(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_computes_bf16", lambda: True)
    monkeypatch.setenv("PSC_SEG_AUTO_BF16", "0")
    choice = choose_precision("auto", "cpu", model=None, shape=None, measure=None)
    assert choice.used == "float32" and choice.reason == "bfloat16 switched off by PSC_SEG_AUTO_BF16=0"
    assert choose_precision("bfloat16", "cpu").used == "bfloat16"  # asked for explicitly: done


def test_calibration_times_both_precisions_on_the_planned_shape():
    model = _unet()
    shape = calibration_shape(model, (64, 64, 64))
    assert model.output_shape(shape) == model.valid_output_shape((48, 48, 48))
    seconds = calibrate(model, calibration_shape(model, (8, 8, 8)), pairs=2, min_seconds=0.0)
    assert set(seconds) == {"float32", "bfloat16"} and all(s > 0 for s in seconds.values())
    assert next(model.parameters()).dtype == torch.float32  # the model itself is left as it was


def test_to_bfloat16_keeps_a_unets_full_resolution_level_float32():
    from psc_seg.engine.precision import input_dtype, to_bfloat16
    from psc_seg.models import build_model

    torch.manual_seed(0)
    model = build_model("unet", num_fmaps=4, fmap_inc_factor=2, downsample_factors=[[2, 2, 2], [2, 2, 2]]).eval()
    x = torch.rand(1, 1, *model.valid_input_shape(model.valid_output_shape((8, 8, 8))))
    with torch.inference_mode():
        reference = model(x)
        mixed = to_bfloat16(model)
        assert input_dtype(mixed) == torch.float32 and mixed.head.weight.dtype == torch.float32
        assert {p.dtype for p in mixed.bottom.parameters()} == {torch.bfloat16}
        assert {p.dtype for p in mixed.down[1].parameters()} == {torch.bfloat16}
        y = mixed(x)
    assert y.dtype == torch.float32 and 0 < (y - reference).abs().max() < 1e-2
    densenet = to_bfloat16(build_model("densenet", in_channels=1, num_classes=4, stem_channels=4, growth_rate=4,
                                       block_layers=[1, 1], dropout=0.0))
    assert {p.dtype for p in densenet.parameters()} == {torch.bfloat16}


def test_cpu_info_names_the_cpu():
    name, flags = cpu_info()
    assert name and set(flags) <= {"amx_bf16", "avx512_bf16"}
