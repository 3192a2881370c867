"""Validation segments the affinities the way segment does: nearest-neighbour channels picked
by the task's offsets, in any order and position (issue 12, case 1)."""

from __future__ import annotations

import pytest
import torch

from psc_seg.affinities import seg_to_affinities
from psc_seg.errors import UserError
from psc_seg.io import create_volume
from psc_seg.pipelines import validate
from psc_seg.pipelines.train import open_labelled
from psc_seg.train.config import load_config

from .conftest import em_config

XYZ = [[0, 0, -1], [0, -1, 0], [-1, 0, 0]]
LONG = [[-3, 0, 0], [0, -3, 0], [0, 0, -3]]


def _validator(tmp_path, em_volume, offsets, monkeypatch):
    config = em_config(em_volume)
    config["task"]["offsets"] = offsets
    cfg = load_config(config)
    volumes = [open_labelled(v, cfg, preload=False) for v in cfg.data.validation]

    def perfect(checkpoint, raw, output, *, config, device):  # what predict writes, without a network
        affs = seg_to_affinities(em_volume["gt"], offsets)
        volume = create_volume(str(output), shape=affs.shape, dtype="float32", overwrite=True,
                               attrs={"task": {"kind": "affinities", "offsets": offsets}})
        volume.write(None, affs)
        volume.finalize()

    monkeypatch.setattr(validate, "_predict", perfect)
    return validate.make_validator(cfg, volumes, tmp_path / "validation")


@pytest.mark.parametrize("offsets", [XYZ, LONG + XYZ, XYZ + LONG])
def test_validation_picks_channels_by_the_task_offsets(tmp_path, em_volume, monkeypatch, offsets, notes):
    validator = _validator(tmp_path, em_volume, offsets, monkeypatch)
    figures = validator(tmp_path / "unused.pt", torch.device("cpu"))
    assert figures["val_voi"] <= 1e-6  # perfect affinities: VI 0 (0.07 with the channels taken in order)
    given = notes.take()
    assert len(given) == (len(offsets) > 3) and all(n.startswith("validation: ") for n in given)


def test_validation_refuses_offsets_without_nearest_neighbours(tmp_path, em_volume, monkeypatch):
    with pytest.raises(UserError, match=r"\(0, 0, -1\)"):
        _validator(tmp_path, em_volume, [[-1, 0, 0], [0, -1, 0], [0, 0, -2]], monkeypatch)


def test_overwrite_keeps_the_old_run_when_validation_refuses_the_offsets(tmp_path, em_volume):
    from psc_seg.pipelines.train import train

    run = tmp_path / "run"
    train(em_config(em_volume, iterations=1), out=run, quiet=True)
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    bad = em_config(em_volume, iterations=1)
    bad["task"] = {"kind": "affinities", "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -2]]}
    with pytest.raises(UserError, match=r"\(0, 0, -1\)"):
        train(bad, out=run, overwrite=True, quiet=True)
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == before
