"""Where zarr and N5 nodes live: local folders, or objects behind an fsspec URL.

A *location* is a string: a local path, or a URL (``s3://bucket/vol.zarr/raw``,
``gs://...``, ``http(s)://...``). Local locations go through the file system as before;
URLs through fsspec (``s3fs`` for ``s3://``, ``gcsfs`` for ``gs://``, fsspec's HTTP file
system, read only, for ``http(s)://``).

Credentials come from the usual environment of each file system: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``
for S3, ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS. An S3-compatible server other than AWS
(MinIO, Ceph, moto) is named by ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from pathlib import Path
from typing import Any

from psc_seg.errors import UserError
from psc_seg.io.spec import url_scheme

READ_ONLY_SCHEMES = ("http", "https")
_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}


def is_url(location: str | os.PathLike) -> bool:
    return isinstance(location, str) and url_scheme(location) is not None


def join(location: str | os.PathLike, *names: str) -> str | Path:
    """``location`` / ``names`` (a URL stays a string, a path a :class:`Path`)."""
    names = tuple(n for n in names if n)
    if is_url(location):
        return "/".join([str(location).rstrip("/"), *names])
    return Path(location).joinpath(*names)


def parent(location: str | os.PathLike) -> str | Path:
    if is_url(location):
        return str(location).rstrip("/").rsplit("/", 1)[0]
    return Path(location).parent


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for ``url`` from the environment (see the module docstring)."""
    if url_scheme(url) == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    return {}


def filesystem(url: str):
    """``(fsspec file system, path in it)`` for ``url``; UserError naming the package to install
    where the file system's package is missing."""
    import fsspec

    scheme = url_scheme(url)
    try:
        fs, path = fsspec.core.url_to_fs(url, **storage_options(url))
    except ImportError:
        package = _PACKAGES.get(scheme, f"the fsspec back end for {scheme}://")
        raise UserError(f"{scheme}:// URLs need the package {package}: pip install {package} "
                        "(or pip install 'psc-seg[remote]')") from None
    return fs, path


def check_writable(url: str) -> None:
    """UserError for an output at a read-only URL (``http(s)://``)."""
    if url_scheme(url) in READ_ONLY_SCHEMES:
        raise UserError(f"cannot write {url!r}: {url_scheme(url)}:// is read only; write the output to a local path, "
                        "s3:// or gs://")


def zarr_store(location: str | os.PathLike, *, mode: str = "r"):
    """What ``zarr.open*`` takes for ``location``: the path, or an fsspec store for a URL."""
    if not is_url(location):
        return str(location)
    from zarr.storage import FsspecStore

    if mode != "r":
        check_writable(str(location))
    filesystem(str(location))  # a missing package: one line
    return FsspecStore.from_url(str(location), storage_options=storage_options(str(location)), read_only=mode == "r")


def exists(location: str | os.PathLike) -> bool:
    """Whether anything is stored at ``location`` (a file, a folder, objects under a prefix)."""
    if not is_url(location):
        return Path(location).exists()
    fs, path = filesystem(str(location))
    if url_scheme(str(location)) in READ_ONLY_SCHEMES:  # no listing over HTTP: look for metadata
        return any(_http_exists(fs, f"{path.rstrip('/')}/{name}")
                   for name in ("zarr.json", ".zgroup", ".zarray", "attributes.json"))
    fs.invalidate_cache(path)  # another process may have written it since this one listed
    return fs.exists(path)


def _http_exists(fs, path: str) -> bool:
    try:
        return fs.exists(path)
    except Exception:
        return False


def read_bytes(location: str | os.PathLike) -> bytes | None:
    """The bytes of the file or object at ``location``; None if there is none."""
    if not is_url(location):
        try:
            return Path(location).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
    fs, path = filesystem(str(location))
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def write_bytes(location: str | os.PathLike, data: bytes, *, exclusive: bool = False) -> None:
    """Store ``data`` at ``location`` (an object is written whole: atomic on object stores).
    ``exclusive``: FileExistsError if something is there (S3's conditional write)."""
    fs, path = filesystem(str(location))
    try:
        _put(fs, path, data, exclusive=exclusive, location=str(location))
    except FileNotFoundError as exc:  # an object store: its bucket is missing
        raise missing_bucket(str(location), exc) from None


def missing_bucket(location: str, exc: BaseException) -> UserError:
    """The one-line error for a write into a bucket that does not exist."""
    return UserError(f"cannot write {location!r} ({exc}); create the bucket first or check the URL")


def _put(fs, path: str, data: bytes, *, exclusive: bool, location: str) -> None:
    if exclusive:
        if fs.exists(path):
            raise FileExistsError(location)
        try:
            fs.pipe_file(path, data, mode="create")
            return
        except TypeError:  # a file system without exclusive writes: the check above
            pass
        except OSError as exc:
            if "PreconditionFailed" in str(exc) or "412" in str(exc):
                raise FileExistsError(location) from None
            raise
    fs.pipe_file(path, data)


def list_names(location: str | os.PathLike) -> list[str]:
    """Names of the files or objects directly under ``location`` ([] if none)."""
    if not is_url(location):
        folder = Path(location)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    fs, path = filesystem(str(location))
    try:
        return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False, refresh=True))
    except FileNotFoundError:
        return []


def remove(location: str | os.PathLike) -> None:
    """Delete the file, folder or every object under ``location`` (nothing there: nothing)."""
    if not is_url(location):
        node = Path(location)
        if node.is_dir():
            shutil.rmtree(node)
        elif node.exists():
            node.unlink()
        return
    check_writable(str(location))
    fs, path = filesystem(str(location))
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.invalidate_cache()


def move(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Rename ``source`` to ``destination`` (object stores: copy every object, then delete)."""
    if not is_url(source):
        os.rename(source, destination)
        return
    fs, path = filesystem(str(source))
    _, target = filesystem(str(destination))
    fs.copy(path, target, recursive=True)
    fs.rm(path, recursive=True)
    fs.invalidate_cache()
