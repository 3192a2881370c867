"""Files written so that a reader never sees half of one, and the OS errors of reads and
writes that a user can fix."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from psc_seg.errors import UserError


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


# how to fix an OS error of a write ("free space ..."), by errno; a read refused needs permission only
_WRITE_FIXES = {
    errno.ENOSPC: "free space on its disk",
    errno.EDQUOT: "free space or raise your disk quota",
    errno.EACCES: "make its folder writable for you",
    errno.EPERM: "make its folder writable for you",
    errno.EROFS: "remount its file system writable",
}
_READ_FIXES = {errno.EACCES: "make it readable for you", errno.EPERM: "make it readable for you"}


def os_fault(exc: BaseException, *, write: bool = True) -> tuple[str, str] | None:
    """``(reason, fix)`` for an OS error of a write (``write``) or read that the user can fix: a
    full disk or quota, no permission, a read-only file system; e.g. ``("No space left on
    device", "free space on its disk")``. None for any other error."""
    number = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    fix = (_WRITE_FIXES if write else _READ_FIXES).get(number)  # type: ignore[arg-type]
    return (os.strerror(number), fix) if fix else None


@contextmanager
def fixable_writes(what: str, *, then: str = "rerun", options: Sequence[str] = ()) -> Iterator[None]:
    """Turn an OS error of the writes in the block that the user can fix (:func:`os_fault`)
    into a one-line UserError: ``cannot {what} ({reason}); {fix}, then {then}``; ``then`` may
    name parameters listed in ``options`` (see :class:`psc_seg.errors.UserError`)."""
    try:
        yield
    except OSError as exc:
        fault = os_fault(exc)
        if fault is None:
            raise
        raise UserError(f"cannot {what} ({fault[0]}); {fault[1]}, then {then}", options=options) from exc


def check_png_output(out: Path, what: str, *, inputs: Sequence[str], overwrite: bool) -> None:
    """UserError unless ``out`` may receive a PNG: a ``.png`` name, not an existing file
    without ``overwrite``, and not inside the file or container of one of ``inputs`` (volume
    specs), where a foreign file would sit among the input's own."""
    from psc_seg.io.spec import parse_spec

    if out.suffix.lower() != ".png":
        raise UserError(f"{what} {str(out)!r}: give a .png file name")
    for spec in inputs:
        parsed = parse_spec(spec)
        if not parsed.url and out.resolve().is_relative_to(Path(parsed.path).resolve()):
            raise UserError(f"{what} {str(out)!r} lies inside the input {spec!r}; write it outside the input")
    if out.exists() and not overwrite:
        raise UserError(f"{str(out)!r} exists; pass {{overwrite}} to replace it", options=("overwrite",))
