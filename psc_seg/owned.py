"""Folders psc-seg owns (a training run, the demo): a marker file saying so, and which of the
folder's entries psc-seg wrote, so that starting over removes those and nothing of the user's.

A folder is psc-seg's when it holds the marker ``.psc-seg-<kind>`` (JSON: the psc-seg version,
the kind and the entries it writes), written when psc-seg starts using a folder that was empty
or new. A folder that is not empty and has no marker is the user's: commands refuse to write
into it. Starting over (``--overwrite``) removes only the entries the marker lists, with the
bookkeeping psc-seg keeps beside them (``name.partial.*``, hidden ``.name.*``)::

    run/.psc-seg-run       {"psc_seg_version": "0.1.0", "kind": "run", "entries": ["checkpoints", ...]}
    run/checkpoints/       psc-seg's: listed
    run/notes.txt          the user's: kept
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from psc_seg import __version__
from psc_seg.files import atomic_path


def marker_path(folder: str | Path, kind: str) -> Path:
    """``folder/.psc-seg-<kind>``."""
    return Path(folder) / f".psc-seg-{kind}"


def marked_entries(folder: str | Path, kind: str, *, allowed: Sequence[str] | None = None) -> list[str] | None:
    """The entries the marker of ``folder`` lists (None: no marker, the folder is not psc-seg's).

    Only plain names count (no path separators, not the marker itself); with ``allowed``, only
    those of its names (a damaged or hand-edited marker then removes no more than psc-seg writes).
    A marker that cannot be read lists ``allowed`` (or nothing)."""
    path = marker_path(folder, kind)
    if not path.is_file():
        return None
    try:
        listed = json.loads(path.read_text()).get("entries")
    except (ValueError, UnicodeDecodeError, AttributeError):
        listed = None
    if not isinstance(listed, list):
        listed = list(allowed or ())
    names = [n for n in listed if isinstance(n, str) and n and "/" not in n and "\\" not in n
             and n not in (".", "..", path.name)]
    return [n for n in names if allowed is None or n in allowed]


def write_marker(folder: str | Path, kind: str, entries: Iterable[str]) -> Path:
    """Mark ``folder`` as psc-seg's ``kind``, listing ``entries`` (atomically)."""
    path = marker_path(folder, kind)
    text = json.dumps({"psc_seg_version": __version__, "kind": kind, "entries": sorted(set(entries))}, indent=1)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return path


def other_entries(folder: str | Path, *, ignore: Iterable[str | Path] = ()) -> list[str]:
    """Names of what ``folder`` holds besides psc-seg markers and the paths ``ignore`` (e.g. the
    config file a run was given); ``[]`` for a folder that does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    skip = {Path(p).resolve() for p in ignore}
    return sorted(p.name for p in folder.iterdir()
                  if not p.name.startswith(".psc-seg-") and p.resolve() not in skip)


def _beside(name: str, entry: str) -> bool:
    """Whether ``name`` is ``entry`` or bookkeeping psc-seg keeps beside it: a partial file
    (``entry.partial.npy``), a hidden sidecar or temporary file (``.entry.psc-seg-blocks``,
    ``.entry.123-456.tmp``)."""
    return name == entry or name.startswith(f"{entry}.partial.") or name.startswith(f".{entry}.")


def remove_entries(folder: str | Path, entries: Iterable[str]) -> list[str]:
    """Remove ``entries`` of ``folder`` and the bookkeeping beside them; returns the names removed."""
    folder = Path(folder)
    entries = list(entries)
    removed = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if any(_beside(path.name, entry) for entry in entries):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(path.name)
    return removed
