"""segment keeps the affinities' place in the world, and segments a region of interest
(``--roi`` in world units, ``--roi-voxels``) whole-volume and blockwise as if the affinities
were cropped to it."""

import numpy as np
import pytest
from typer.testing import CliRunner

from psc_seg.affinities import DEFAULT_OFFSETS, seg_to_affinities
from psc_seg.cli.main import app
from psc_seg.evaluate import variation_of_information
from psc_seg.io import create_volume, open_volume
from psc_seg.pipelines.segment import segment

VOXEL = (40.0, 4.0, 4.0)
OFFSET = (400.0, 800.0, 800.0)  # nm, as a CREMI label crop


@pytest.fixture
def placed(tmp_path, make_labels):
    """Affinities of Voronoi labels, ``(3, 24, 40, 40)`` at 40x4x4 nm, offset (400, 800, 800) nm."""
    labels = make_labels((24, 40, 40), 20, seed=3)
    spec = str(tmp_path / "affs.zarr")
    affs = create_volume(spec, shape=(3, *labels.shape), dtype=np.float32, voxel_size=VOXEL, offset=OFFSET,
                         unit="nanometer", attrs={"task": {"kind": "affinities", "offsets": DEFAULT_OFFSETS}})
    affs.write(None, seg_to_affinities(labels))
    affs.finalize()
    return labels, spec


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` split the voxels (nearly) the same way, ids aside."""
    return sum(variation_of_information(a, b)) <= 0.05


def test_segment_keeps_the_offset(placed, tmp_path):
    labels, affs = placed
    for name, block_shape in [("whole.zarr", None), ("blocks.zarr", (8, 24, 24))]:
        (out,) = segment(affs, str(tmp_path / name), block_shape=block_shape, progress=False)
        seg = open_volume(out)
        assert seg.offset == OFFSET and seg.voxel_size == VOXEL and seg.unit == "nanometer"
        assert _same_partition(seg.read(), labels)


@pytest.mark.parametrize("block_shape", [None, (8, 16, 16)])
def test_an_roi_is_segmented_as_the_cropped_affinities(placed, tmp_path, block_shape):
    labels, affs = placed
    begin, end = (3, 5, 10), (19, 37, 30)
    world = ",".join(f"{o + b * v:g}:{o + e * v:g}" for o, v, b, e in zip(OFFSET, VOXEL, begin, end))
    (out,) = segment(affs, str(tmp_path / "roi.zarr"), block_shape=block_shape, progress=False, roi=world)
    seg = open_volume(out)
    assert seg.shape == (16, 32, 20)
    assert seg.offset == (520.0, 820.0, 840.0)  # offset + begin x voxel size
    crop = labels[3:19, 5:37, 10:30]
    assert _same_partition(seg.read(), crop)

    cropped = str(tmp_path / "cropped.zarr")
    volume = create_volume(cropped, shape=(3, *crop.shape), dtype=np.float32, voxel_size=VOXEL,
                           offset=seg.offset, unit="nanometer",
                           attrs={"task": {"kind": "affinities", "offsets": DEFAULT_OFFSETS}})
    volume.write(None, open_volume(affs).read()[:, 3:19, 5:37, 10:30])
    volume.finalize()
    (ref,) = segment(cropped, str(tmp_path / "ref.zarr"), block_shape=block_shape, progress=False)
    np.testing.assert_array_equal(seg.read(), open_volume(ref).read())

    (again,) = segment(affs, str(tmp_path / "voxels.zarr"), block_shape=block_shape, progress=False,
                       roi_voxels="3:19,5:37,10:30")
    np.testing.assert_array_equal(open_volume(again).read(), seg.read())


def test_segment_roi_refusals_and_resume_settings(placed, tmp_path):
    _, affs = placed
    out = str(tmp_path / "seg.zarr")
    runner = CliRunner()
    for args, needle in [(["--roi", "400:800,800:802,800:960"], "voxel borders"),
                         (["--roi-voxels", "0:30,0:8,0:8"], "reaches outside"),
                         (["--roi-voxels", "4:4,0:8,0:8"], "is empty")]:
        result = runner.invoke(app, ["segment", affs, out, "-q", *args])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "400:1360,800:960,800:960 nm" in lines[0], result.output
    result = runner.invoke(app, ["segment", affs, out, "-q", "--roi-voxels", "0:8,0:16,0:16",
                                 "--block-shape", "8", "16", "16"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["segment", affs, out, "-q", "--roi-voxels", "0:8,0:16,8:24",
                                 "--block-shape", "8", "16", "16", "--resume"])
    assert result.exit_code == 2 and "other settings" in result.output, result.output
