"""Inputs and outputs in one HDF5 file (``f.h5:/raw`` -> ``f.h5:/affinities`` -> ``f.h5:/seg``),
the layout many EM users keep: in process, with dask workers, and resumed."""

import h5py
import numpy as np
import pytest
import torch

from psc_seg.io import META_KEY, open_volume
from psc_seg.models import build_model, save_checkpoint
from psc_seg.pipelines.predict import predict
from psc_seg.pipelines.segment import segment

OFFSETS = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]


@pytest.fixture()
def em_file(tmp_path):
    torch.manual_seed(0)
    model = build_model("unet", num_fmaps=2, fmap_inc_factor=2, downsample_factors=[[2, 2, 2]], padding="valid")
    ckpt = save_checkpoint(tmp_path / "unet.pt", model, metadata={"task": {"kind": "affinities", "offsets": OFFSETS},
                                                                  "normalize": {"kind": "uint8"}})
    path = tmp_path / "em.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = np.random.default_rng(0).integers(0, 256, (24, 28, 32), dtype=np.uint8)
        f["neurons"] = np.ones((24, 28, 32), np.uint64)  # a dataset the runs must leave alone
    return ckpt, path


def _unfinish(spec: str, keep: int) -> None:
    """The state a killed run leaves: the first ``keep`` recorded blocks, the rest zero, not complete."""
    volume = open_volume(spec, mode="r+")
    log = volume.sidecar_dir("blocks") / "done.log"
    log.write_text("".join(line + "\n" for line in log.read_text().splitlines()[:keep]))
    volume.write(None, np.zeros(volume.shape, volume.dtype))
    volume.update_attrs({META_KEY: {**volume.attrs[META_KEY], "complete": False}})


def test_predict_and_segment_within_one_hdf5_file(em_file):
    ckpt, path = em_file
    raw, affs = f"{path}:/raw", f"{path}:/affinities"
    done = predict(ckpt, raw, affs, block_shape=(12, 12, 12), progress=False)
    assert done["computed"] == done["blocks"] == 18
    reference = open_volume(affs).read()
    assert open_volume(affs).complete and reference.std() > 0

    _unfinish(affs, keep=5)
    resumed = predict(ckpt, raw, affs, block_shape=(12, 12, 12), resume=True, progress=False)
    assert (resumed["skipped"], resumed["computed"]) == (5, 13)
    assert open_volume(affs).complete  # (the 5 recorded blocks stay as _unfinish left them)
    _unfinish(affs, keep=0)
    resumed = predict(ckpt, raw, affs, block_shape=(12, 12, 12), resume=True, workers=2, progress=False)
    assert resumed["computed"] == 18
    np.testing.assert_array_equal(open_volume(affs).read(), reference)

    (whole,) = segment(affs, f"{path}:/seg", thresholds=[0.5], progress=False)
    (blockwise,) = segment(affs, f"{path}:/seg_blocks", thresholds=[0.5], block_shape=(12, 14, 16), workers=2,
                           progress=False)
    assert open_volume(whole).complete and open_volume(blockwise).complete
    assert open_volume(blockwise).read().any()
    with h5py.File(path, "r") as f:
        assert set(f) >= {"raw", "neurons", "affinities", "seg", "seg_blocks"}
        assert f["neurons"][...].min() == 1
