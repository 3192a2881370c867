"""Silence the C++ chatter of waterz, which writes to the process's stdout (file descriptor 1)."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, object] | None = None


@contextlib.contextmanager
def quiet_stdout():
    """Send file descriptor 1 (C/C++ ``std::cout``) and Python's ``sys.stdout`` to nowhere.

    Safe with threads (dask workers): the first thread in redirects, the last one out
    restores, so no thread restores what another one still silences.
    """
    global _depth, _saved
    with _lock:
        if _depth == 0:
            sys.stdout.flush()
            saved_fd = os.dup(1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
            _saved = (saved_fd, sys.stdout)
            sys.stdout = io.StringIO()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                saved_fd, sys.stdout = _saved
                os.dup2(saved_fd, 1)
                os.close(saved_fd)
                _saved = None
