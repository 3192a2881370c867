"""Resume records: which blocks of an output are finished, keyed by a hash of the settings.

A record is a folder kept with the output (``Volume.sidecar_dir("blocks")``)::

    settings.json   {"hash": "<sha256 of the canonical settings JSON>", "settings": {...}}
    total           the number of blocks of the run, written when it starts (older records lack it)
    done.log        finished blocks, one line each, appended (and flushed) as blocks finish:
                    ``<id> <crc32 of the id, 8 hex digits>``

In an object store (an output at an ``s3://`` or ``gs://`` URL), where nothing can be appended,
the record is a prefix of objects under the same name: ``settings.json``, ``total``, and one
empty object ``done/<id>`` per finished block (:class:`ObjectBlockRecord`); each is written
whole, so the same rules hold.

A block is appended only after its output has been written, so a run killed at any moment
(even SIGKILL) leaves a record that lists only blocks whose data are on disk. Each line checks
itself: a torn last line (``"2"`` of ``"250 …"``), or one that a later append ran into
(``"2"`` + ``"50 …"`` reads ``"250 …"`` with 50's checksum), is ignored, so a torn record can
only make a resume compute a block again, never skip one. A reopened log starts a new line
before it appends. A rerun with other settings is refused (the hash differs) unless the caller
starts a new record.

:func:`prepare_outputs` is the one rule for outputs, resume and overwrite (predict and both
segment paths): the record lives with the first output and is where its settings hash is kept,
finished or not. :func:`check_finished` is the one rule for inputs: a volume psc-seg marked
unfinished is refused, saying how much of it is written (from its record) and the command that
finishes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psc_seg.engine.owner import OutputOwner
from psc_seg.errors import UserError, check_exclusive
from psc_seg.files import atomic_path, fixable_writes
from psc_seg.io import stores
from psc_seg.io.pyramid import pyramid_steps


def settings_hash(settings: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``settings`` (sorted keys)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_hash(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (e.g. a checkpoint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class BlockRecord:
    """The finished-block record in ``directory`` (see the module docstring)."""

    def __new__(cls, directory: str | os.PathLike | None = None):
        if cls is BlockRecord and directory is not None and stores.is_url(directory):
            return super().__new__(ObjectBlockRecord)
        return super().__new__(cls)

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self._log = None

    def stored_settings(self) -> dict[str, Any] | None:
        """``{"hash", "settings"}`` as stored, None if the record has none."""
        if not self.settings_file.is_file():
            return None
        return json.loads(self.settings_file.read_text())

    @property
    def settings_file(self) -> Path:
        return self.directory / "settings.json"

    @property
    def log_file(self) -> Path:
        return self.directory / "done.log"

    @property
    def total_file(self) -> Path:
        return self.directory / "total"

    def set_total(self, n_blocks: int) -> None:
        """Keep the number of blocks of the run (when it starts), for :func:`check_finished`."""
        with atomic_path(self.total_file) as tmp:
            tmp.write_text(f"{int(n_blocks)}\n")

    def total(self) -> int | None:
        """The number of blocks of the run; None for a record made before totals were kept."""
        try:
            return int(self.total_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    @classmethod
    def create(cls, directory: str | os.PathLike, settings: dict[str, Any]) -> BlockRecord:
        """A new, empty record for ``settings`` (replacing any record in ``directory``)."""
        if stores.is_url(directory):
            return ObjectBlockRecord.create(directory, settings)
        record = cls(directory)
        if record.directory.exists():
            shutil.rmtree(record.directory)
        record.directory.mkdir(parents=True)
        with atomic_path(record.settings_file) as tmp:
            tmp.write_text(json.dumps({"hash": settings_hash(settings), "settings": settings}, indent=1, default=str))
        record.log_file.touch()
        return record

    @classmethod
    def open(cls, directory: str | os.PathLike, settings: dict[str, Any], *, what: str = "output") -> BlockRecord:
        """The existing record in ``directory``; UserError if there is none or it was written
        with other settings."""
        record = cls(directory)
        stored = record.stored_settings()
        if stored is None:
            raise UserError(f"{what} has no block record to resume from; pass {{overwrite}} to start again",
                            options=("overwrite",))
        if stored.get("hash") != settings_hash(settings):
            differ = sorted(k for k in set(settings) | set(stored.get("settings", {}))
                            if json.dumps(settings.get(k), sort_keys=True, default=str)
                            != json.dumps(stored.get("settings", {}).get(k), sort_keys=True, default=str))
            raise UserError(f"{what} was written with other settings ({', '.join(differ) or 'hash'} differ); "
                            "pass {overwrite} to replace it", options=("overwrite",))
        return record

    def matches(self, settings: dict[str, Any]) -> bool:
        """Whether the record exists and was made for ``settings``."""
        return (self.stored_settings() or {}).get("hash") == settings_hash(settings)

    def done_ids(self) -> set[int]:
        """Ids of the finished blocks: those on a whole line whose checksum matches."""
        if not self.log_file.is_file():
            return set()
        done = set()
        for line in self.log_file.read_bytes().split(b"\n")[:-1]:  # the last piece is b"" or torn
            block_id = _parse_line(line)
            if block_id is not None:
                done.add(block_id)
        return done

    def mark_done(self, block_ids: Iterable[int]) -> None:
        """Append finished block ids (call only once their output is written)."""
        if self._log is None:
            self._log = open(self.log_file, "ab")
            if self._log.tell() and _last_byte(self.log_file) != b"\n":
                self._log.write(b"\n")  # after a torn line: start a new one
        self._log.write(b"".join(_line(int(i)) for i in block_ids))
        self._log.flush()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class ObjectBlockRecord(BlockRecord):
    """A block record under a URL prefix (see the module docstring): ``settings.json``,
    ``total`` and ``done/<id>``, each object written whole."""

    def __init__(self, directory: str) -> None:
        self.directory = str(directory).rstrip("/")
        self._log = None

    def stored_settings(self) -> dict[str, Any] | None:
        data = stores.read_bytes(stores.join(self.directory, "settings.json"))
        return None if data is None else json.loads(data)

    def set_total(self, n_blocks: int) -> None:
        stores.write_bytes(stores.join(self.directory, "total"), f"{int(n_blocks)}\n".encode())

    def total(self) -> int | None:
        try:
            return int(stores.read_bytes(stores.join(self.directory, "total")) or b"")
        except ValueError:
            return None

    @classmethod
    def create(cls, directory: str, settings: dict[str, Any]) -> ObjectBlockRecord:
        record = cls(directory)
        stores.remove(record.directory)
        text = json.dumps({"hash": settings_hash(settings), "settings": settings}, indent=1, default=str)
        stores.write_bytes(stores.join(record.directory, "settings.json"), text.encode())
        return record

    def done_ids(self) -> set[int]:
        return {int(name) for name in stores.list_names(stores.join(self.directory, "done")) if name.isdigit()}

    def mark_done(self, block_ids: Iterable[int]) -> None:
        for block_id in block_ids:
            stores.write_bytes(stores.join(self.directory, "done", str(int(block_id))), b"")

    def close(self) -> None:
        pass


def _line(block_id: int) -> bytes:
    text = str(block_id).encode()
    return b"%s %08x\n" % (text, zlib.crc32(text))


def _parse_line(line: bytes) -> int | None:
    """The block id of a whole ``done.log`` line; None for one that is torn or merged."""
    text, _, check = line.partition(b" ")
    if not text.isdigit() or len(check) != 8 or _line(int(text)) != line + b"\n":
        return None
    return int(text)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


RECORD = "blocks"  # the record's folder: the first output's sidecar_dir(RECORD)


@dataclass
class PreparedOutputs:
    """What :func:`prepare_outputs` found or made; a context manager that gives the outputs up
    (:meth:`close`) when the run ends, however it ends.

    volumes: the outputs by name, open for writing (empty when ``done``): where the run writes,
        which for a replacement (``overwrite``) is beside the old output (``staged``).
    record: the run's record (settings and finished blocks), kept with the first output.
    done: every output is finished with these settings: nothing to do.
    resumed: the volumes and record are an unfinished run's (not new ones).
    specs: the outputs by name, where they end up.
    staged: the names written beside an old output, which :meth:`finish` swaps in.
    """

    volumes: dict[str, Any] = field(default_factory=dict)
    record: BlockRecord | None = None
    done: bool = False
    resumed: bool = False
    specs: dict[str, str] = field(default_factory=dict)
    staged: dict[str, str] = field(default_factory=dict)
    owners: list[OutputOwner] = field(default_factory=list)

    def finish(self, finalize: Callable[[], None] | None = None) -> None:
        """Complete the run: check that it still owns every output, mark them complete
        (``finalize``, by default each volume's ``finalize``), put replacements in the place
        of the old outputs, and give the outputs up."""
        for owner in self.owners:
            owner.check()
        if finalize is None:
            for volume in self.volumes.values():
                volume.finalize()
        else:
            finalize()
        for volume in self.volumes.values():
            volume.close()
        _swap_in(self.specs, self.staged)
        self.close()

    def written_to(self) -> str:
        """Where the run writes, for messages: the outputs, or their replacements beside them."""
        where = ", ".join(self.staged.get(name, spec) for name, spec in self.specs.items())
        return f"{where} (beside the old output, which is unchanged)" if self.staged else where

    def close(self) -> None:
        """Give the outputs up (another run may write them)."""
        for owner in self.owners:
            owner.release()

    def __enter__(self) -> PreparedOutputs:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def existing_outputs(specs: Iterable[str], *, resume: bool = False, overwrite: bool = False) -> list[str]:
    """Those of the output ``specs`` that exist; UserError if any does and neither ``resume`` nor
    ``overwrite`` is given (the first rule of :func:`prepare_outputs`, for callers that check it
    before long work and prepare the outputs only after it)."""
    from psc_seg.io import volume_exists

    check_exclusive(resume=resume, overwrite=overwrite)
    existing = [spec for spec in specs if volume_exists(spec)]
    if existing and not (resume or overwrite):
        raise UserError(f"output {existing[0]!r} already exists; pass {{resume}} to continue an unfinished run "
                        "or {overwrite} to replace it", options=("resume", "overwrite"))
    return existing


def prepare_outputs(specs: Mapping[str, str], settings: dict[str, Any], *,
                    create: Callable[[Mapping[str, str]], Mapping[str, Any]],
                    resume: bool = False, overwrite: bool = False) -> PreparedOutputs:
    """Own, open or create the outputs ``specs`` (name -> volume spec) of a run with ``settings``.

    First the run becomes the outputs' one writer (:class:`~psc_seg.engine.owner.OutputOwner`:
    UserError if another run writes them; an interrupted run's are taken over with
    ``resume``). Then:

    * none exists: ``create(specs)`` makes them all (name -> open volume) and a new record for
      ``settings`` is kept with the first;
    * some exist and neither ``resume`` nor ``overwrite``: UserError;
    * ``overwrite``: the old outputs are kept, and the new ones created beside them
      (:func:`~psc_seg.io.staged_spec`); :meth:`PreparedOutputs.finish` swaps them in once
      they are complete, so a run that fails or is killed leaves the old outputs as they were;
    * ``resume``, after an ``overwrite`` run that did not finish: its replacements, continued;
    * ``resume``, all finished, the record made for ``settings``: ``done``;
    * ``resume``, not all finished: the outputs open ``"r+"`` and the record with its finished
      blocks;
    * ``resume`` with a record of other settings (or none): UserError.

    Use the result as a context manager, so that the outputs are given up however the run ends.
    """
    from psc_seg.io import parse_spec, remove_output, sidecar_beside, staged_spec, volume_exists

    specs = dict(specs)
    check_exclusive(resume=resume, overwrite=overwrite)
    owners = [OutputOwner(sidecar_beside(parse_spec(spec), "owner"), spec) for spec in specs.values()]
    prepared = PreparedOutputs(specs=specs, owners=[])
    try:
        for owner in owners:
            owner.acquire(resume=resume)
            prepared.owners.append(owner)
        staged = {name: str(staged_spec(spec)) for name, spec in specs.items()}
        if resume and any(volume_exists(spec) for spec in staged.values()):  # an overwrite run, interrupted
            # (killed while swapping its outputs in, some are in place already: those count as they are)
            prepared.staged = {name: spec for name, spec in staged.items() if volume_exists(spec)}
            _open_existing(prepared, {**specs, **prepared.staged}, settings)
            if prepared.done:
                _swap_in(specs, prepared.staged)
                prepared.staged = {}
            return prepared
        existing = existing_outputs(specs.values(), resume=resume, overwrite=overwrite)
        if existing and resume:
            _open_existing(prepared, specs, settings)
            return prepared
        if existing:  # overwrite: write beside the old outputs
            for spec in existing:
                _check_not_a_link(parse_spec(spec))
            for spec in staged.values():  # left by an overwrite run that did not finish
                remove_output(parse_spec(spec))
            prepared.staged = staged
        where = staged if existing else specs
        prepared.volumes = _resumable(dict(create(where)))
        first = next(iter(specs))
        with fixable_writes(f"write the block record of output {specs[first]!r}", then="rerun with {overwrite}",
                            options=("overwrite",)):
            prepared.record = BlockRecord.create(prepared.volumes[first].sidecar_dir(RECORD), settings)
        _point_to_record(prepared.volumes, first, prepared.record)
        return prepared
    except BaseException:
        prepared.close()
        raise


def stored_settings(specs: Mapping[str, str]) -> dict[str, Any] | None:
    """The settings recorded by the run that wrote the outputs ``specs`` (its unfinished
    ``overwrite`` replacements first), or None where there is no record."""
    from psc_seg.io import open_volume, staged_spec, volume_complete, volume_exists

    first = next(iter(specs.values()))
    for spec in (str(staged_spec(first)), first):
        if volume_exists(spec):
            # "r+": an unfinished NIfTI / npy output opens only as the run that continues it
            mode = "r" if volume_complete(spec) else "r+"
            stored = BlockRecord(open_volume(spec, mode=mode).sidecar_dir(RECORD)).stored_settings()
            return None if stored is None else stored.get("settings")
    return None


def _check_not_a_link(spec) -> None:
    """UserError for a local output that is a symbolic link: a replacement is renamed into the
    output's place, which would replace the link, not the data it points to."""
    if spec.url:
        return
    node = spec.path / spec.inner if spec.inner else spec.path
    for path in (spec.path, node):
        if path.is_symlink():
            raise UserError(f"output {str(spec)!r} is reached through the symbolic link {str(path)!r} (to "
                            f"{str(path.resolve())!r}), which {{overwrite}} would replace by a folder; name the real "
                            "path instead", options=("overwrite",))


def _open_existing(prepared: PreparedOutputs, specs: Mapping[str, str], settings: dict[str, Any]) -> None:
    """Fill ``prepared`` from the existing outputs ``specs`` of a run with ``settings``: done, or
    open to continue."""
    from psc_seg.io import open_volume, volume_complete, volume_exists

    first = next(iter(specs))
    main = prepared.specs[first]
    if all(volume_exists(spec) and volume_complete(spec) for spec in specs.values()):
        record = BlockRecord(open_volume(specs[first]).sidecar_dir(RECORD))
        if not record.matches(settings):
            raise UserError(f"output {main!r} is complete but was written with other settings; "
                            "pass {overwrite} to replace it", options=("overwrite",))
        prepared.record, prepared.done = record, True
        return
    prepared.volumes = _resumable({name: open_volume(spec, mode="r+") for name, spec in specs.items()})
    prepared.record = BlockRecord.open(prepared.volumes[first].sidecar_dir(RECORD), settings, what=f"output {main!r}")
    prepared.resumed = True


def _point_to_record(volumes: Mapping[str, Any], first: str, record: BlockRecord) -> None:
    """Tell the outputs other than ``first`` where their run's record is (for :func:`check_finished`)."""
    from psc_seg.io import META_KEY

    for name, volume in volumes.items():
        if name != first:
            own = volume.sidecar_dir(RECORD)
            where = record.directory if stores.is_url(own) else os.path.relpath(record.directory, own.parent)
            volume.update_attrs({META_KEY: {**volume.attrs.get(META_KEY, {}), "record": where}})


def _swap_in(specs: Mapping[str, str], staged: Mapping[str, str]) -> None:
    """Put the finished replacements ``staged`` (name -> spec) in the place of ``specs`` (the
    record moves with the first; the others' pointers to it are only read while unfinished)."""
    from psc_seg.io import parse_spec, replace_output

    for name in staged:
        replace_output(parse_spec(staged[name]), parse_spec(specs[name]))


def _resumable(volumes: dict[str, Any]) -> dict[str, Any]:
    """``volumes``, each marked as written by a run a rerun with ``resume`` continues."""
    for volume in volumes.values():
        volume.resumable = True
    return volumes


def check_finished(volume, role: str, *, allow_incomplete: bool = False) -> str | None:
    """The rule for a stage's input ``volume`` (an open :class:`psc_seg.io.Volume`): one that
    psc-seg marked unfinished (``complete`` false) is refused unless ``allow_incomplete``.

    ``role`` names it in the message (``"affinities"``, ``"ground truth"``, ...). The message
    says how much is written, from the output's block record (``"37 of 64 blocks (57%)
    written"``, or the blocks done for a record without a total), and the command that
    finishes it: the command in its provenance with ``--resume`` (``--overwrite`` for an
    output no resumable run wrote).

    Returns:
        None for a finished volume (or one psc-seg did not write); under ``allow_incomplete``,
        a note for the user saying the unfinished volume is used as it is.

    Raises:
        UserError: an unfinished volume without ``allow_incomplete``.
    """
    from psc_seg.io import META_KEY

    if volume.complete:
        return None
    meta = volume.attrs.get(META_KEY, {})
    plural = role.endswith("s")
    they, them, are = ("they", "them", "are") if plural else ("it", "it", "is")
    record = _record_of(volume, meta)
    unfinished = f"{role} {volume.spec!r} {are} unfinished{_written(record, volume)}"
    if allow_incomplete:
        return f"{unfinished}; used as {they} {are}"
    flag = "--resume" if record is not None else "--overwrite"
    command = (meta.get("provenance") or {}).get("command")
    if not command:
        finish = f"rerun the command that wrote {them} with {flag}"
    else:
        words = [w for w in shlex.split(command) if w not in ("--resume", "--overwrite")]  # they exclude each other
        verb = f"finish {them}" if record is not None else f"write {them} again"
        finish = f"{verb} with `{shlex.join([*words, flag])}`"
    raise UserError(f"{unfinished}; {finish}, or pass {{allow_incomplete}} to use {them} as {they} {are}",
                    options=("allow_incomplete",))


def _record_of(volume, meta: dict[str, Any]) -> BlockRecord | None:
    """The block record of the run that writes ``volume``: kept with it, or with the run's first
    output (``meta["record"]``, relative to where the volume's own would be); None if none."""
    own = volume.sidecar_dir(RECORD)
    pointed = meta.get("record")
    if pointed and not stores.is_url(pointed):
        pointed = own.parent / pointed
    for directory in (own, *([pointed] if pointed else [])):
        record = BlockRecord(directory)
        if record.stored_settings() is not None:
            return record
    return None


def _written(record: BlockRecord | None, volume=None) -> str:
    if record is None:
        return ""
    done, total = len(record.done_ids()), record.total()
    if total and done >= total and volume is not None and pyramid_steps(volume):
        return f": all {total} blocks written, not yet its pyramid levels"
    if total:
        return f": {done} of {total} blocks ({100 * done // total}%) written"  # floor: never 100% unfinished
    return f" ({done} blocks done)" if done else ""
