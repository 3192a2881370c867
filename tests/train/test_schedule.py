"""Learning-rate schedules (train.schedule, train.warmup): the rates, and a resumed run that
continues the schedule exactly."""

from __future__ import annotations

import csv
import math

import pytest
import yaml
import torch

from psc_seg.errors import UserError
from psc_seg.models import load_checkpoint
from psc_seg.pipelines.train import train
from psc_seg.train.config import TrainSettings, load_config
from psc_seg.train.loop import Trainer, TrainingInterrupted, scheduled_lr

from .conftest import em_config


def _rates(**settings) -> list[float]:
    t = TrainSettings(**settings)
    return [scheduled_lr(t, i) for i in range(t.iterations + 1)]


def test_constant_is_lr_after_a_linear_warmup():
    assert _rates(lr=0.1, iterations=5) == [0.1] * 6
    rates = _rates(lr=0.1, iterations=6, warmup=4)
    assert rates[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])  # from lr / warmup up to lr
    assert rates[4:] == [0.1, 0.1, 0.1]


def test_cosine_halves_at_the_midpoint_after_warmup_and_ends_at_zero():
    rates = _rates(lr=0.2, iterations=12, warmup=2, schedule="cosine")
    assert rates[:2] == pytest.approx([0.1, 0.2])
    assert rates[2] == pytest.approx(0.2)  # the cosine starts at lr, right after the warmup
    assert rates[7] == pytest.approx(0.1)  # halfway through its 10 iterations: lr / 2
    assert rates[12] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(rates[2:], rates[3:]))  # strictly decreasing after warmup


def test_poly_follows_nnunet_and_ends_at_zero():
    rates = _rates(lr=0.01, iterations=10, schedule="poly")
    assert rates[0] == 0.01
    assert rates[5] == pytest.approx(0.01 * 0.5**0.9)
    assert rates[9] == pytest.approx(0.01 * 0.1**0.9)  # the last step still learns
    assert rates[10] == 0.0
    squared = _rates(lr=1.0, iterations=4, schedule="poly", poly_power=2.0, warmup=2)
    assert squared == pytest.approx([0.5, 1.0, 1.0, 0.25, 0.0])
    assert scheduled_lr(TrainSettings(lr=1.0, iterations=4, schedule="poly"), 7) == 0.0  # past the end


def test_unknown_schedule_and_negative_warmup_are_one_line_errors(tmp_path, em_volume):
    with pytest.raises(UserError, match=r"train\.schedule.*'cosine'"):
        load_config(em_config(em_volume), ["train.schedule=linear"])
    with pytest.raises(UserError, match=r"train\.warmup"):
        load_config(em_config(em_volume), ["train.warmup=-1"])


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_resume_continues_the_schedule_exactly(tmp_path, em_volume, monkeypatch):
    """2 + 2 iterations equal 4, the rate included: a cosine run with warmup stopped after two
    iterations (Ctrl-C) and resumed gives the uninterrupted run's weights bit for bit and its
    lr column."""
    config = em_config(em_volume, iterations=4, validate_every=100, schedule="cosine", warmup=1)
    config["data"]["validation"] = []
    straight = train(config, out=tmp_path / "straight", quiet=True)

    step, calls = Trainer.step, {"n": 0}

    def stop_before_the_third(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(Trainer, "step", stop_before_the_third)
    with pytest.raises(TrainingInterrupted):
        train(config, out=tmp_path / "split", quiet=True)
    monkeypatch.setattr(Trainer, "step", step)
    resumed = train(config, out=tmp_path / "split", resume=True, quiet=True)
    assert resumed["iteration"] == straight["iteration"] == 4

    split_rows, straight_rows = _rows(tmp_path / "split"), _rows(tmp_path / "straight")
    lr = 1.0e-3
    # warmup to lr, then the cosine over the other 3 iterations from lr
    expected = [lr, lr, lr * (1 + math.cos(math.pi / 3)) / 2, lr * (1 + math.cos(2 * math.pi / 3)) / 2]
    assert [float(r["lr"]) for r in straight_rows] == pytest.approx(expected, rel=1e-5)
    assert [r["lr"] for r in split_rows] == [r["lr"] for r in straight_rows]
    assert [r["loss"] for r in split_rows] == [r["loss"] for r in straight_rows]
    a = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt").model.state_dict()
    b = load_checkpoint(straight["last"]).model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_more_iterations_on_resume_stretch_the_schedule_to_the_new_total(tmp_path, em_volume):
    config = em_config(em_volume, iterations=2, validate_every=100, schedule="poly")
    config["data"]["validation"] = []
    train(config, out=tmp_path / "run", quiet=True)
    train(config, out=tmp_path / "run", resume=True, iterations=4, quiet=True)
    rates = [float(r["lr"]) for r in _rows(tmp_path / "run")]
    settings = load_config(config).train
    longer = settings.model_copy(update={"iterations": 4})
    assert rates[:2] == pytest.approx([scheduled_lr(settings, i) for i in range(2)], rel=1e-5)
    assert rates[2:] == pytest.approx([scheduled_lr(longer, i) for i in (2, 3)], rel=1e-5)


def test_a_run_from_before_schedules_resumes_and_the_schedule_may_not_change(tmp_path, em_volume):
    config = em_config(em_volume, iterations=2, validate_every=100)
    config["data"]["validation"] = []
    run = tmp_path / "run"
    train(config, out=run, quiet=True)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for key in ("schedule", "warmup", "poly_power"):  # as an older psc-seg wrote it
        del saved["train"][key]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert train(config, out=run, resume=True, iterations=3, quiet=True)["iteration"] == 3
    with pytest.raises(UserError, match=r"differs from the run's config.yaml in train.schedule, train.warmup;"):
        train(config, out=run, resume=True, iterations=4, quiet=True,
              overrides=["train.schedule=cosine", "train.warmup=1"])
