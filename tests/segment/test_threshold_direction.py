"""``-t`` means the same for every decoder: a higher threshold merges more, so the segment
count falls as the threshold rises (DESIGN.md section 4; issue 12, case 5)."""

import numpy as np
import pytest
from typer.testing import CliRunner

from psc_seg.affinities import DEFAULT_OFFSETS, seg_to_affinities
from psc_seg.cli.main import app
from psc_seg.io import open_volume
from psc_seg.pipelines.segment import segment

THRESHOLDS = [0.1, 0.3, 0.5, 0.7, 0.9]


@pytest.mark.parametrize("block_shape", [None, (8, 16, 16)])
@pytest.mark.parametrize("decoder", ["waterz", "cc"])
def test_segment_count_falls_as_the_threshold_rises_for_every_decoder(tmp_path, make_labels, make_noisy, decoder,
                                                                      block_shape):
    labels = make_labels((16, 32, 32), 12, seed=2)
    np.save(tmp_path / "affs.npy", make_noisy(seg_to_affinities(labels), sigma=0.2, seed=2))
    outs = segment(str(tmp_path / "affs.npy"), str(tmp_path / "seg.zarr"), thresholds=THRESHOLDS, decoder=decoder,
                   block_shape=block_shape, offsets=DEFAULT_OFFSETS, progress=False)
    counts = [len(np.unique(open_volume(out).read())) for out in outs]
    assert all(a >= b for a, b in zip(counts, counts[1:])), counts
    assert counts[-1] < counts[0], counts


def test_cc_joins_an_edge_when_its_boundary_score_is_below_the_threshold():
    from psc_seg.segment import affinity_components

    affs = np.zeros((3, 1, 1, 4), dtype=np.float32)
    affs[2, 0, 0, 1] = 0.9  # boundary score 0.1: joins x=0, x=1 from threshold 0.1 up (strictly above it)
    affs[2, 0, 0, 3] = 0.4  # boundary score 0.6: joins x=2, x=3 above 0.6
    assert affinity_components(affs, 0.05)[0, 0].tolist() == [0, 0, 0, 0]
    assert affinity_components(affs, 0.5)[0, 0].tolist() == [1, 1, 0, 0]
    assert affinity_components(affs, 0.7)[0, 0].tolist() == [1, 1, 2, 2]


def test_segment_help_states_the_meaning_and_takes_q(tmp_path, make_labels):
    runner = CliRunner()
    result = runner.invoke(app, ["segment", "--help"])
    assert result.exit_code == 0
    assert "higher = more merging (fewer, larger segments) for every decoder" in " ".join(result.output.replace("│", " ").split())
    np.save(tmp_path / "affs.npy", seg_to_affinities(make_labels((8, 16, 16), 4, seed=1)))
    result = runner.invoke(app, ["segment", str(tmp_path / "affs.npy"), str(tmp_path / "seg.zarr"), "-q",
                                 "--offsets", "[[-1,0,0],[0,-1,0],[0,0,-1]]"])
    assert result.exit_code == 0, result.output
