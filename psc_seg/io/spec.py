"""Volume spec strings: one string names one volume.

=========================================  ======================================================
spec                                       volume
=========================================  ======================================================
``vol.zarr``                               zarr v2/v3 array, or OME-Zarr image group (level 0)
``vol.zarr/group/array``                   a node inside a zarr container (``vol.zarr:/group``
                                           is accepted too)
``vol.h5:/group/dataset``                  HDF5 dataset (also ``.hdf5``, ``.hdf``); ``vol.h5``
                                           alone if the file holds exactly one dataset
``scan.nii``, ``scan.nii.gz``              NIfTI (stored x, y, z; exposed as z, y, x)
``stack.tif``, ``stack.tiff``              TIFF stack (z, y, x)
``vol.npy``                                NumPy array file
``vol.n5/group/dataset``                   N5 dataset (read only; raw, gzip, bzip2, xz, blosc)
``folder/array``                           a zarr folder without the ``.zarr`` suffix, when it
                                           holds zarr metadata (``zarr.json``, ``.zgroup``,
                                           ``.zarray``)
``s3://bucket/vol.zarr/group/array``       zarr (or N5) through fsspec: ``s3://``, ``gs://``,
                                           ``http(s)://`` (read only); ``file:///abs/vol.zarr``
                                           is the local path
=========================================  ======================================================

A URL stays a URL (``VolumeSpec.url``): it is never turned into a local path. Remote
containers without a ``.zarr`` / ``.n5`` component are taken as zarr, container = the URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from psc_seg.errors import UserError

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
ZARR_SUFFIXES = (".zarr",)
N5_SUFFIXES = (".n5",)
ZARR_METADATA = ("zarr.json", ".zgroup", ".zarray")
REMOTE_SCHEMES = ("s3", "gs", "gcs", "http", "https")
SUPPORTED = ("a .zarr container (vol.zarr or vol.zarr/group/array) or a folder holding zarr metadata, vol.n5/dataset, "
             "vol.h5:/dataset, .nii/.nii.gz, .tif, .npy, or s3:// gs:// http(s):// URLs of zarr or N5")


@dataclass(frozen=True)
class VolumeSpec:
    """A parsed spec: ``format`` in {"zarr", "n5", "hdf5", "nifti", "tiff", "npy"}, the file or
    container ``path`` and the ``inner`` path of a node inside a container ("" for the root).

    ``url``: the container's URL for remote stores (``s3://bucket/vol.zarr``), "" for local
    ones; ``path`` is then the URL's bucket and key as a ``PurePosixPath`` (names only: it is
    not a local file)."""

    format: str
    path: Path | PurePosixPath
    inner: str = ""
    text: str = ""
    url: str = ""

    @property
    def container(self) -> str:
        """The container or file as a spec string: the URL for remote stores, else the path."""
        return self.url or str(self.path)

    @property
    def node(self) -> str:
        """The named node (container and inner path joined with "/"; for zarr and N5)."""
        return f"{self.container}/{self.inner}" if self.inner else self.container

    def __str__(self) -> str:
        return self.text or self.node


def url_scheme(text: str) -> str | None:
    """The scheme of a URL (``"s3"``), None for a local path."""
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head.isalnum() else None


def _parse_url(text: str) -> VolumeSpec:
    scheme = url_scheme(text)
    if scheme not in REMOTE_SCHEMES:
        raise UserError(f"unsupported URL {text!r}: use s3://, gs://, http(s):// or file:// (local) URLs of zarr or N5")
    head, rest = text.split("://", 1)
    parts = rest.rstrip("/").split("/")
    if len(parts) < 2 or not parts[1]:
        raise UserError(f"URL {text!r} names no container; name one, e.g. {head}://{parts[0]}/vol.zarr")
    fmt, i = "zarr", len(parts) - 1
    for j, part in enumerate(parts[1:], start=1):
        if part.lower().endswith(ZARR_SUFFIXES + N5_SUFFIXES):
            fmt, i = ("n5" if part.lower().endswith(N5_SUFFIXES) else "zarr"), j
            break
    files = HDF5_SUFFIXES + NIFTI_SUFFIXES + TIFF_SUFFIXES + NPY_SUFFIXES
    if any(part.lower().rstrip(":").endswith(files) for part in parts[1:i + 1]):
        raise UserError(f"URL {text!r}: psc-seg reads zarr and N5 through URLs, not single files; copy the file to a "
                        "local path, or convert it to zarr")
    container = f"{head}://" + "/".join(parts[: i + 1])
    return VolumeSpec(fmt, PurePosixPath("/".join(parts[: i + 1])), "/".join(p for p in parts[i + 1:] if p),
                      text, container)


def _zarr_folder(parts: list[str]) -> int | None:
    """The index of the first leading path of ``parts`` that is a folder holding zarr metadata."""
    for i in range(len(parts)):
        folder = Path("/".join(parts[: i + 1]) or "/")
        if folder.is_dir() and any((folder / name).is_file() for name in ZARR_METADATA):
            return i
    return None


def _lower_name(path: str) -> str:
    return path.rstrip("/").lower()


def parse_spec(spec: str | Path | VolumeSpec) -> VolumeSpec:
    """Parse a volume spec string; UserError naming the supported forms if it fits none."""
    if isinstance(spec, VolumeSpec):
        return spec
    text = str(spec)
    if text.lower().startswith("file://"):
        text = text[len("file://"):]
        if not text.startswith("/"):
            raise UserError(f"file URL {str(spec)!r} must name an absolute path (file:///abs/vol.zarr)")
    elif url_scheme(text):
        return _parse_url(text)
    # HDF5: "file.h5:/inner" or "file.h5"
    for suffix in HDF5_SUFFIXES:
        marker = suffix + ":"
        idx = text.lower().find(marker)
        if idx >= 0:
            return VolumeSpec("hdf5", Path(text[: idx + len(suffix)]), _inner(text[idx + len(marker):], text), text)
        if _lower_name(text).endswith(suffix):
            return VolumeSpec("hdf5", Path(text), "", text)
    # zarr: the first path component ending in .zarr is the container
    parts = text.replace(":/", "/").split("/")
    for i, part in enumerate(parts):
        if part.lower().endswith(ZARR_SUFFIXES + N5_SUFFIXES):
            container = "/".join(parts[: i + 1]) or "/"
            inner = _inner("/".join(parts[i + 1:]), text)
            return VolumeSpec("n5" if part.lower().endswith(N5_SUFFIXES) else "zarr", Path(container), inner, text)
    name = _lower_name(text)
    for fmt, suffixes in (("nifti", NIFTI_SUFFIXES), ("tiff", TIFF_SUFFIXES), ("npy", NPY_SUFFIXES)):
        if name.endswith(suffixes):
            return VolumeSpec(fmt, Path(text), "", text)
    i = _zarr_folder(parts)  # a zarr folder without the suffix
    if i is not None:
        return VolumeSpec("zarr", Path("/".join(parts[: i + 1]) or "/"), _inner("/".join(parts[i + 1:]), text), text)
    raise UserError(f"unsupported volume {text!r}: use {SUPPORTED}")


def _inner(path: str, text: str) -> str:
    """The path of a node inside a container, normalised (``./raw``, ``a//b``, ``a/../raw``:
    ``raw``, ``a/b``, ``raw``), so that one node has one name; UserError for ``..`` above the root."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UserError(f"{text!r} leaves its container with '..'; name a node inside it")
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


STAGED = "psc-seg-new"


def staged_spec(spec: str | Path | VolumeSpec) -> VolumeSpec:
    """Where a replacement of the output ``spec`` is written until it is complete
    (``overwrite``), beside the output it replaces: ``out.zarr`` -> ``out.psc-seg-new.zarr``,
    ``d.zarr/affs`` -> ``d.zarr/affs.psc-seg-new``, ``f.h5:/affs`` -> ``f.h5:/affs.psc-seg-new``,
    ``seg.nii.gz`` -> ``seg.psc-seg-new.nii.gz``."""
    s = parse_spec(spec)
    if s.inner:
        return parse_spec(f"{s.container}{':/' if s.format == 'hdf5' else '/'}{s.inner}.{STAGED}")
    name = s.path.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else s.path.suffix
    staged = f"{name[:len(name) - len(suffix)]}.{STAGED}{suffix}"
    if s.url:
        return parse_spec(f"{s.url.rsplit('/', 1)[0]}/{staged}")
    return parse_spec(str(s.path.with_name(staged)))


def _node(spec: VolumeSpec) -> tuple[Path, ...]:
    """Where ``spec`` lives, as path components: a zarr node is a folder, an HDF5 node is a
    path inside its file (the file counts as one more level), anything else is its file. A
    remote node is its URL's scheme, bucket and keys (two URLs of one bucket meet only by name)."""
    inner = tuple(p for p in spec.inner.split("/") if p)
    if spec.url:
        return (url_scheme(spec.url) + "://", *spec.path.parts, *inner)
    parts = spec.path.resolve().parts
    if spec.format in ("zarr", "n5"):
        return (*parts, *inner)
    if spec.format == "hdf5":
        return (*parts, ":", *inner)
    return parts


def overlaps(a: str | Path | VolumeSpec, b: str | Path | VolumeSpec) -> bool:
    """Whether the volumes ``a`` and ``b`` share storage: the same node, or one inside the
    other (``d.zarr`` holds ``d.zarr/raw``; ``d.zarr/raw`` holds its array ``d.zarr/raw/0``; an
    HDF5 file holds its datasets). Writing one of two overlapping volumes can destroy the other."""
    na, nb = _node(parse_spec(a)), _node(parse_spec(b))
    return na[:len(nb)] == nb or nb[:len(na)] == na


def check_apart(input: str | Path | VolumeSpec, outputs) -> None:
    """UserError if any of the ``outputs`` :func:`overlaps` the ``input``: checked before an
    output is created, since creating it (``overwrite`` above all) would delete the input."""
    for output in outputs:
        if overlaps(input, output):
            raise UserError(f"output {str(output)!r} is the input volume {str(input)!r}, lies inside it or holds it: "
                            "writing the output would destroy the input; choose an output outside the input's file "
                            "or container")
