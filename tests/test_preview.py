"""Orthogonal-slice previews: slices, colours, PNG size and content, the CLI."""

import numpy as np
import pytest
from matplotlib import image as mpimg
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.errors import UserError
from psc_seg.io import create_volume, open_volume
from psc_seg.preview import figure_pixels, label_colors, orthogonal_slices, write_preview

runner = CliRunner()


def _write(spec, data, voxel_size=(1.0, 1.0, 1.0)):
    volume = create_volume(spec, shape=data.shape, dtype=data.dtype, voxel_size=voxel_size)
    volume.write(tuple(slice(0, n) for n in data.shape), data)
    volume.finalize()
    return open_volume(spec)


def _png(path):
    image = mpimg.imread(path)
    return image[..., :3]


def test_orthogonal_slices_numpy_and_volume(tmp_path):
    data = np.arange(6 * 7 * 8, dtype=np.int32).reshape(6, 7, 8)
    volume = _write(f"{tmp_path}/v.zarr/raw", data)
    for source in (data, volume):
        xy, xz, yz = orthogonal_slices(source, (2, 3, 4))
        np.testing.assert_array_equal(xy, data[2])
        np.testing.assert_array_equal(xz, data[:, 3])
        np.testing.assert_array_equal(yz, data[:, :, 4])
    four = np.stack([data, -data])
    xy, xz, yz = orthogonal_slices(four, (1, 2, 3))
    np.testing.assert_array_equal(xy, four[:, 1])
    np.testing.assert_array_equal(yz, four[:, :, :, 3])


def test_label_colors_fixed_per_id():
    ids = np.array([[11, 12], [11, 17]], dtype=np.uint64)
    colors = label_colors(ids)
    assert colors.shape == (2, 2, 3)
    np.testing.assert_array_equal(colors[0, 0], colors[1, 0])
    assert not np.allclose(colors[0, 0], colors[0, 1])
    np.testing.assert_array_equal(label_colors(np.array([17])), colors[1, 1][None])
    assert colors.min() >= 0.2 and colors.max() <= 1.0
    # small ids (semantic classes) get clearly distinct palette colours
    classes = label_colors(np.arange(1, 10))
    distances = np.linalg.norm(classes[:, None] - classes[None], axis=-1)
    assert distances[~np.eye(9, dtype=bool)].min() > 0.15


def test_figure_pixels():
    # (X + Z) : (Y + Z) in physical units, 1000 on the longer side
    assert figure_pixels((16, 32, 64)) == (1000, 600)
    assert figure_pixels((16, 64, 32)) == (600, 1000)
    assert figure_pixels((16, 32, 64), voxel_size=(4, 1, 1)) == (1000, 750)
    assert figure_pixels((16, 32, 64), size=500) == (500, 300)


def test_write_preview_grey_raw_and_coloured_labels(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, size=(16, 32, 64), dtype=np.uint8)
    plain = write_preview(raw, out=tmp_path / "plain.png")
    image = _png(plain)
    assert image.shape[:2] == (600, 1000)
    # grey raw, black background, white titles: every pixel has R = G = B
    assert np.abs(image[..., 0] - image[..., 1]).max() < 1e-6
    assert np.abs(image[..., 1] - image[..., 2]).max() < 1e-6

    labels = np.zeros(raw.shape, dtype=np.uint64)
    labels[:, :, 32:] = 5
    overlay = _png(write_preview(raw, labels=labels, out=tmp_path / "sub" / "labels.png", title="a title"))
    assert overlay.shape[:2] == (600, 1000)
    coloured = (np.abs(overlay[..., 0] - overlay[..., 1]) > 0.02) | (np.abs(overlay[..., 1] - overlay[..., 2]) > 0.02)
    # the right half of the xy and xz panels is coloured, the left half is not
    assert coloured.sum() > 0.1 * coloured.size
    cols = np.flatnonzero(coloured.any(axis=0))
    assert cols.min() > 0.3 * 1000  # nothing coloured left of the xy panel's middle


def test_write_preview_affinities_rgb(tmp_path):
    affs = np.zeros((3, 16, 32, 32), dtype=np.float32)
    affs[0] = 1.0  # only channel 0: pure red
    image = _png(write_preview(affinities=affs, out=tmp_path / "affs.png"))
    red = (image[..., 0] > 0.99) & (image[..., 1] < 0.01) & (image[..., 2] < 0.01)
    assert red.sum() > 0.2 * red.size
    assert not ((image[..., 1] > 0.5) & (image[..., 0] < 0.5)).any()  # no green


def test_write_preview_errors(tmp_path):
    raw = np.zeros((8, 8, 8), dtype=np.uint8)
    with pytest.raises(UserError, match="shape"):
        write_preview(raw, labels=np.zeros((8, 8, 9), dtype=np.uint64), out=tmp_path / "x.png")
    with pytest.raises(UserError, match="outside the volume"):
        write_preview(raw, out=tmp_path / "x.png", center=(8, 0, 0))
    with pytest.raises(UserError, match="C >= 3"):
        write_preview(raw, affinities=np.zeros((2, 8, 8, 8)), out=tmp_path / "x.png")
    with pytest.raises(UserError, match="nothing to preview"):
        write_preview(out=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_preview_cli(tmp_path):
    from psc_seg.synth import em_volume

    em = em_volume((16, 32, 48), seed=0)
    _write(f"{tmp_path}/em.zarr/raw", em["raw"], voxel_size=(8.0, 8.0, 8.0))
    _write(f"{tmp_path}/em.zarr/labels", em["labels"], voxel_size=(8.0, 8.0, 8.0))
    out = tmp_path / "em.png"
    result = runner.invoke(app, ["preview", f"{tmp_path}/em.zarr/raw", "--labels", f"{tmp_path}/em.zarr/labels",
                                 "--z", "3", "-o", str(out), "--size", "640"])
    assert result.exit_code == 0, result.output
    assert _png(out).shape[:2] == (figure_pixels((16, 32, 48), size=640)[1], 640)

    result = runner.invoke(app, ["preview", f"{tmp_path}/em.zarr/raw", "-o", str(out)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = runner.invoke(app, ["preview", f"{tmp_path}/em.zarr/raw", "--x", "48", "-o", str(tmp_path / "b.png")])
    assert result.exit_code == 2 and "x = 48 is outside" in result.output
    result = runner.invoke(app, ["preview", f"{tmp_path}/missing.zarr/raw", "-o", str(tmp_path / "c.png")])
    assert result.exit_code == 2 and result.output.startswith("error: ")

    # a (3, Z, Y, X) volume is shown as affinities
    affs = np.stack([em["mask"].astype(np.float32)] * 3)
    _write(f"{tmp_path}/affs.zarr", affs)
    result = runner.invoke(app, ["preview", f"{tmp_path}/affs.zarr", "-o", str(tmp_path / "affs.png")])
    assert result.exit_code == 0, result.output
    grey = _png(tmp_path / "affs.png")
    assert np.abs(grey[..., 0] - grey[..., 1]).max() < 1e-6  # three equal channels: grey
    # or beside the raw, with --affinities: shown instead of it, in RGB
    affs[1:] = 0
    _write(f"{tmp_path}/red.zarr", affs)
    result = runner.invoke(app, ["preview", f"{tmp_path}/em.zarr/raw", "--affinities", f"{tmp_path}/red.zarr",
                                 "-o", str(tmp_path / "red.png")])
    assert result.exit_code == 0, result.output
    red = _png(tmp_path / "red.png")
    assert ((red[..., 0] > 0.99) & (red[..., 1] < 0.01)).sum() > 1000
    result = runner.invoke(app, ["preview", f"{tmp_path}/em.zarr/raw", "--affinities", f"{tmp_path}/affs.zarr/x",
                                 "-o", str(tmp_path / "none.png")])
    assert result.exit_code == 2 and not (tmp_path / "none.png").exists()


def test_preview_help():
    result = runner.invoke(app, ["preview", "--help"])
    assert result.exit_code == 0 and "--labels" in result.output


def test_scale_bar_is_a_round_fifth_of_the_panel_in_world_units():
    from psc_seg.preview import scale_bar

    assert scale_bar(384.0, "nanometer") == (50.0, "50 nm")
    assert scale_bar(1000.0, "nanometer") == (200.0, "200 nm")
    assert scale_bar(180.0, "millimeter") == (20.0, "20 mm")
    assert scale_bar(7.0, None) == (1.0, "1")


def test_preview_roi_shows_only_that_region_with_labels_cropped_alike(tmp_path):
    rng = np.random.default_rng(1)
    raw = _write(f"{tmp_path}/v.zarr/raw", rng.integers(0, 255, size=(16, 32, 64), dtype=np.uint8), (8, 8, 8))
    labels = np.zeros((16, 32, 64), np.uint64)
    labels[:, :, 32:] = 7  # only in the right half
    _write(f"{tmp_path}/v.zarr/labels", labels, (8, 8, 8))
    args = ["preview", f"{tmp_path}/v.zarr/raw", "--labels", f"{tmp_path}/v.zarr/labels", "-o"]
    # the left half in world units (nm): no labels there, and the panels are proportioned like it
    result = runner.invoke(app, [*args, str(tmp_path / "left.png"), "--roi", "0:128,0:256,0:256"])
    assert result.exit_code == 0, result.output
    image = _png(tmp_path / "left.png")
    assert image.shape[:2] == tuple(reversed(figure_pixels((16, 32, 32), voxel_size=(8, 8, 8))))
    assert np.allclose(image[..., 0], image[..., 1]) and np.allclose(image[..., 1], image[..., 2])  # grey: no labels
    result = runner.invoke(app, [*args, str(tmp_path / "right.png"), "--roi-voxels", "0:16,0:32,32:64"])
    assert result.exit_code == 0, result.output
    image = _png(tmp_path / "right.png")
    assert not (np.allclose(image[..., 0], image[..., 1]) and np.allclose(image[..., 1], image[..., 2]))
    result = runner.invoke(app, [*args, str(tmp_path / "bad.png"), "--roi", "0:128,0:256,0:1024"])
    assert result.exit_code == 2 and "reaches outside" in result.output and not (tmp_path / "bad.png").exists()
    assert raw.spatial_shape == (16, 32, 64)
