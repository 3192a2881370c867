"""One writer per output: an owner file held while a run writes it.

The owner file (``.<file>[.<inner>].psc-seg-owner`` beside the output, see
:func:`psc_seg.io.sidecar_beside`) holds the writer's host, pid, process start time, a random
token and its command line. It is created atomically (written aside, then hard-linked into
place, which fails if it exists), so two runs that start together cannot both own an output.
For an output in an object store (``s3://``) the owner is an object beside the output, created
with a conditional write (S3's ``If-None-Match``), which fails as well if it exists.

* A second writer is refused, naming the first's host, pid and command.
* An owner whose process is gone (a dead pid, or a pid now used by a later process, on this
  host) is stale: a run that was killed. Only ``resume`` takes it over, since continuing that
  run is what the owner file protects; to start again instead, the user deletes the file (the
  message names it). An owner on another host cannot be checked and is never taken over.
* Before a run marks its outputs complete it checks that the owner file still holds its token
  (:meth:`OutputOwner.check`), so a run whose outputs were taken from it never reports success.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import socket
import sys
import time
from pathlib import Path

from psc_seg.errors import UserError
from psc_seg.files import fixable_writes
from psc_seg.io import stores


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, Linux), None if unknown or
    there is no such process: with the pid it names one process, even after pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of stat; the name in (...) may hold spaces


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    return started is None or _start_time(pid) in (None, started)


class OutputOwner:
    """The owner file at ``path`` of the output ``what`` (a spec, for messages), held by this
    process once :meth:`acquire` succeeds, until :meth:`release`."""

    def __init__(self, path: str | os.PathLike, what: str) -> None:
        self.remote = stores.is_url(path)
        self.path, self.what = (str(path) if self.remote else Path(path)), what
        self.token = secrets.token_hex(8)
        self.held = False

    def _mine(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid()),
                "token": self.token, "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": shlex.join(["psc-seg", *sys.argv[1:]]), "output": self.what}

    def read(self) -> dict | None:
        """The owner's record, None if there is none (an unreadable one counts as a live owner's
        being written: ``{}``)."""
        try:
            data = stores.read_bytes(self.path)
            return None if data is None else json.loads(data)
        except (OSError, ValueError):
            return {}

    def acquire(self, *, resume: bool = False) -> None:
        """Own the output; UserError if another run does (see the module docstring), or if the
        owner file cannot be written where the output goes (the first thing a run writes)."""
        if self.remote:
            stores.check_writable(self.path)
            mine = json.dumps(self._mine()).encode()

            def put(exclusive: bool) -> None:
                stores.write_bytes(self.path, mine, exclusive=exclusive)
            try:
                put(True)
            except FileExistsError:
                self._take_over(put, resume=resume)
            self.held = True
            return
        blocker = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise UserError(f"cannot create output {self.what!r}: {str(blocker)!r} is a file, not a folder; "
                            "choose another output")
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}-{self.token}")
        try:
            with fixable_writes(f"create output {self.what!r}"):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(self._mine()))
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    self._take_over(lambda exclusive: (os.link if exclusive else os.replace)(tmp, self.path),
                                    resume=resume)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        self.held = True
        try:
            self._check_nested()
        except UserError:
            self.release()
            raise

    def _check_nested(self) -> None:
        """UserError if a living run owns an output that holds this one or lies inside it
        (``d.zarr`` and ``d.zarr/affs``): their owner files lie side by side, beside the container."""
        from psc_seg.io import overlaps

        for path in self.path.parent.glob(".*.psc-seg-owner"):
            if path == self.path:
                continue
            try:
                other = json.loads(path.read_text())
                nested = overlaps(other["output"], self.what)
            except (OSError, ValueError, KeyError, TypeError):  # not an output's owner (a run folder's), or gone
                continue
            host, pid = other.get("host"), other.get("pid")
            if nested and (host != socket.gethostname() or not isinstance(pid, int) or _alive(pid, other.get("started"))):
                raise UserError(f"output {self.what!r} overlaps output {other['output']!r}, which is being written by "
                                f"another psc-seg run, pid {pid} on host {host}; wait for it to finish or choose "
                                "another output")

    def _take_over(self, put, *, resume: bool) -> None:
        """``put(exclusive)`` writes this run's owner record (``exclusive``: only if there is none)."""
        other = self.read()
        if other is None:  # released meanwhile
            put(True)
            return
        host, pid = other.get("host", "?"), other.get("pid")
        who = f"pid {pid} on host {host}"
        if host != socket.gethostname() or not isinstance(pid, int) or _alive(pid, other.get("started")):
            command = f" (`{other['command']}`, since {other.get('since', '?')})" if other.get("command") else ""
            raise UserError(f"output {self.what!r} is being written by another psc-seg run, {who}{command}; wait for "
                            f"it to finish or stop it (if that run is gone, delete {str(self.path)!r})")
        if not resume:
            raise UserError(f"output {self.what!r} belongs to an interrupted run ({who}, no longer running); pass "
                            f"{{resume}} to continue it, or delete {str(self.path)!r} to start again",
                            options=("resume",))
        put(False)
        if (self.read() or {}).get("token") != self.token:  # another run took it over at the same moment
            raise UserError(f"output {self.what!r} was just taken over by another psc-seg run; wait for it to finish")

    def check(self) -> None:
        """UserError unless this process still owns the output (call before marking it complete)."""
        current = self.read()
        if current is None or current.get("token") != self.token:
            who = f"pid {current.get('pid', '?')} on host {current.get('host', '?')}" if current else "another run"
            raise UserError(f"output {self.what!r} was taken over by {who} while this run wrote it; this run's result "
                            "is not marked complete")

    def release(self) -> None:
        """Give the output up (only if this process still owns it)."""
        if self.held and (self.read() or {}).get("token") == self.token:
            stores.remove(self.path)
        self.held = False
