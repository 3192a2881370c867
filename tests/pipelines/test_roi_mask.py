"""predict --roi / --roi-voxels / --mask on zarr volumes placed in the world (non-zero offsets):
an ROI's output is that region of a whole prediction, bit for bit, placed where it lies; a mask
computes only the blocks it touches; bad ROIs and masks are one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.io import create_volume, open_volume
from psc_seg.models import build_model, save_checkpoint
from psc_seg.pipelines.predict import predict

SHAPE = (36, 40, 44)
VOXEL = (8.0, 8.0, 8.0)
OFFSET = (400.0, 800.0, 1600.0)  # nm: voxel 0 of the raw


@pytest.fixture(scope="module")
def unet(tmp_path_factory) -> Path:
    """A valid UNet with two 2x2x2 levels (shape step 4), trained at 8 nm (so it says)."""
    torch.manual_seed(0)
    model = build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[2, 2, 2], [2, 2, 2]],
                        padding="valid")
    with torch.no_grad():  # larger weights: outputs that vary, so tiling errors would show
        for p in model.parameters():
            p.mul_(1.5)
    path = tmp_path_factory.mktemp("ckpt") / "unet.pt"
    return save_checkpoint(path, model, metadata={"task": {"kind": "affinities",
                                                           "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]},
                                                  "normalize": {"kind": "uint8"}, "voxel_size": list(VOXEL)})


def _volume(path: Path, data: np.ndarray, *, voxel_size=VOXEL, offset=OFFSET) -> str:
    volume = create_volume(path, shape=data.shape, dtype=data.dtype, voxel_size=voxel_size, offset=offset,
                           unit="nanometer", chunks=(16, 16, 16))
    volume.write(None, data)
    volume.finalize()
    return str(path)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> str:
    data = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    return _volume(tmp_path_factory.mktemp("raw") / "raw.zarr", data)


@pytest.fixture(scope="module")
def full(unet, raw, tmp_path_factory) -> np.ndarray:
    """The whole volume's affinities."""
    out = str(tmp_path_factory.mktemp("full") / "affs.zarr")
    predict(unet, raw, out, block_shape=(16, 16, 16), progress=False)
    return open_volume(out).read()


def _world(begin, end) -> str:
    return ",".join(f"{o + b * v:g}:{o + e * v:g}" for o, v, b, e in zip(OFFSET, VOXEL, begin, end))


@pytest.mark.parametrize("block_shape", [(8, 8, 8), (16, 12, 20)])
def test_an_roi_is_that_region_of_the_whole_prediction_bit_for_bit(unet, raw, full, tmp_path, block_shape):
    begin, end = (5, 7, 3), (27, 33, 42)  # not on the network's shape-step lattice, nor the blocks'
    out = str(tmp_path / "roi.zarr")
    summary = predict(unet, raw, out, block_shape=block_shape, progress=False, roi=_world(begin, end))
    got = open_volume(out)
    assert got.shape == (3, 22, 26, 39)
    assert got.offset == tuple(o + b * v for o, b, v in zip(OFFSET, begin, VOXEL))
    assert got.voxel_size == VOXEL and got.complete
    np.testing.assert_array_equal(got.read(), full[:, 5:27, 7:33, 3:42])
    # only the region's blocks
    assert summary["computed"] == summary["blocks"] == np.prod([-(-s // b) for s, b in zip((22, 26, 39), block_shape)])

    again = str(tmp_path / "roi_voxels.zarr")
    predict(unet, raw, again, block_shape=block_shape, progress=False, roi_voxels="5:27,7:33,3:42")
    np.testing.assert_array_equal(open_volume(again).read(), got.read())
    assert open_volume(again).offset == got.offset


def test_the_roi_is_in_the_resume_settings(unet, raw, tmp_path):
    out = str(tmp_path / "roi.zarr")
    predict(unet, raw, out, block_shape=(8, 8, 8), progress=False, roi_voxels="0:16,0:16,0:16")
    same = predict(unet, raw, out, block_shape=(8, 8, 8), progress=False, roi="400:528,800:928,1600:1728",
                   resume=True)
    assert same["computed"] == 0 and same["skipped"] == same["blocks"] == 8
    _refused(["predict", str(unet), raw, out, "--block-shape", "8", "8", "8", "--resume",
              "--roi-voxels", "0:16,0:16,8:24", "-q"], "other settings", "--overwrite")


def test_a_mask_computes_only_its_blocks_and_equals_an_unmasked_run_inside(unet, raw, full, tmp_path):
    # a tissue mask downsampled 4x (32 nm voxels), placed by its own offset (on its own grid, one
    # voxel before the raw's start in z, y and x): it covers the low half of the raw in y and 24 of
    # its 44 voxels in x, about a quarter of the volume
    mask = np.zeros((10, 12, 12), dtype=np.uint8)
    mask[:, 1:6, 1:7] = 1
    spec = _volume(tmp_path / "mask.zarr", mask, voxel_size=(32, 32, 32), offset=(384, 768, 1568))
    out = str(tmp_path / "masked.zarr")
    result = CliRunner().invoke(app, ["predict", str(unet), raw, out, "--block-shape", "12", "20", "24",
                                      "--mask", spec, "-q"])
    assert result.exit_code == 0, result.output
    counts = re.search(r"(\d+) blocks computed, (\d+) already done, (\d+) outside the mask \(of (\d+)\)",
                       result.output)
    computed, done, outside, blocks = map(int, counts.groups())
    assert (computed, done, outside, blocks) == (3, 0, 9, 12)  # 3 x 2 x 2 blocks; the mask touches a quarter
    got = open_volume(out)
    assert got.complete
    values = got.read()
    np.testing.assert_array_equal(values[:, :, :20, :24], full[:, :, :20, :24])
    assert not values[:, :, 20:].any() and not values[:, :, :, 24:].any()

    again = predict(unet, raw, out, block_shape=(12, 20, 24), progress=False, mask=spec, resume=True)
    assert (again["computed"], again["skipped"], again["masked"]) == (0, 3, 9)
    open_volume(spec, mode="r+").write((0, 9, 10), 1)  # the mask changed: it selects another block
    _refused(["predict", str(unet), raw, out, "--block-shape", "12", "20", "24", "--mask", spec, "--resume", "-q"],
             "other settings")


def test_a_mask_at_its_own_offset_selects_the_blocks_it_overlaps(unet, raw, tmp_path):
    # one mask voxel of 32 nm at world (400 + 16, 800, 1600) (on its own 32 nm grid): it straddles
    # blocks 0..1 in z of 4-voxel (32 nm) blocks, and lies on block 0 in y and x
    spec = _volume(tmp_path / "mask.zarr", np.ones((1, 1, 1), np.uint8), voxel_size=(32, 32, 32),
                   offset=(416, 800, 1600))
    summary = predict(unet, raw, str(tmp_path / "out.zarr"), block_shape=(4, 4, 4), progress=False, mask=spec)
    assert summary["computed"] == 2


def _refused(args: list[str], *needles: str) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_bad_rois_are_one_line_errors_naming_the_roi_and_the_input(unet, raw, tmp_path):
    out = tmp_path / "out.zarr"
    world = "400:688,800:1120,1600:1952 nm"  # the raw's world ROI, printed in every message
    base = ["predict", str(unet), raw, str(out), "-q"]
    _refused([*base, "--roi", "404:600,800:900,1600:1700"], "--roi 404:600", "voxel borders", world)
    _refused([*base, "--roi", "480:480,800:896,1600:1696"], "is empty", world)
    _refused([*base, "--roi", "0:480,800:896,1600:1696"], "reaches outside", world)
    _refused([*base, "--roi-voxels", "0:8,0:8,0:45"], "reaches outside", "voxels 0:36,0:40,0:44")
    _refused([*base, "--roi-voxels", "0:8,0:8"], "z0:z1,y0:y1,x0:x1")
    _refused([*base, "--roi", "400:480,800:880,1600:1680", "--roi-voxels", "0:8,0:8,0:8"], "exclude each other")
    assert not out.exists()


def test_bad_masks_are_one_line_errors(unet, raw, tmp_path):
    out = tmp_path / "out.zarr"
    base = ["predict", str(unet), raw, str(out), "-q", "--mask"]
    odd = _volume(tmp_path / "odd.zarr", np.ones((4, 4, 4), np.uint8), voxel_size=(12, 12, 12),
                  offset=(396, 792, 1596))
    _refused([*base, odd], "voxel size 12x12x12", "integer multiple", "8x8x8")
    far = _volume(tmp_path / "far.zarr", np.ones((4, 4, 4), np.uint8), voxel_size=(32, 32, 32), offset=(0, 0, 0))
    _refused([*base, far], "does not overlap", "0:128,0:128,0:128 nm", "400:688,800:1120,1600:1952 nm")
    assert not out.exists()


def test_a_densenet_roi_is_that_region_of_the_whole_prediction(tmp_path, vivid):
    # exact tiling of a network that reads its receptive field: read ROIs of an ROI's blocks
    # snap to the padded volume's step lattice
    from tests.pipelines.test_predict_blockwise import _tiny_densenet

    ckpt = _tiny_densenet(tmp_path / "dn.pt", "conv3d", vivid)
    data = np.random.default_rng(1).integers(0, 256, (30, 26, 34), dtype=np.uint8)
    spec = _volume(tmp_path / "raw.zarr", data)
    predict(ckpt, spec, str(tmp_path / "whole.zarr"), progress=False)
    whole = open_volume(str(tmp_path / "whole.zarr/probabilities")).read()
    assert whole.std() > 0.05
    out = tmp_path / "roi.zarr"
    predict(ckpt, spec, str(out), block_shape=(12, 8, 16), progress=False, roi_voxels="5:27,7:23,3:30")
    got = open_volume(str(out / "probabilities"))
    assert got.offset == (440.0, 856.0, 1624.0)
    assert np.abs(got.read() - whole[:, 5:27, 7:23, 3:30]).max() <= 1e-5


def test_a_same_padding_unet_roi_is_that_region_of_the_whole_prediction(tmp_path, raw):
    # a same-padding UNet runs as its valid twin, whose inputs start on the same-padding
    # network's pooling lattice: an ROI off that lattice shifts them by its begin
    torch.manual_seed(1)
    model = build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[2, 2, 2], [2, 2, 2]],
                        padding="same")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    ckpt = save_checkpoint(tmp_path / "same.pt", model, metadata={
        "task": {"kind": "affinities", "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]},
        "normalize": {"kind": "uint8"}, "voxel_size": list(VOXEL)})
    predict(ckpt, raw, str(tmp_path / "whole.zarr"), block_shape=(16, 16, 16), progress=False)
    predict(ckpt, raw, str(tmp_path / "roi.zarr"), block_shape=(8, 12, 8), progress=False,
            roi_voxels="3:29,6:31,9:42")
    whole = open_volume(str(tmp_path / "whole.zarr")).read()
    np.testing.assert_array_equal(open_volume(str(tmp_path / "roi.zarr")).read(), whole[:, 3:29, 6:31, 9:42])


def test_a_cropped_nifti_moves_its_affine_with_the_region(tmp_path):
    import nibabel as nib

    from psc_seg.io.crop import CroppedVolume

    data = np.arange(6 * 7 * 8, dtype=np.float32).reshape(8, 7, 6)  # NIfTI (x, y, z)
    affine = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, 20], [0, 0, 3.0, 30], [0, 0, 0, 1]])  # rotated axes
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "scan.nii.gz")
    scan = open_volume(str(tmp_path / "scan.nii.gz"))
    crop = CroppedVolume(scan, (1, 2, 3), (4, 3, 2))  # (z, y, x)
    np.testing.assert_array_equal(crop.read(), scan.read()[1:5, 2:5, 3:5])
    np.testing.assert_allclose(crop.affine[:, 3], affine @ [3, 2, 1, 1])  # voxel 0 of the crop, in the world
    np.testing.assert_array_equal(crop.affine[:3, :3], affine[:3, :3])
