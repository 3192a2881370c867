"""Files written so that a reader never sees half of one."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` (hidden, ending in ``suffix``, e.g. ``".png"`` where the
    writer goes by the extension) for the caller to write; it replaces ``path`` when the block
    ends without error and is removed otherwise. A killed or failed write leaves ``path`` as
    it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
