"""``psc-seg view``: the layers built (names, kinds, placement, shader), its refusals, Ctrl-C, and
one screenshot in a real headless Chromium showing segment colours where the objects are."""

import shutil
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
from matplotlib import image as mpimg
from typer.testing import CliRunner

from psc_seg.cli.main import app
from psc_seg.errors import Interrupted, Note, UserError
from psc_seg.io import create_volume, open_volume
from psc_seg.pipelines import view
from psc_seg.pipelines.view import rgb_shader, view_layers, view_volumes

runner = CliRunner()
needs_neuroglancer = pytest.mark.skipif(
    __import__("importlib").util.find_spec("neuroglancer") is None, reason='neuroglancer not installed (psc-seg[view])')


def _write(spec, data, voxel_size=(8.0, 4.0, 4.0), offset=None, unit="nanometer", attrs=None):
    volume = create_volume(spec, shape=data.shape, dtype=data.dtype, voxel_size=voxel_size, offset=offset, unit=unit,
                           attrs=attrs)
    volume.write(tuple(slice(0, n) for n in data.shape), data)
    volume.finalize()
    return open_volume(spec)


def _scene(tmp_path):
    """Raw ``(32, 64, 64)`` grey noise; labels: two objects in the left half (x < 32: id 7 above
    y = 32, id 9 below), nothing in the right half."""
    rng = np.random.default_rng(0)
    raw = _write(f"{tmp_path}/raw.zarr/raw", rng.integers(60, 200, (32, 64, 64), dtype=np.uint8))
    ids = np.zeros((32, 64, 64), np.int32)
    ids[:, :32, :32], ids[:, 32:, :32] = 7, 9
    labels = _write(f"{tmp_path}/seg.zarr/threshold_0.50", ids)
    return raw, labels


def test_layers_placed_in_world_coordinates(tmp_path):
    raw, labels = _scene(tmp_path)
    crop = _write(f"{tmp_path}/crop.zarr/threshold_0.50", np.ones((8, 16, 16), np.uint16), offset=(80, 40, 20))
    coarse = _write(f"{tmp_path}/coarse.h5:/labels", np.ones((16, 32, 32), np.int64), voxel_size=(16, 8, 8))
    # offsets stored in another order than waterz's: the layer shows z, y, x as red, green, blue
    affs = _write(f"{tmp_path}/affs.zarr/affs", np.zeros((4, 32, 64, 64), np.float32),
                  attrs={"task": {"kind": "affinities", "offsets": [[0, 0, -1], [-3, 0, 0], [-1, 0, 0], [0, -1, 0]]}})
    layers = view_layers(raw, labels=[labels, crop, coarse], affinities=affs)
    assert [(la.name, la.kind) for la in layers] == [
        ("raw.zarr/raw", "image"), ("seg.zarr/threshold_0.50", "segmentation"),
        ("crop.zarr/threshold_0.50", "segmentation"), ("coarse.h5/labels", "segmentation"),
        ("affs.zarr/affs", "affinities")]
    assert layers[2].voxel_offset == (10, 10, 5) and layers[2].voxel_size == (8.0, 4.0, 4.0)
    assert layers[3].voxel_size == (16.0, 8.0, 8.0) and layers[3].voxel_offset == (0, 0, 0)
    assert layers[4].channels == (2, 3, 0) and all(la.unit == "nm" for la in layers)
    # without a voxel size, labels of the raw's shape take the raw's place
    bare = _write(f"{tmp_path}/bare.npy", np.ones((32, 64, 64), np.uint8), voxel_size=None, unit=None)
    shifted = _write(f"{tmp_path}/shifted.zarr/raw", np.zeros((32, 64, 64), np.uint8), offset=(16, 8, 4))
    placed = view_layers(shifted, labels=[bare])[1]
    assert placed.voxel_offset == (2, 2, 1) and placed.voxel_size == (8.0, 4.0, 4.0)
    # a unit named by one volume only is the frame's; one neuroglancer does not know is left out
    unitless = _write(f"{tmp_path}/unitless.zarr/raw", np.zeros((32, 64, 64), np.uint8), unit=None)
    assert {la.unit for la in view_layers(unitless, labels=[labels])} == {"nm"}
    odd = _write(f"{tmp_path}/odd.zarr/raw", np.zeros((32, 64, 64), np.uint8), unit="parsec")
    with pytest.warns(Note, match="does not know the unit 'parsec'"):
        assert view_layers(odd)[0].unit is None


@needs_neuroglancer
def test_viewer_state_holds_the_layers(tmp_path):
    raw, labels = _scene(tmp_path)
    crop = _write(f"{tmp_path}/crop.zarr/seg", np.full((8, 16, 16), 3, np.int16), offset=(80, 40, 20))
    affs = _write(f"{tmp_path}/affs.zarr/affs", np.zeros((3, 32, 64, 64), np.uint8))
    import neuroglancer

    layers = view_layers(raw, labels=[labels, crop], affinities=affs)
    view.serve_address("127.0.0.1", 0)
    viewer = view.make_viewer(layers, screenshot_size=(640, 320))
    state = viewer.state
    assert [(layer.name, layer.type) for layer in state.layers] == [
        ("raw", "image"), ("threshold_0.50", "segmentation"), ("seg", "segmentation"), ("affs", "image")]
    crop_volume = view._ng_layer(neuroglancer, layers[2]).source[0].url
    assert list(crop_volume.voxel_offset) == [10, 10, 5]
    assert list(crop_volume.dimensions.names) == ["z", "y", "x"]
    assert list(crop_volume.dimensions.scales) == pytest.approx([8e-9, 4e-9, 4e-9])
    assert crop_volume.data[0:2, 0:2, 0:2].dtype == np.uint64  # ids read as uint64, chunk by chunk
    with pytest.raises(neuroglancer.local_volume.MeshesNotSupportedForVolume):  # not the whole volume read
        crop_volume.get_object_mesh(3)
    affs_volume = view._ng_layer(neuroglancer, layers[3]).source[0].url
    assert list(affs_volume.dimensions.names) == ["c^", "z", "y", "x"]
    assert state.layers["affs"].shader == rgb_shader((0, 1, 2)) and "getDataValue(2)" in rgb_shader((0, 1, 2))
    low, high = state.layers["raw"].shader_controls["normalized"].range  # the noise spans 60..199
    assert 60 <= low < 75 and 185 < high <= 199
    assert list(state.position) == [32.0, 32.0, 16.0] and state.layout.type == "xy"
    assert state.cross_section_scale == pytest.approx(1.05 * 64 / 320)  # the raw's 64 y voxels fill 320 px


@needs_neuroglancer
def test_nifti_off_the_grid_keeps_its_place(tmp_path):
    import neuroglancer
    import nibabel as nib

    affine = np.diag([0.5, 1.0, 2.0, 1.0])
    affine[:3, 3] = (10.25, -3.0, 5.0)  # x is 20.5 voxels from the origin
    for name, data in (("scan", np.zeros((8, 6, 4), np.float32)), ("tissue", np.ones((8, 6, 4), np.uint8))):
        image = nib.Nifti1Image(data, affine)
        image.header.set_xyzt_units("mm")
        nib.save(image, tmp_path / f"{name}.nii.gz")
    raw, labels = open_volume(f"{tmp_path}/scan.nii.gz"), open_volume(f"{tmp_path}/tissue.nii.gz")
    layers = view_layers(raw, labels=[labels])
    assert layers[1].voxel_offset == (2.5, -3.0, 20.5) and layers[1].voxel_size == (2.0, 1.0, 0.5)
    source = view._ng_layer(neuroglancer, layers[1]).source[0]
    assert list(source.url.voxel_offset) == [2, -3, 20]  # whole voxels, and the halves as a translation
    np.testing.assert_allclose(source.transform.matrix[:, 3], [0.5, 0.0, 0.5])
    assert layers[1].unit == "mm"


def test_refusals_are_one_line(tmp_path, monkeypatch):
    raw, labels = _scene(tmp_path)
    far = _write(f"{tmp_path}/far.zarr/seg", np.ones((4, 4, 4), np.uint8), offset=(8000, 0, 0))
    with pytest.raises(UserError, match="do not overlap; check their offsets"):
        view_layers(raw, labels=[far])
    mm = _write(f"{tmp_path}/mm.zarr/seg", np.ones((4, 4, 4), np.uint8), unit="millimeter")
    with pytest.raises(UserError, match="is in millimeter but raw .* in nanometer"):
        view_layers(raw, labels=[mm])
    bare = _write(f"{tmp_path}/bare.npy", np.ones((4, 4, 4), np.uint8), voxel_size=None, unit=None)
    with pytest.raises(UserError, match="cannot be placed over the other"):
        view_layers(raw, labels=[bare])
    floats = _write(f"{tmp_path}/f.zarr/seg", np.ones((4, 4, 4), np.float32))
    with pytest.raises(UserError, match="segmentation layers show 3D .* integer ids"):
        view_layers(raw, labels=[floats])
    two = _write(f"{tmp_path}/two.zarr/affs", np.ones((2, 4, 4, 4), np.float32))
    with pytest.raises(UserError, match=r"give \(C >= 3, Z, Y, X\) affinities"):
        view_layers(raw, affinities=two)
    with pytest.raises(UserError, match="give a 3D"):
        view_layers(two)

    def one_line_error(*args, match):
        result = runner.invoke(app, ["view", *map(str, args)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], result.output
        return lines[0]

    one_line_error(f"{tmp_path}/missing.zarr/raw", match="missing.zarr")
    one_line_error(raw.spec, "-o", tmp_path / "shot.jpg", match="give a .png file name")
    (tmp_path / "old.png").write_bytes(b"")
    one_line_error(raw.spec, "--screenshot", tmp_path / "old.png", match="pass --overwrite to replace it")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    if __import__("importlib").util.find_spec("selenium") is not None:
        one_line_error(raw.spec, "-o", tmp_path / "s.png", match="apt-get install chromium chromium-driver")
    monkeypatch.setitem(sys.modules, "neuroglancer", None)  # import neuroglancer fails
    one_line_error(raw.spec, match='psc-seg view needs neuroglancer: pip install "psc-seg[view]"')


@needs_neuroglancer
def test_port_in_use_and_open_address(tmp_path, monkeypatch):
    raw, _ = _scene(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["view", raw.spec, "--port", str(port)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert f"cannot serve on 127.0.0.1:{port}" in result.output and "choose another --port" in result.output
    import neuroglancer

    bound = []
    monkeypatch.setattr(neuroglancer, "set_server_bind_address", lambda *a: bound.append(a))
    monkeypatch.setattr(neuroglancer.server, "start", lambda: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        view.serve_address("192.0.2.1", 8080)
        view.serve_address("::1", 0)
    assert bound == [("192.0.2.1", 8080), ("::1", 0)]
    notes = [str(w.message) for w in caught if issubclass(w.category, Note)]
    assert notes == ["serving on 192.0.2.1: anyone who can reach this address can read the data shown"]


@needs_neuroglancer
def test_serves_until_ctrl_c(tmp_path, monkeypatch):
    raw, labels = _scene(tmp_path)
    urls = []

    def interrupt(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(view.time, "sleep", interrupt)
    with pytest.raises(Interrupted, match="stopped serving http://127.0.0.1:"):
        view_volumes(raw.spec, labels=[labels.spec], on_url=urls.append)
    assert len(urls) == 1 and urls[0].startswith("http://127.0.0.1:")
    result = runner.invoke(app, ["view", raw.spec, "--labels", labels.spec])
    assert result.exit_code == 130
    assert result.output.splitlines()[0].startswith("neuroglancer: http://127.0.0.1:")
    assert result.output.splitlines()[-1].startswith("interrupted: stopped serving http://127.0.0.1:")


def _browser_missing() -> str | None:
    if __import__("importlib").util.find_spec("neuroglancer") is None:
        return 'neuroglancer not installed (pip install "psc-seg[view]")'
    if __import__("importlib").util.find_spec("selenium") is None:
        return 'selenium not installed (pip install "psc-seg[view]")'
    if not any(shutil.which(n) for n in view.CHROMIUM_NAMES) or not shutil.which("chromedriver"):
        return "no Chromium / chromedriver installed (apt-get install chromium chromium-driver)"
    return None


@pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")
def test_screenshot_in_headless_chromium_shows_segments_where_objects_are(tmp_path):
    raw, _ = _scene(tmp_path)
    # a crop placed by its offset: x 16..64 of the raw, ids 0 up to x = 32, then 7 above y = 32, 9 below
    ids = np.zeros((32, 64, 48), np.uint32)
    ids[:, :32, 16:], ids[:, 32:, 16:] = 7, 9
    crop = _write(f"{tmp_path}/crop.zarr/seg", ids, offset=(0, 0, 16 * 4))
    shot = tmp_path / "shot.png"
    done = subprocess.run([sys.executable, "-c", "from psc_seg.cli.main import main; main()", "view", raw.spec,
                           "--labels", crop.spec, "--screenshot", str(shot), "--width", "320", "--height", "320"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {shot}"
    image = mpimg.imread(shot)[..., :3]
    assert image.shape[:2] == (320, 320)
    # the raw's 64 x 64 xy section fills the middle 320 / 1.05 px, 4.76 px a voxel from x = 8 px:
    # raw x = 32 (the first objects) is at 160 px, y = 32 (from id 7 to 9) at 160 px
    saturation = image.max(axis=-1) - image.min(axis=-1)
    assert np.median(saturation[40:140, 180:300]) > 0.15 and np.median(saturation[180:280, 180:300]) > 0.15
    top, bottom = image[40:140, 180:300].mean(axis=(0, 1)), image[180:280, 180:300].mean(axis=(0, 1))
    assert np.abs(top - bottom).max() > 0.1  # two objects, two colours
    assert np.percentile(saturation[20:300, 20:150], 99) < 0.05  # no objects: the grey raw only (not shifted)
    assert np.ptp(image[20:300, 20:150].mean(axis=-1)) > 0.2  # the raw's noise is drawn there


@pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")
def test_a_browser_that_does_not_start_is_one_line(tmp_path):
    raw, _ = _scene(tmp_path)
    view.serve_address("127.0.0.1", 0)
    viewer = view.make_viewer(view_layers(raw), screenshot_size=(64, 64))
    with pytest.raises(UserError, match="the headless browser '/bin/false' did not start .*; check that chromium"):
        view.take_screenshot(viewer, tmp_path / "s.png", size=(64, 64), browser="/bin/false")
    assert not (tmp_path / "s.png").exists()
