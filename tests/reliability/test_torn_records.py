"""A block record (``done.log``) torn by a kill: whatever byte its last line was cut at, a
resume never skips a block whose data are not on disk (issue 13, case 6)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from psc_seg.engine import BlockRecord
from psc_seg.io import open_volume
from psc_seg.pipelines.predict import predict


def test_a_record_cut_at_every_byte_of_its_last_line_never_lists_a_block_not_written(tmp_path):
    written = [0, 1, 2, 7, 11, 250]
    record = BlockRecord.create(tmp_path / "r", {"run": 1})
    record.mark_done(written)
    record.close()
    full = record.log_file.read_bytes()
    last = full.rstrip(b"\n").rfind(b"\n") + 1  # where the last line (250's) starts
    for cut in range(last, len(full) + 1):
        record.log_file.write_bytes(full[:cut])
        before = BlockRecord(record.directory).done_ids()
        assert before == set(written if cut == len(full) else written[:-1]), cut
        resumed = BlockRecord(record.directory)  # the resumed run appends the blocks it finishes
        resumed.mark_done([50, 3])
        resumed.close()
        after = BlockRecord(record.directory).done_ids()
        assert before | {50, 3} <= after <= set(written) | {50, 3}, (cut, sorted(after))


def test_a_merged_line_is_not_read_as_another_block(tmp_path):
    """The torn ``"2"`` and a later ``"50 <crc>"`` written by another program (or an older
    psc-seg) without a new line in between: ``"250 <crc of 50>"`` is not block 250."""
    record = BlockRecord.create(tmp_path / "r", {"run": 1})
    record.mark_done([1])
    record.close()
    line_50 = record.log_file.read_bytes().replace(b"1 ", b"50 ", 1)  # a well-formed line, checksum wrong for 50
    record.mark_done([50])
    record.close()
    good_50 = record.log_file.read_bytes().splitlines(keepends=True)[-1]
    record.log_file.write_bytes(b"1 " + line_50.split(b" ")[1] + b"2" + good_50)
    assert BlockRecord(record.directory).done_ids() == {1}


def test_predict_killed_then_record_torn_resumes_to_the_uninterrupted_result(tmp_path, raw_zarr, checkpoint,
                                                                             kill_after):
    """A real SIGKILL of ``psc-seg predict``, its record then cut inside its last line at a
    seeded random byte: ``--resume`` gives the volume an uninterrupted run gives, bit for bit."""
    reference = tmp_path / "reference.zarr"
    predict(checkpoint, raw_zarr, str(reference), block_shape=(8, 8, 8), progress=False)
    out = tmp_path / "affs.zarr"
    exe = Path(sys.executable).with_name("psc-seg")
    cmd = [str(exe if exe.exists() else "psc-seg"), "predict", str(checkpoint), raw_zarr, str(out),
           "--block-shape", "8", "8", "8", "--quiet"]
    log = out / "0" / ".psc-seg-blocks" / "done.log"
    kill_after(cmd, log, 5, env={**os.environ, "OMP_NUM_THREADS": "1"})
    data = log.read_bytes().rstrip(b"\n")
    start = data.rfind(b"\n") + 1
    cut = int(np.random.default_rng(13).integers(start + 1, len(data)))  # inside the last line
    log.write_bytes(data[:cut])
    assert not open_volume(str(out)).complete
    summary = predict(checkpoint, raw_zarr, str(out), block_shape=(8, 8, 8), progress=False, resume=True)
    assert summary["skipped"] >= 4 and summary["computed"] >= 1
    result = open_volume(str(out))
    assert result.complete
    np.testing.assert_array_equal(result.read(), open_volume(str(reference)).read())
