"""``run_blockwise``: run a per-block function over blocks, serially or through dask.distributed,
skipping and recording finished blocks.

Example (the "+1 model": output = input + 1 whatever the block shape)::

    from psc_seg.engine import BlockRecord, Roi, block_grid, read_mirrored, run_blockwise
    from psc_seg.io import create_volume, open_volume

    raw = open_volume("raw.zarr")
    out = create_volume("plus1.zarr", shape=raw.shape, dtype="float32", chunks=(32, 32, 32))
    blocks = block_grid(Roi((0, 0, 0), raw.spatial_shape), write_shape=(32, 32, 32), context=4)

    def plus_one(block):
        data = read_mirrored(raw, block.read_roi)           # (40, 40, 40), mirrored at edges
        inner = block.write_roi.relative_to(block.read_roi)
        out.write(block.write_roi, data[inner.to_slices()] + 1)

    record = BlockRecord.create(out.sidecar_dir("blocks"), {"task": "plus1"})
    stats = run_blockwise(blocks, plus_one, workers=2, record=record)
    out.finalize()

Execution:

* ``workers=0`` and no ``scheduler`` (default): in this process, one block after the other
  (serial and synchronous: a debugger and tracebacks work as usual).
* ``workers=N``: a dask.distributed ``LocalCluster`` of N single-threaded worker processes
  on 127.0.0.1, closed at the end.
* ``scheduler="tcp://host:port"``: an existing dask cluster (dask-jobqueue, Kubernetes...);
  its workers must import psc_seg and see the same files.

``process`` is pickled once and sent to every worker (``client.scatter``), so it may cache
state (a loaded model) on first use. It writes its own output; the record is appended on
the client after a task has returned, so a killed run never lists unwritten blocks.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from tqdm.auto import tqdm

from psc_seg.engine.blocks import Block, iter_batches
from psc_seg.engine.resume import BlockRecord
from psc_seg.errors import UserError, check_exclusive
from psc_seg.files import fixable_writes

CONNECT_TIMEOUT = "20s"  # for an existing scheduler


@dataclass
class RunStats:
    """What a run did: blocks in total, skipped as already done, computed now; voxels of the
    computed write ROIs; wall-clock seconds."""

    total: int
    skipped: int
    computed: int
    voxels: int
    seconds: float


def _call(process: Callable, task: Block | list[Block], batched: bool) -> tuple[list[int], Any]:
    result = process(task) if batched else process(task[0])
    return [b.block_id for b in task], result


def run_blockwise(
    blocks: Sequence[Block],
    process: Callable[[Any], Any],
    *,
    workers: int = 0,
    scheduler: str | None = None,
    batch_size: int | None = None,
    record: BlockRecord | None = None,
    on_result: Callable[[list[int], Any], None] | None = None,
    progress: bool = True,
    desc: str = "blocks",
    skip: Collection[int] = (),
) -> RunStats:
    """Run ``process`` on every block not yet finished in ``record``.

    Args:
        blocks: the blocks (e.g. from :func:`block_grid`).
        process: ``process(block)``, or ``process(list_of_blocks)`` when ``batch_size`` is
            set; writes the block's output itself. Must be picklable for ``workers`` /
            ``scheduler`` (module-level functions, or objects with picklable state).
        workers: number of local worker processes (0: serial, in this process).
        scheduler: address of an existing dask scheduler (excludes ``workers``).
        batch_size: give ``process`` lists of up to this many blocks (one task each).
        record: finished blocks are skipped and newly finished ones appended; the number of
            blocks is kept in it (what "37 of 64 blocks written" counts).
        on_result: called on the client as ``on_result(block_ids, return_value)`` for each task.
        progress: show a tqdm bar over voxels (rate in voxels/s, ETA) on stderr.
        desc: label of the progress bar.
        skip: ids of blocks with nothing to compute (outside a mask; their output keeps its
            fill value): recorded as done without running, counted as skipped.
    """
    check_exclusive(workers=bool(workers), scheduler=bool(scheduler))
    if workers < 0:
        raise UserError(f"{{workers}} must be >= 0, got {workers}", options=("workers",))
    if batch_size is not None and batch_size < 1:
        raise UserError(f"{{batch_size}} must be >= 1, got {batch_size}", options=("batch_size",))
    start = time.perf_counter()

    def kept():  # a full disk or a folder made read-only under the record: one line, and resumable
        return fixable_writes(f"write the block record {str(record.directory)!r}",
                              then="rerun with {resume}: what was written is kept", options=("resume",))

    if record is not None:
        with kept():
            record.set_total(len(blocks))
    done = record.done_ids() if record is not None else set()
    if skip and record is not None:
        with kept():
            record.mark_done(sorted(set(skip) - done))
    done |= set(skip)
    pending = [b for b in blocks if b.block_id not in done]
    tasks = list(iter_batches(pending, batch_size or 1))
    batched = batch_size is not None
    total_voxels = sum(b.write_roi.size for b in pending)
    bar = tqdm(total=total_voxels, unit="vox", unit_scale=True, desc=desc, disable=not progress, smoothing=0.1,
               dynamic_ncols=True)
    finished = 0
    sizes = {b.block_id: b.write_roi.size for b in pending}

    def finish(ids: list[int], result: Any) -> None:
        nonlocal finished
        if record is not None:
            with kept():
                record.mark_done(ids)
        if on_result is not None:
            on_result(ids, result)
        finished += len(ids)
        bar.update(sum(sizes[i] for i in ids))
        bar.set_postfix_str(f"block {finished}/{len(pending)}", refresh=False)

    try:
        if not workers and not scheduler:
            for task in tasks:
                finish(*_call(process, task, batched))
        else:
            _run_dask(tasks, process, batched, finish, workers=workers, scheduler=scheduler)
    finally:
        bar.close()
        if record is not None:
            record.close()
    return RunStats(total=len(blocks), skipped=len(blocks) - len(pending), computed=finished,
                    voxels=total_voxels, seconds=time.perf_counter() - start)


def check_executor(workers: int = 0, scheduler: str | None = None, *, timeout: float = 5.0) -> None:
    """UserError, before any output is made, for where blocks would run that cannot be used:
    ``workers`` with ``scheduler``, negative ``workers``, a ``scheduler`` address that is not
    one or (TCP / TLS) where nothing answers within ``timeout`` seconds."""
    check_exclusive(workers=bool(workers), scheduler=bool(scheduler))
    if workers < 0:
        raise UserError(f"{{workers}} must be >= 0, got {workers}", options=("workers",))
    if not scheduler:
        return
    import socket

    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    try:
        protocol, location = parse_address(scheduler)
        host, port = parse_host_port(location) if protocol in ("tcp", "tls") else (None, None)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{{scheduler}} {scheduler!r} is not a dask scheduler address ({exc}); give e.g. "
                        "tcp://host:8786", options=("scheduler",)) from None
    if host is None:  # other protocols (ucx, inproc): the client finds out
        return
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"cannot reach the dask scheduler at {scheduler!r} ({exc.strerror or exc}); check the "
                        "address and that the scheduler runs", options=("scheduler",)) from None


def _run_dask(tasks: list, process: Callable, batched: bool, finish: Callable, *, workers: int,
              scheduler: str | None) -> None:
    from distributed import Client, as_completed

    with contextlib.ExitStack() as stack:
        if scheduler:
            try:
                client = Client(scheduler, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                raise UserError(f"cannot reach the dask scheduler at {scheduler!r} ({exc}); check the address") from None
            n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        else:
            client = Client(stack.enter_context(local_cluster(workers)))
            n_workers = workers
        stack.callback(client.close)  # before the cluster closes
        [shared] = client.scatter([process], broadcast=True, hash=False)
        queue = iter(tasks)
        window = 2 * n_workers  # tasks in flight: bounds client memory for any number of blocks
        running = as_completed([client.submit(_call, shared, t, batched, pure=False) for t in islice(queue, window)])
        for future in running:
            ids, result = future.result()
            finish(ids, result)
            for task in islice(queue, 1):
                running.add(client.submit(_call, shared, task, batched, pure=False))


@contextlib.contextmanager
def shared_cluster(workers: int | None, scheduler: str | None) -> Iterator[dict[str, Any]]:
    """:func:`run_blockwise`'s ``workers`` / ``scheduler`` for several runs in a row (the steps
    of a stage, its pyramid): ``workers=N`` starts one :func:`local_cluster` for all of them,
    not one per run, since each start costs seconds of process spawning and imports."""
    if not workers or workers < 0 or scheduler:  # run_blockwise handles (and refuses) these
        yield {"workers": workers or 0, "scheduler": scheduler}
        return
    with local_cluster(workers) as cluster:
        yield {"workers": 0, "scheduler": cluster.scheduler_address}


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[Any]:
    """A dask.distributed ``LocalCluster`` of ``workers`` single-threaded worker processes on
    127.0.0.1, without a dashboard; closed on exit. Its workers log nothing below CRITICAL: a
    task's exception reaches the client, which raises it (a UserError as one line, anything
    else with its traceback); a worker's own report of it would print that traceback too."""
    from distributed import LocalCluster

    with _sigint_ignored():  # the workers inherit it: Ctrl-C stops this process, which closes them
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=logging.CRITICAL,
                               # its HTTP server (health routes) on a free port: the default 8787 may be
                               # another cluster's, and dask would warn about it on stderr
                               scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
    with cluster:
        yield cluster


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this process meanwhile (main thread only), so that processes started
    meanwhile ignore it too: Ctrl-C in a terminal reaches the whole process group, and worker
    processes would each print a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
