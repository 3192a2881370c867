"""OME-Zarr pyramids and labels of zarr outputs (psc_seg.io.pyramid, psc_seg.engine.pyramid):
level geometry, mean and mode levels against numpy, blockwise = whole (in process and on dask
workers), validation by ome-zarr-models (zarr v3 / OME-Zarr 0.5 and v2 / 0.4) and the ome-zarr
reader, the OME-Zarr labels convention, and that psc-seg reads level 0 only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from psc_seg.engine.pyramid import build_pyramids
from psc_seg.errors import UserError
from psc_seg.io import create_volume, open_volume
from psc_seg.io.pyramid import downsample, pyramid_levels

RNG = np.random.default_rng(0)


def _multiscales(path) -> dict:
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    return attrs["ome"]["multiscales"][0] if "ome" in attrs else attrs["multiscales"][0]


def _mean_reference(data: np.ndarray, factors) -> np.ndarray:
    """Mean over each block of ``factors`` voxels of those inside the volume (loops, plainly)."""
    lead = data.shape[:-3]
    out_shape = tuple(-(-s // f) for s, f in zip(data.shape[-3:], factors))
    out = np.zeros((*lead, *out_shape), dtype=np.float64)
    for index in np.ndindex(*out_shape):
        region = tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, factors))
        out[(..., *index)] = data[(..., *region)].reshape(*lead, -1).mean(axis=-1)
    return out


def test_levels_isotropic_halve_every_axis_until_under_64():
    levels = pyramid_levels((256, 256, 256), (8, 8, 8), (100, 0, 0))
    assert [lv.shape for lv in levels] == [(128,) * 3, (64,) * 3, (32,) * 3]
    assert [lv.voxel_size for lv in levels] == [(16,) * 3, (32,) * 3, (64,) * 3]
    # voxel centres: each 2x level moves by half a voxel of the level above
    assert [lv.translation for lv in levels] == [(104, 4, 4), (112, 12, 12), (128, 28, 28)]
    assert pyramid_levels((50, 100, 200), (8, 8, 8)) == []  # the smallest axis is under 64 already
    assert [lv.shape for lv in pyramid_levels((65, 64, 64), (1, 1, 1))] == [(33, 32, 32)]  # ceil


def test_levels_anisotropic_halve_the_finest_axes_first():
    levels = pyramid_levels((100, 512, 512), (40, 4, 4))
    assert [lv.factors for lv in levels] == [(1, 2, 2)] * 4
    assert [lv.voxel_size for lv in levels] == [(40, 8, 8), (40, 16, 16), (40, 32, 32), (40, 64, 64)]
    assert [lv.shape for lv in levels] == [(100, 256, 256), (100, 128, 128), (100, 64, 64), (100, 32, 32)]
    levels = pyramid_levels((256, 256, 256), (8, 4, 4))  # y, x first; isotropic after one level
    assert [lv.factors for lv in levels] == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert [lv.shape for lv in levels] == [(256, 128, 128), (128, 64, 64), (64, 32, 32)]
    assert levels[1].translation == (4.0, 6.0, 6.0)
    assert [lv.factors for lv in pyramid_levels((64, 64, 64), (4.0, 4.0 * (1 + 1e-9), 5.0))] == [(2, 2, 1)]


@pytest.mark.parametrize("shape", [(3, 8, 10, 12), (2, 7, 9, 11)])
def test_mean_equals_numpy_reference_with_channels_and_odd_edges(shape):
    data = RNG.random(shape, dtype=np.float32)
    for factors in [(2, 2, 2), (1, 2, 2)]:
        got = downsample(data, factors, "mean")
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, _mean_reference(data, factors), rtol=1e-6)
    ints = RNG.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    np.testing.assert_array_equal(downsample(ints, (2, 2, 2), "mean"), np.rint(_mean_reference(ints, (2, 2, 2))))


def test_mode_takes_the_most_frequent_id_ties_to_the_smallest():
    data = np.zeros((2, 2, 4), dtype=np.uint64)
    data[..., :2] = [[[7, 7], [7, 3]], [[3, 3], [9, 7]]]  # 7 four times, 3 three times
    data[..., 2:] = [[[5, 2], [2, 5]], [[6, 6], [8, 8]]]  # 2, 5, 6 and 8 twice each: 2
    np.testing.assert_array_equal(downsample(data, (2, 2, 2), "mode"), [[[7, 2]]])
    labels = RNG.integers(0, 1000, (9, 10, 11)).astype(np.uint64)
    down = downsample(labels, (2, 2, 2), "mode")
    assert down.dtype == np.uint64 and down.shape == (5, 5, 6)
    assert set(np.unique(down)) <= set(np.unique(labels))


def _filled(path, data, *, chunks, labels=False, voxel_size=(8, 8, 8), **kwargs):
    volume = create_volume(str(path), shape=data.shape, dtype=data.dtype, chunks=chunks, voxel_size=voxel_size,
                           unit="nanometer", pyramid=True, labels=labels, **kwargs)
    volume.write(None, data)
    return volume


def _levels(path) -> list[np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return [group[d["path"]][...] for d in _multiscales(path)["datasets"]]


def test_blockwise_pyramid_equals_the_whole_one_and_reads_as_level_0(tmp_path):
    data = RNG.random((2, 70, 130, 128), dtype=np.float32)
    volume = _filled(tmp_path / "a.zarr", data, chunks=(16, 16, 32), voxel_size=(8, 4, 4))
    assert not open_volume(str(tmp_path / "a.zarr")).complete
    assert build_pyramids([volume], progress=False) > 0
    volume.finalize()
    levels = _levels(tmp_path / "a.zarr")
    expected = [data]
    for factors in [(1, 2, 2), (2, 2, 2)]:  # (70, 130, 128) at 8x4x4 nm -> (70, 65, 64) -> (35, 33, 32)
        expected.append(downsample(expected[-1], factors, "mean"))
    assert [lv.shape for lv in levels] == [e.shape for e in expected]
    for got, want in zip(levels, expected):
        np.testing.assert_array_equal(got, want)
    ms = _multiscales(tmp_path / "a.zarr")
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [
        [1, 8, 4, 4], [1, 8, 8, 8], [1, 16, 16, 16]]
    assert [d["coordinateTransformations"][1]["translation"] for d in ms["datasets"]] == [
        [0, 0, 0, 0], [0, 0, 2, 2], [0, 4, 6, 6]]
    assert ms["type"] == "mean"
    read = open_volume(str(tmp_path / "a.zarr"))  # psc-seg reads level 0, complete only now
    assert read.complete and read.shape == data.shape and read.voxel_size == (8, 4, 4)
    assert open_volume(str(tmp_path / "a.zarr/0")).shape == data.shape
    with pytest.raises(UserError, match=r"is level 2 of the OME-Zarr image pyramid .*a\.zarr'.*name '.*a\.zarr'"):
        open_volume(str(tmp_path / "a.zarr/2"))
    assert build_pyramids([open_volume(str(tmp_path / "a.zarr"), mode="r+")], progress=False) == 0  # kept


def test_label_pyramid_on_dask_workers_equals_in_process_and_keeps_ids(tmp_path):
    data = RNG.integers(0, 300, (64, 72, 80)).astype(np.uint64)
    whole = _filled(tmp_path / "whole.zarr", data, chunks=(64, 72, 80), labels=True)
    blocks = _filled(tmp_path / "blocks.zarr", data, chunks=(16, 16, 16), labels=True)
    build_pyramids([whole], progress=False)
    build_pyramids([blocks], workers=2, progress=False)
    got, want = _levels(tmp_path / "blocks.zarr"), _levels(tmp_path / "whole.zarr")
    assert len(got) == 2
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    ids = set(np.unique(data))
    assert set(np.unique(got[1])) <= ids
    np.testing.assert_array_equal(got[1], downsample(data, (2, 2, 2), "mode"))
    assert _multiscales(tmp_path / "blocks.zarr")["type"] == "mode"


def test_no_pyramid_and_other_formats_have_one_level(tmp_path):
    data = RNG.random((64, 64, 64), dtype=np.float32)
    plain = create_volume(str(tmp_path / "p.zarr"), shape=data.shape, dtype=data.dtype)
    assert len(_multiscales(tmp_path / "p.zarr")["datasets"]) == 1
    h5 = create_volume(f"{tmp_path / 'p.h5'}:/out", shape=data.shape, dtype=data.dtype, pyramid=True)
    assert build_pyramids([plain, h5], progress=False) == 0


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_outputs_validate_with_ome_zarr_models(tmp_path, zarr_format):
    if zarr_format == 3:
        from ome_zarr_models.v05.image import Image
        from ome_zarr_models.v05.image_label import ImageLabel
        root = tmp_path / "out.zarr"
        image, seg = root / "image", root / "seg"
        zarr.open_group(str(root), mode="w", zarr_format=3)
    else:
        from ome_zarr_models.v04.image import Image
        from ome_zarr_models.v04.image_label import ImageLabel
        root = tmp_path / "v2.zarr"
        image, seg = root / "image", root / "seg"
        zarr.open_group(str(root), mode="w", zarr_format=2)  # psc-seg writes v2 inside a v2 container
    affs = _filled(image, RNG.random((3, 64, 64, 66), dtype=np.float32), chunks=(32, 32, 32))
    labels = _filled(seg, RNG.integers(0, 9, (64, 64, 66)).astype(np.uint64), chunks=(32, 32, 32), labels=True)
    build_pyramids([affs, labels], progress=False)
    affs.finalize()
    labels.finalize()
    assert zarr.open_group(str(image), mode="r").metadata.zarr_format == zarr_format
    validated = Image.from_zarr(zarr.open_group(str(image), mode="r")).attributes
    validated = validated.ome if zarr_format == 3 else validated
    assert [d.path for d in validated.multiscales[0].datasets] == ["0", "1"]
    validated = ImageLabel.from_zarr(zarr.open_group(str(seg), mode="r")).attributes
    validated = validated.ome if zarr_format == 3 else validated
    assert len(validated.multiscales[0].datasets) == 2 and validated.image_label is not None
    assert open_volume(str(seg)).attrs.get("image-label") is None  # OME keys stay out of psc-seg's attrs


def test_segmentation_in_the_labels_group_of_the_raw_image(tmp_path):
    """``raw.zarr/labels/seg`` beside an OME-Zarr raw image: listed in the labels group, found by
    the ome-zarr reader and valid for ome-zarr-models; other outputs there are refused."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Labels, Reader
    from ome_zarr_models.v05.labels import Labels as LabelsModel

    raw = _filled(tmp_path / "raw.zarr", RNG.integers(0, 255, (64, 64, 64), dtype=np.uint8), chunks=(32, 32, 32))
    build_pyramids([raw], progress=False)
    raw.finalize()
    for name in ("seg", "other"):
        seg = _filled(tmp_path / "raw.zarr" / "labels" / name, RNG.integers(1, 5, (64, 64, 64)).astype(np.uint64),
                      chunks=(32, 32, 32), labels=True)
        build_pyramids([seg], progress=False)
        seg.finalize()
    attrs = dict(zarr.open_group(str(tmp_path / "raw.zarr" / "labels"), mode="r").attrs)
    assert attrs["ome"]["labels"] == ["seg", "other"]
    label_attrs = dict(zarr.open_group(str(tmp_path / "raw.zarr/labels/seg"), mode="r").attrs)["ome"]
    assert label_attrs["image-label"]["source"] == {"image": "../../"}
    LabelsModel.from_zarr(zarr.open_group(str(tmp_path / "raw.zarr" / "labels"), mode="r"))
    nodes = list(Reader(parse_url(str(tmp_path / "raw.zarr")))())
    found = [n for n in nodes if any(isinstance(s, Labels) for s in n.specs)]
    assert found, [n.specs for n in nodes]
    assert open_volume(str(tmp_path / "raw.zarr")).shape == (64, 64, 64)  # the raw still reads as before
    assert open_volume(str(tmp_path / "raw.zarr/labels/seg")).dtype == np.uint64
    with pytest.raises(UserError, match="would lie inside the image"):  # not a label volume
        create_volume(str(tmp_path / "raw.zarr/labels/probs"), shape=(64, 64, 64), dtype=np.float32)
    with pytest.raises(UserError, match="would lie inside the image"):  # not where the convention puts labels
        create_volume(str(tmp_path / "raw.zarr/seg2"), shape=(64, 64, 64), dtype=np.uint64, labels=True)
    assert json.loads((tmp_path / "raw.zarr" / "zarr.json").read_text())["attributes"]["ome"]["multiscales"]


def test_pyramid_of_an_output_in_s3_resumes_from_its_record(s3_bucket, monkeypatch):
    from psc_seg.io.pyramid import PyramidStep

    out = f"{s3_bucket()}/affs.zarr"
    data = RNG.random((64, 64, 96), dtype=np.float32)
    volume = _filled(out, data, chunks=(16, 32, 32))  # level 1 (32, 32, 48): 4 blocks
    original, calls = PyramidStep.compute, []

    def fail_third(self, region):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return original(self, region)

    monkeypatch.setattr(PyramidStep, "compute", fail_third)
    with pytest.raises(RuntimeError, match="killed"):
        build_pyramids([volume], progress=False)
    monkeypatch.undo()
    assert build_pyramids([open_volume(out, mode="r+")], progress=False) == 2  # the first 2 were kept
    from psc_seg.io import stores

    group = zarr.open_group(stores.zarr_store(out), mode="r")
    np.testing.assert_array_equal(group["1"][...], downsample(data, (2, 2, 2), "mean"))
