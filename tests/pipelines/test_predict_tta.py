"""predict --tta: mirror test-time augmentation, exact blockwise and equal to the average of the
flipped predictions computed by hand."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.engine.tta import plan_tta
from psc_seg.errors import UserError
from psc_seg.io import create_volume, normalize, open_volume
from psc_seg.models import build_model, save_checkpoint
from psc_seg.pipelines.predict import predict
from psc_seg.train.config import preset_text
from psc_seg.train.model import initialize

OFFSETS = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]


def _demo_network(path: Path, offsets=OFFSETS) -> Path:
    """The demo's network (preset em/demo-small), seeded He-initialised weights."""
    kwargs = yaml.safe_load(preset_text("em/demo-small"))["model"]
    name = kwargs.pop("name")
    torch.manual_seed(0)
    model = initialize(build_model(name, in_channels=1, out_channels=len(offsets), **kwargs))
    save_checkpoint(path, model, metadata={"task": {"kind": "affinities", "offsets": offsets},
                                           "normalize": {"kind": "uint8"}})
    return path


def _raw(path: Path, shape, voxel_size=(40, 4, 4)) -> tuple[str, np.ndarray]:
    data = np.random.default_rng(3).integers(0, 256, size=shape, dtype=np.uint8)
    vol = create_volume(path, shape=shape, dtype="uint8", voxel_size=voxel_size, unit="nanometer")
    vol.write(None, data)
    vol.finalize()
    return str(path), data


def _flipped_pass_by_hand(model, data: np.ndarray, flips: tuple[int, ...]) -> np.ndarray:
    """The network on the whole flipped volume (mirror-padded, tiles from its first voxel), its
    affinities mapped back to the original volume by index arithmetic: along a flipped axis a
    voxel p is q = V - 1 - p, and the affinity of p to p - 1 is the flipped volume's affinity of
    q' = V - p to q' - 1."""
    flipped = np.flip(data, axis=flips) if flips else data
    out_shape = model.valid_output_shape([v + 1 for v in data.shape])  # one voxel past the end
    in_shape = model.valid_input_shape(out_shape)
    pad = [(c, i - v - c) for c, i, v in zip(model.context, in_shape, data.shape)]
    x = np.pad(normalize(flipped, {"kind": "uint8"}), pad, mode="reflect")
    with torch.inference_mode():
        y = model(torch.from_numpy(np.ascontiguousarray(x))[None, None]).numpy()[0]
    result = np.empty((3, *data.shape), np.float32)
    for channel, axis in enumerate((0, 1, 2)):  # offsets (-1,0,0), (0,-1,0), (0,0,-1)
        index = []
        for a, v in enumerate(data.shape):
            p = np.arange(v)
            if a in flips:
                p = v - p if a == axis else v - 1 - p
            index.append(p)
        result[channel] = y[channel][np.ix_(*index)]
    return result


def test_flips_equal_the_average_of_the_eight_flipped_predictions_by_hand(tmp_path):
    ckpt = _demo_network(tmp_path / "demo.pt")
    from psc_seg.models import load_checkpoint

    model = load_checkpoint(ckpt).model.eval()
    step, residue = model.shape_step, [o % s for o, s in zip(model.valid_output_shape((1, 1, 1)), model.shape_step)]
    # sizes on the lattice of the network's outputs, where a flipped pass of psc-seg's block
    # tiles the flipped volume from its first voxel, as the hand computation does
    shape = tuple(k * s + r for k, s, r in zip((7, 9, 11), step, residue))
    raw, data = _raw(tmp_path / "raw.zarr", shape)
    by_hand = np.mean([_flipped_pass_by_hand(model, data, flips)
                       for n in range(4) for flips in itertools.combinations(range(3), n)], axis=0)
    plain = _flipped_pass_by_hand(model, data, ())
    predict(ckpt, raw, str(tmp_path / "tta.zarr"), tta="flips", precision="float32", progress=False)
    tta = open_volume(tmp_path / "tta.zarr").read()
    assert np.abs(by_hand - plain).max() > 0.05  # the flips change the answer
    assert np.abs(tta - by_hand).max() <= 1e-5
    settings = open_volume(tmp_path / "tta.zarr").attrs["psc_seg"]["provenance"]["config"]
    assert settings["tta"] == "flips" and settings["compute_precision"]["used"] == "float32"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    torch.manual_seed(0)
    model = initialize(build_model("unet", num_fmaps=2, fmap_inc_factor=2, conv="psc(2,2)",
                                   downsample_factors=[[1, 2, 2], [2, 2, 2]]))
    save_checkpoint(root / "unet.pt", model, metadata={"task": {"kind": "affinities", "offsets": OFFSETS},
                                                       "normalize": {"kind": "uint8"}})
    raw, _ = _raw(root / "raw.zarr", (20, 38, 36))
    return root, str(root / "unet.pt"), raw


@pytest.mark.parametrize("mode", ["flips", "flips+transposes"])
def test_tta_does_not_depend_on_block_shape_or_workers(tiny, mode):
    root, ckpt, raw = tiny
    runs = {"whole": {}, "blocks": {"block_shape": (8, 16, 16)},
            "workers": {"block_shape": (16, 32, 16), "workers": 2, "batch_size": 2}}
    results = {}
    for name, kwargs in runs.items():
        out = root / f"{mode}-{name}.zarr"
        predict(ckpt, raw, str(out), tta=mode, precision="float32", progress=False, **kwargs)
        results[name] = open_volume(out).read()
    plain = root / f"plain-{mode}.zarr"
    predict(ckpt, raw, str(plain), precision="float32", progress=False)
    assert np.abs(results["whole"] - open_volume(plain).read()).max() > 0.01
    for name in ("blocks", "workers"):
        assert np.abs(results[name] - results["whole"]).max() <= 1e-5, name


def test_an_roi_with_tta_is_that_region_of_the_whole_volumes(tiny):
    root, ckpt, raw = tiny
    whole, part = root / "roi-whole.zarr", root / "roi-part.zarr"
    predict(ckpt, raw, str(whole), tta="flips+transposes", precision="float32", progress=False)
    predict(ckpt, raw, str(part), tta="flips+transposes", precision="float32", roi_voxels="3:17,5:30,6:29",
            block_shape=(8, 16, 16), progress=False)
    expected = open_volume(whole).read()[:, 3:17, 5:30, 6:29]
    assert np.abs(open_volume(part).read() - expected).max() <= 1e-5


def test_transposes_follow_the_voxel_size_and_the_network():
    isotropic = build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[2, 2, 2]])
    anisotropic = build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[1, 2, 2]])
    assert len(plan_tta("flips", offsets=OFFSETS, voxel_size=(1, 1, 1), model=isotropic).transforms) == 8
    assert len(plan_tta("flips+transposes", offsets=OFFSETS, voxel_size=(1, 1, 1), model=isotropic).transforms) == 48
    assert len(plan_tta("flips+transposes", offsets=OFFSETS, voxel_size=(40, 4, 4), model=isotropic).transforms) == 16
    # z is pooled differently: only y and x trade places, whatever the voxel size says
    assert len(plan_tta("flips+transposes", offsets=None, voxel_size=None, model=anisotropic).transforms) == 16
    assert plan_tta("none", offsets=OFFSETS, voxel_size=None, model=isotropic) is None


def test_channels_map_under_every_transform():
    """Each pass's channel for offset o is the one whose offset the transform sends to +-o."""
    model = build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[2, 2, 2]])
    offsets = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, 0, -3], [0, -3, 0], [-3, 0, 0]]
    tta = plan_tta("flips+transposes", offsets=offsets, voxel_size=(8, 8, 8), model=model)
    for transform, sources in zip(tta.transforms, tta.sources):
        for j, (i, shift) in enumerate(sources):
            back = transform.back(offsets[i])
            assert back == tuple(offsets[j]) and shift == (0, 0, 0) or \
                back == tuple(-v for v in offsets[j]) and shift == tuple(offsets[j])
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(1, 2, 3, 4, 5)
    for transform in tta.transforms:
        assert torch.equal(transform.invert(transform.apply(x)), x)


def test_offsets_not_closed_under_flips_are_refused():
    model = build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[2, 2, 2]])
    with pytest.raises(UserError, match=r"offsets .* are not mapped onto themselves by flipping axes \(0,\)"):
        plan_tta("flips", offsets=[*OFFSETS, [-1, -2, 0]], voxel_size=None, model=model)
    with pytest.raises(UserError, match="tta must be one of none, flips, flips\\+transposes"):
        plan_tta("mirror", offsets=OFFSETS, voxel_size=None, model=model)


def test_predict_refuses_tta_for_such_offsets_before_any_output(tmp_path):
    ckpt = _demo_network(tmp_path / "long.pt", offsets=[*OFFSETS, [-1, -2, 0]])
    raw, _ = _raw(tmp_path / "raw.zarr", (12, 24, 24))
    with pytest.raises(UserError, match=r"flipping axes \(0,\) .* predict without tta"):
        predict(ckpt, raw, str(tmp_path / "out.zarr"), tta="flips", progress=False)
    assert not (tmp_path / "out.zarr").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.pt", "raw.zarr"]


def test_semantic_tta_averages_probabilities_before_the_argmax(tmp_path):
    torch.manual_seed(0)
    model = build_model("densenet", in_channels=1, num_classes=4, stem_channels=4, growth_rate=4,
                        block_layers=[1, 1], dropout=0.0)
    save_checkpoint(tmp_path / "dense.pt", model, metadata={"task": {"kind": "semantic", "num_classes": 4},
                                                            "normalize": {"kind": "uint8"}})
    raw, _ = _raw(tmp_path / "raw.zarr", (12, 16, 20), voxel_size=(1, 1, 1))
    for name, block in (("whole", None), ("blocks", (8, 16, 12))):
        predict(tmp_path / "dense.pt", raw, str(tmp_path / f"{name}.zarr"), tta="flips",
                block_shape=block, exact_tiling=True, precision="float32", progress=False)
    probabilities = open_volume(f"{tmp_path}/whole.zarr/probabilities").read()
    labels = open_volume(f"{tmp_path}/whole.zarr/labels").read()
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(labels, probabilities.argmax(axis=0))
    assert np.abs(open_volume(f"{tmp_path}/blocks.zarr/probabilities").read() - probabilities).max() <= 1e-5


def test_cli_tta_and_precision_are_printed_and_checked(tiny, tmp_path):
    root, ckpt, raw = tiny
    runner = CliRunner()
    result = runner.invoke(app, ["predict", ckpt, raw, str(tmp_path / "a.zarr"), "--tta", "flips", "-q",
                                 "--precision", "float32"])
    assert result.exit_code == 0, result.output
    assert "float32 with TTA flips" in result.stdout and "computing in" not in result.stderr  # plain float32
    asked = runner.invoke(app, ["predict", ckpt, raw, str(tmp_path / "c.zarr"), "-q", "--precision", "bfloat16"])
    assert asked.exit_code == 0 and asked.stdout.rstrip().endswith("bfloat16")
    assert "note: computing in precision bfloat16 (as asked" in asked.stderr
    bad = runner.invoke(app, ["predict", ckpt, raw, str(tmp_path / "b.zarr"), "--tta", "rot90"])
    assert bad.exit_code == 2 and bad.stderr.strip() == ("error: --tta must be one of none, flips, flips+transposes, "
                                                         "got 'rot90'")
    assert not (tmp_path / "b.zarr").exists()
