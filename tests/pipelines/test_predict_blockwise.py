"""Blockwise predict: exact stitching (block shapes, workers, whole volume), resume after SIGKILL,
semantic outputs (NIfTI affine), refusals."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.engine import BlockRecord
from psc_seg.engine.inference import plan_geometry
from psc_seg.errors import UserError
from psc_seg.io import create_volume, normalize, open_volume
from psc_seg.models import build_model, load_checkpoint, save_checkpoint
from psc_seg.models.shapes import round_up
from psc_seg.pipelines.predict import predict

SHAPE = (50, 52, 70)  # not a multiple of any block shape: edge blocks are clipped


def _tiny_unet(path: Path, *, padding: str = "valid", seed: int = 0, scale: float = 1.5, **kwargs) -> Path:
    torch.manual_seed(seed)
    kwargs = {"num_fmaps": 2, "downsample_factors": [[2, 2, 2], [2, 2, 2]], **kwargs}
    model = build_model("unet", fmap_inc_factor=2, padding=padding, **kwargs)
    with torch.no_grad():  # larger weights: outputs that vary, so stitching errors would show
        for p in model.parameters():
            p.mul_(scale)
    save_checkpoint(path, model, metadata={"task": {"kind": "affinities", "offsets": [[-1, 0, 0], [0, -1, 0],
                                                                                      [0, 0, -1]]},
                                           "normalize": {"kind": "uint8"}})
    return path


def _raw(path: Path, shape=SHAPE, seed: int = 0) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=shape, dtype=np.uint8)
    vol = create_volume(path, shape=shape, dtype="uint8", voxel_size=(40, 4, 4), unit="nanometer")
    vol.write(None, data)
    vol.finalize()
    return str(path), data


def _whole_volume(model, data: np.ndarray) -> np.ndarray:
    """The network once on the whole mirrored volume, cropped to the volume."""
    out_shape = model.valid_output_shape(data.shape)
    in_shape = model.valid_input_shape(out_shape)
    ctx = model.context
    pad = [(c, i - s - c) for c, i, s in zip(ctx, in_shape, data.shape)]
    x = np.pad(normalize(data, {"kind": "uint8"}), pad, mode="reflect")
    with torch.inference_mode():
        y = model(torch.from_numpy(x)[None, None]).numpy()[0]
    return y[:, : data.shape[0], : data.shape[1], : data.shape[2]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    ckpt = _tiny_unet(root / "unet.pt")
    spec, data = _raw(root / "raw.zarr")
    from psc_seg.models import load_checkpoint

    reference = _whole_volume(load_checkpoint(ckpt).model, data)
    return root, ckpt, spec, data, reference


@pytest.mark.parametrize("block", [32, 48, 64])
def test_block_shapes_equal_the_whole_volume(setup, block):
    root, ckpt, spec, data, reference = setup
    out = root / f"affs{block}.zarr"
    summary = predict(ckpt, spec, str(out), block_shape=(block,) * 3, progress=False)
    vol = open_volume(out)
    assert vol.shape == (3, *SHAPE) and vol.chunks == (3, *(min(block, s) for s in SHAPE)) and vol.complete
    assert vol.voxel_size == (40, 4, 4) and vol.unit == "nanometer"
    assert summary["computed"] == summary["blocks"] == int(np.prod([-(-s // block) for s in SHAPE]))
    result = vol.read()
    assert reference.std() > 0.05  # a non-trivial answer
    assert np.abs(result - reference).max() <= 1e-5


@pytest.mark.parametrize("workers", [1, 2])
def test_local_cluster_workers_equal_the_whole_volume(setup, workers):
    root, ckpt, spec, data, reference = setup
    out = root / f"affs_w{workers}.zarr"
    summary = predict(ckpt, spec, str(out), block_shape=(32, 64, 64), workers=workers, batch_size=workers,
                      progress=False)
    assert summary["computed"] == 4
    assert np.abs(open_volume(out).read() - reference).max() <= 1e-5


def test_uint8_output_and_hdf5(setup):
    root, ckpt, spec, data, reference = setup
    out = f"{root}/pred.h5:/volumes/affs"
    predict(ckpt, spec, out, block_shape=(64, 64, 64), dtype="uint8", progress=False)
    vol = open_volume(out)
    assert vol.dtype == np.uint8 and vol.attrs["value_scale"] == pytest.approx(1 / 255)
    assert vol.attrs["task"]["offsets"] == [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    diff = np.abs(vol.read().astype(int) - np.rint(reference * 255).astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999  # off by one only where 255 p is a hair from .5


def test_same_padding_unet_runs_as_its_valid_twin(tmp_path):
    # a same-padding UNet is computed by its valid twin (no outputs in the halo), placed so
    # that its pooling windows are the same-padding network's: the result is the same-padding
    # network itself on the volume mirrored by the halo
    ckpt = _tiny_unet(tmp_path / "same.pt", padding="same", seed=1, scale=1.5)
    spec, data = _raw(tmp_path / "raw.zarr", shape=(32, 36, 40), seed=1)
    model = load_checkpoint(ckpt).model.eval()
    assert model.context == (20, 20, 20) and model.pooling_offset == (6, 6, 6)
    geometry = plan_geometry(model, (32, 20, 20))
    # the twin's input starts 22 = context + 2 voxels before the block, 22 + 6 = 28 = 0 mod 4
    assert geometry.crop == (2, 2, 2) and geometry.context == (22, 22, 22)
    assert geometry.read_shape == (76, 64, 64)  # valid outputs (36, 24, 24) >= block + crop
    halo = 20
    x = np.pad(normalize(data, {"kind": "uint8"}), halo, mode="reflect")
    with torch.inference_mode():
        reference = model(torch.from_numpy(x)[None, None]).numpy()[0][:, halo:-halo, halo:-halo, halo:-halo]
    for name, block in (("a", (32, 20, 20)), ("b", (16, 36, 40))):
        predict(ckpt, spec, str(tmp_path / f"{name}.zarr"), block_shape=block, progress=False)
        assert np.abs(open_volume(tmp_path / f"{name}.zarr").read() - reference).max() <= 1e-5


@pytest.mark.parametrize("conv", ["conv3d", "psc(2,2)"])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_anisotropic_kernels_stitch_exactly(tmp_path, conv, padding):
    # CREMI-like: (1, 3, 3) kernels and (1, 2, 2) pooling on top, 3^3 at the bottom; the context
    # differs per axis and blocks still stitch to the network on the whole (mirrored) volume
    num_fmaps = {"conv3d": 4, "psc(2,2)": 2}[conv]  # with weights x3: outputs that vary, not saturate
    ckpt = _tiny_unet(tmp_path / "aniso.pt", padding=padding, conv=conv, downsample_factors=[[1, 2, 2], [2, 2, 2]],
                      kernel_size=[[1, 3, 3], [1, 3, 3], 3], num_fmaps=num_fmaps, scale=3.0)
    model = load_checkpoint(ckpt).model.eval()
    assert model.kernel_sizes == ((1, 3, 3), (1, 3, 3), (3, 3, 3)) and model.context[0] < model.context[1]
    spec, data = _raw(tmp_path / "raw.zarr", shape=(20, 52, 68))
    if padding == "valid":
        reference = _whole_volume(model, data)
    else:  # the same-padding network on the volume mirrored by a halo on its pooling lattice, wide
        # enough that its own zero padding (whose reach the pooling lattice stretches) stays outside
        halo = round_up([2 * c for c in model.context], model.shape_step)
        x = np.pad(normalize(data, {"kind": "uint8"}), [(h, h) for h in halo], mode="reflect")
        with torch.inference_mode():
            full = model(torch.from_numpy(x)[None, None]).numpy()[0]
        reference = full[(slice(None), *(slice(h, h + n) for h, n in zip(halo, data.shape)))]
    assert reference.std(axis=(1, 2, 3)).max() > 0.05  # varies in space, far above the tolerance
    results = []
    for name, block in (("a", (8, 24, 36)), ("b", (20, 52, 68))):  # clipped edge blocks; one block
        predict(ckpt, spec, str(tmp_path / f"{name}.zarr"), block_shape=block, progress=False)
        results.append(open_volume(tmp_path / f"{name}.zarr").read())
    assert np.abs(results[0] - results[1]).max() <= 1e-5
    assert np.abs(results[0] - reference).max() <= 1e-5


def test_semantic_nifti_labels_keep_the_affine(tmp_path):
    torch.manual_seed(0)
    model = build_model("densenet", num_classes=3, stem_channels=4, growth_rate=2, block_layers=[1, 1],
                        bottleneck_factor=1).eval()
    ckpt = save_checkpoint(tmp_path / "dn.pt", model, metadata={"task": {"kind": "semantic", "num_classes": 3}})
    rng = np.random.default_rng(0)
    xyz = rng.normal(100, 20, size=(20, 18, 13)).astype(np.float32)  # stored (x, y, z)
    affine = np.array([[-1.2, 0, 0, 30], [0, 1.1, 0, -5], [0, 0, 2.5, 7], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(xyz, affine), tmp_path / "t1.nii.gz")
    summary = predict(ckpt, str(tmp_path / "t1.nii.gz"), str(tmp_path / "seg.nii.gz"), block_shape=(8, 8, 8),
                      progress=False)
    assert summary["outputs"]["probabilities"] == str(tmp_path / "seg_probabilities.nii.gz")
    labels = nib.load(tmp_path / "seg.nii.gz")
    np.testing.assert_allclose(labels.affine, affine)
    assert labels.shape == (20, 18, 13)
    probs = open_volume(tmp_path / "seg_probabilities.nii.gz")
    assert probs.shape == (3, 13, 18, 20)
    p = probs.read()
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(open_volume(tmp_path / "seg.nii.gz").read(), p.argmax(axis=0))
    assert not list(tmp_path.glob("*.partial*"))


def test_refusals(setup, tmp_path):
    root, ckpt, spec, data, reference = setup
    out = str(tmp_path / "o.zarr")
    predict(ckpt, spec, out, block_shape=(64, 64, 64), progress=False)
    with pytest.raises(UserError, match="already exists; pass resume .* or overwrite"):
        predict(ckpt, spec, out, block_shape=(64, 64, 64), progress=False)
    with pytest.raises(UserError, match="complete but was written with other settings"):
        predict(ckpt, spec, out, block_shape=(32, 32, 32), resume=True, progress=False)
    done = predict(ckpt, spec, out, block_shape=(64, 64, 64), resume=True, progress=False)
    assert done["computed"] == 0 and done["skipped"] == 2
    with pytest.raises(UserError, match=r"multiple of the model's shape step \(4, 4, 4\) \(along y\).*32 32 32"):
        predict(ckpt, spec, str(tmp_path / "x.zarr"), block_shape=(32, 30, 32), progress=False)
    with pytest.raises(UserError, match="resume and overwrite exclude each other"):
        predict(ckpt, spec, out, resume=True, overwrite=True)
    with pytest.raises(UserError, match="workers and scheduler exclude each other"):
        predict(ckpt, spec, out, workers=2, scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(UserError, match="is the input volume"):
        predict(ckpt, spec, spec, overwrite=True)
    nan = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    nan[2, 3, 4] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(UserError, match="NaN or infinite values"):
        predict(ckpt, str(tmp_path / "nan.npy"), str(tmp_path / "nan.zarr"), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            predict(ckpt, spec, str(tmp_path / "gpu.zarr"), device="cuda")
    two = create_volume(tmp_path / "two.zarr", shape=(2, 8, 8, 8), dtype="uint8")
    two.finalize()
    with pytest.raises(UserError, match="has 2 channel.* expects 1"):
        predict(ckpt, str(tmp_path / "two.zarr"), str(tmp_path / "y.zarr"), progress=False)
    res = CliRunner().invoke(app, ["predict", str(ckpt), spec, out, "--block-shape", "64", "64", "64", "--quiet"])
    assert res.exit_code == 2 and "error: output" in res.output
    res = CliRunner().invoke(app, ["predict", str(ckpt), spec, out, "--block-shape", "64", "64", "64", "--quiet",
                                   "--overwrite"])
    assert res.exit_code == 0, res.output
    assert "2 blocks computed, 0 already done (of 2)" in res.output


def test_resume_after_sigkill(tmp_path, kill_after):
    """A CLI run killed with SIGKILL half-way, rerun with --resume: identical output, and the
    blocks recorded before the kill are not recomputed."""
    ckpt = _tiny_unet(tmp_path / "unet.pt", seed=2)
    spec, _ = _raw(tmp_path / "raw.zarr", shape=(32, 48, 48), seed=2)
    out = tmp_path / "affs.zarr"
    exe = Path(sys.executable).with_name("psc-seg")
    cmd = [str(exe if exe.exists() else "psc-seg"), "predict", str(ckpt), spec, str(out), "--block-shape", "16", "16",
           "16", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = out / "0" / ".psc-seg-blocks" / "done.log"
    kill_after(cmd, log, 4, env=env)
    assert not open_volume(out).complete  # the killed output does not look complete
    recorded = BlockRecord(log.parent).done_ids()
    assert 4 <= len(recorded) < 18
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, check=True)
    match = re.search(r"(\d+) blocks computed, (\d+) already done \(of 18\)", res.stdout)
    assert match, res.stdout + res.stderr
    assert int(match.group(2)) == len(recorded) and int(match.group(1)) == 18 - len(recorded)
    assert open_volume(out).complete
    full = tmp_path / "full.zarr"
    subprocess.run([*cmd[:4], str(full), *cmd[5:]], env=env, check=True, capture_output=True)
    np.testing.assert_array_equal(open_volume(out).read(), open_volume(full).read())


PAPER_LAYOUT = dict(bottleneck_factor=0, compression=1.0, upsample="trilinear")  # the paper variant's options


def _tiny_densenet(path: Path, conv: str, vivid, **options) -> Path:
    torch.manual_seed(0)
    model = build_model("densenet", conv=conv, **{
        **dict(num_classes=3, stem_channels=4, growth_rate=3, block_layers=[2, 2], bottleneck_factor=2, dropout=0.0),
        **options})
    vivid(model)  # larger weights and running statistics: the coarse levels visibly count
    return save_checkpoint(path, model.eval(), metadata={"task": {"kind": "semantic", "num_classes": 3},
                                                         "normalize": {"kind": "uint8"}})


@pytest.mark.parametrize("conv,options", [("conv3d", {}), ("psc(2,2)", {}), ("psc(2,3)", PAPER_LAYOUT)])
def test_densenet_does_not_depend_on_the_block_shape(tmp_path, vivid, conv, options):
    # each block reads its write ROI grown by the receptive field, clipped to the padded volume:
    # every block shape (edge blocks clipped, batched) gives the whole volume's one-block result
    # (also for the paper's layout: grouped dense layers, trilinear heads)
    ckpt = _tiny_densenet(tmp_path / "dn.pt", conv, vivid, **options)
    model = load_checkpoint(ckpt).model
    shape = (90, 66, 62)  # not a multiple of the step (4): the padded volume ends past the mirrored edge
    spec, _ = _raw(tmp_path / "raw.zarr", shape=shape, seed=3)
    blocks = plan_geometry(model, (16, 16, 16)).blocks(shape)
    reach = round_up(model.receptive_radius, model.shape_step)
    depths = {b.read_roi.shape[0] for b in blocks}
    assert 16 + 2 * reach[0] in depths and min(depths) < 16 + 2 * reach[0]  # along z some read all, some are clipped
    results = {}
    for block, batch in [((16, 16, 16), 3), ((20, 24, 36), 1), ((92, 68, 64), 1)]:
        out = tmp_path / f"p{'x'.join(map(str, block))}.zarr"
        predict(ckpt, spec, str(out), block_shape=block, batch_size=batch, progress=False)
        results[block] = open_volume(out / "probabilities").read()
    whole = results[(92, 68, 64)]
    assert whole.std() > 0.05  # a non-trivial answer
    for block, result in results.items():
        assert np.abs(result - whole).max() <= 1e-5, block
    # the one-block result is the network on the volume mirror-padded by its halo, as before
    halo = model.context[0]
    raw = normalize(open_volume(spec).read(), {"kind": "uint8"})
    padded = np.pad(raw, [(halo, halo + (-(s + 2 * halo)) % 4) for s in shape], mode="reflect")
    with torch.inference_mode():
        direct = torch.softmax(model.eval()(torch.from_numpy(padded)[None, None]), dim=1)[0].numpy()
    direct = direct[:, halo:halo + shape[0], halo:halo + shape[1], halo:halo + shape[2]]
    assert np.abs(direct - whole).max() <= 1e-5


def test_densenet_settings_name_its_geometry(tmp_path, vivid):
    # an unfinished output of the fixed-halo scheme does not resume into the clipped one
    ckpt = _tiny_densenet(tmp_path / "dn.pt", "conv3d", vivid)
    spec, _ = _raw(tmp_path / "raw.zarr", shape=(16, 16, 16), seed=3)
    out = tmp_path / "p.zarr"
    predict(ckpt, spec, str(out), progress=False)
    config = open_volume(out / "probabilities").attrs["psc_seg"]["provenance"]["config"]
    assert config["geometry"] == "clipped-receptive-field"
    unet = _tiny_unet(tmp_path / "unet.pt")  # UNet settings (and their resume records) are as before
    predict(str(unet), spec, str(tmp_path / "u.zarr"), progress=False)
    assert "geometry" not in open_volume(tmp_path / "u.zarr").attrs["psc_seg"]["provenance"]["config"]


def test_densenet_beyond_one_block_says_it_is_not_exact_unless_asked(tmp_path, vivid, monkeypatch, notes):
    # exact tiling of a volume larger than one block costs (block + 2 R)^3 per block: by default
    # a fixed halo with a note, exact_tiling forces the exact result
    import psc_seg.engine.inference as inference

    monkeypatch.setattr(inference, "WHOLE_VOLUME_VOXELS", 40**3)  # as if the volume were large
    ckpt = _tiny_densenet(tmp_path / "dn.pt", "conv3d", vivid)
    spec, _ = _raw(tmp_path / "raw.zarr", shape=(40, 36, 32), seed=3)
    predict(ckpt, spec, str(tmp_path / "halo.zarr"), block_shape=(16, 16, 16), progress=False)
    (note,) = [n for n in notes.take() if "exact" in n]
    assert note.startswith("not exact near block borders") and "--exact-tiling" in note
    assert "geometry" not in open_volume(tmp_path / "halo.zarr" / "probabilities").attrs["psc_seg"]["provenance"][
        "config"]
    results = {}
    for block in [(16, 16, 16), (40, 36, 32)]:
        out = tmp_path / f"exact{block[0]}.zarr"
        predict(ckpt, spec, str(out), block_shape=block, exact_tiling=True, progress=False)
        results[block] = open_volume(out / "probabilities").read()
    assert not [n for n in notes.take() if "exact" in n]
    assert np.abs(results[(16, 16, 16)] - results[(40, 36, 32)]).max() <= 1e-5
