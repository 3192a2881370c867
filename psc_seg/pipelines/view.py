"""``psc-seg view``: volumes on disk in neuroglancer, served from this machine.

Neuroglancer's Python package (the ``view`` extra) serves its own client and the data: each
volume becomes a ``LocalVolume`` that reads only the chunks the browser asks for. The raw is an
image layer, affinities an RGB image layer (their nearest-neighbour channels, found by the
offsets stored with them, else the first three), each segmentation a segmentation layer
(``uint64`` ids; sections only: 3D meshes would read the whole volume). Layers are placed in world coordinates as stored: their voxel sizes as
scales and their offsets as voxel offsets, so a crop lies over the raw where it belongs.

:func:`view_layers` decides the layers without neuroglancer (what is shown, where);
:func:`make_viewer` builds the viewer; :func:`view_volumes` serves it until Ctrl-C or writes
one screenshot.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from psc_seg.errors import Interrupted, UserError, note
from psc_seg.files import check_png_output
from psc_seg.io.geometry import placed_by_index

NEEDS_NEUROGLANCER = 'psc-seg view needs neuroglancer: pip install "psc-seg[view]"'
NEEDS_CHROMIUM = ("--screenshot needs Chromium and its driver for a headless browser; install them "
                  "(Debian/Ubuntu: apt-get install chromium chromium-driver)")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SCREENSHOT_SECONDS = 120.0  # for the browser to load the layers and render them


@dataclass(frozen=True)
class ViewLayer:
    """One layer to show: ``kind`` is ``"image"``, ``"affinities"`` or ``"segmentation"``;
    ``voxel_size`` ``(z, y, x)`` in ``unit``; ``voxel_offset`` ``(z, y, x)`` the position of the
    volume's first voxel in voxels of its own size (a fraction of a voxel only for a NIfTI
    volume, whose affine may place it anywhere); ``channels`` the three affinity channels
    shown as red, green and blue (affinities only)."""

    name: str
    kind: str
    volume: Any
    voxel_size: tuple[float, float, float]
    voxel_offset: tuple[float, float, float]
    unit: str | None
    channels: tuple[int, int, int] | None = None


def view_layers(raw, *, labels: Sequence[Any] = (), affinities=None) -> list[ViewLayer]:
    """The layers showing the open volumes ``raw`` (``(Z, Y, X)``), ``labels`` (each ``(Z, Y, X)``
    integer ids) and ``affinities`` (``(C >= 3, Z, Y, X)``), in that order, each named by its
    spec (shortened to what tells them apart).

    Volumes share the raw's world frame: each is placed by its own voxel size and offset (they
    may differ from the raw's), all in the first unit any of them names. A volume without a voxel size in its metadata (or beside a raw
    without one) is aligned by index and must have the raw's shape.

    Raises:
        UserError: a raw with channels, labels that are not 3D integer ids, affinities with
            fewer than 3 channels, volumes in other units than the raw's, volumes that do not
            overlap the raw, or volumes placed by index with another shape.
    """
    if raw.channels is not None:
        raise UserError(f"raw {raw.spec!r} has {raw.channels} channels (shape {raw.shape}); give a 3D (z, y, x) raw "
                        "and pass (C, Z, Y, X) volumes with --affinities")
    volumes = [raw, *labels, *([affinities] if affinities is not None else [])]
    names = _names([v.spec for v in volumes])
    unit = _unit(next((v.unit for v in volumes if v.unit), None))
    layers = [_layer(raw, names[0], "image", raw, unit)]
    for volume, name in zip(labels, names[1:]):
        if volume.channels is not None or not np.issubdtype(volume.dtype, np.integer):
            raise UserError(f"labels {volume.spec!r} are {volume.dtype} of shape {volume.shape}; segmentation layers "
                            "show 3D (z, y, x) integer ids (a segmentation from psc-seg segment)")
        layers.append(_layer(volume, name, "segmentation", raw, unit))
    if affinities is not None:
        if affinities.channels is None or affinities.channels < 3:
            raise UserError(f"affinities {affinities.spec!r} have shape {affinities.shape}; give (C >= 3, Z, Y, X) "
                            "affinities, as psc-seg predict writes them")
        layers.append(_layer(affinities, names[-1], "affinities", raw, unit))
    return layers


def _unit(name: str | None) -> str | None:
    """The symbol neuroglancer takes for the unit ``name`` (``"nanometer"`` -> ``"nm"``); None,
    with a note, for a unit it does not know (the layers are then shown without one)."""
    from psc_seg.io.geometry import unit_symbol

    if name is None:
        return None
    symbol = unit_symbol(name)
    if symbol.endswith("m") and symbol[:-1] in ("", "k", "c", "m", "µ", "n", "p"):
        return symbol
    note(f"neuroglancer does not know the unit {name!r} of the volumes; they are shown without a unit")
    return None


def _layer(volume, name: str, kind: str, raw, unit: str | None) -> ViewLayer:
    """``volume`` placed in ``raw``'s world frame (see :func:`view_layers`), ``unit`` the frame's."""
    role = {"image": "raw", "segmentation": "labels", "affinities": "affinities"}[kind]
    if volume is raw or placed_by_index(volume, raw, role):
        size, offset = raw.voxel_size, raw.offset
    else:
        if volume.unit and raw.unit and volume.unit != raw.unit:
            raise UserError(f"{role} {volume.spec!r} is in {volume.unit or 'no unit'} but raw {raw.spec!r} in "
                            f"{raw.unit or 'no unit'}; give volumes measured in one unit")
        if volume.roi.intersect(raw.roi).empty:
            raise UserError(f"{role} {volume.spec!r} ({volume.roi}) and raw {raw.spec!r} ({raw.roi}) do not overlap; "
                            f"check their offsets")
        size, offset = volume.voxel_size, volume.offset
    steps = np.asarray(offset, dtype=np.float64) / np.asarray(size, dtype=np.float64)
    channels = _rgb_channels(volume) if kind == "affinities" else None
    return ViewLayer(name, kind, volume, tuple(float(v) for v in size),
                     tuple(float(v) for v in steps), unit, channels)  # type: ignore[arg-type]


def _rgb_channels(affinities) -> tuple[int, int, int]:
    """The channels of the offsets (-1, 0, 0), (0, -1, 0), (0, 0, -1) where the affinities store
    offsets that hold them, else the first three."""
    from psc_seg.affinities import nearest_neighbour_channels
    from psc_seg.pipelines.segment import affinity_offsets

    try:
        channels, _ = nearest_neighbour_channels(affinity_offsets(affinities))
    except UserError:
        return (0, 1, 2)
    return channels


def _names(specs: Sequence[str]) -> list[str]:
    """Layer names: each spec's last path parts, as few as tell them apart (``seg.zarr/threshold_0.50``)."""
    parts = [[p for p in str(s).replace(":", "/").split("/") if p] or [str(s)] for s in specs]
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{i}: {s}" for i, s in enumerate(specs)]


class _Ids:
    """A ``(Z, Y, X)`` integer volume read as ``uint64`` (what segmentation layers show)."""

    def __init__(self, volume) -> None:
        self.volume, self.shape, self.dtype = volume, volume.shape, np.dtype(np.uint64)

    def __getitem__(self, key):
        return np.asarray(self.volume[key]).astype(np.uint64)


def rgb_shader(channels: Sequence[int]) -> str:
    """Neuroglancer shader showing the affinity ``channels`` as red, green and blue."""
    values = ", ".join(f"toNormalized(getDataValue({int(c)}))" for c in channels)
    return f"void main() {{\n  emitRGB(vec3({values}));\n}}\n"


def _contrast(volume) -> tuple[float, float]:
    """1st and 99th percentile of the raw's middle xy section (one section read), the range
    its image layer maps to black..white."""
    section = np.asarray(volume[volume.spatial_shape[0] // 2, :, :], dtype=np.float64)
    finite = section[np.isfinite(section)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def neuroglancer_module():
    """The ``neuroglancer`` package; UserError naming the extra where it is not installed."""
    try:
        import neuroglancer
    except ImportError:
        raise UserError(NEEDS_NEUROGLANCER) from None
    return neuroglancer


def make_viewer(layers: Sequence[ViewLayer], *, screenshot_size: Sequence[int] | None = None):
    """A neuroglancer ``Viewer`` showing ``layers`` (from :func:`view_layers`; the first is the
    raw), centred on the raw, x and y across the screen and z through it; zoomed so the raw's xy
    section fills a ``screenshot_size`` ``(width, height)`` view, which also makes the layout the
    xy section alone, without the volumes' outlines. Starts neuroglancer's server (bound as
    :func:`serve_address` set it)."""
    ng = neuroglancer_module()
    raw = layers[0]
    viewer = ng.Viewer()
    with viewer.txn() as state:
        state.dimensions = ng.CoordinateSpace(names=["x", "y", "z"], units=raw.unit or "",
                                              scales=list(reversed(raw.voxel_size)))
        for layer in layers:
            state.layers[layer.name] = _ng_layer(ng, layer)
        shape = np.asarray(raw.volume.spatial_shape)
        state.position = list(reversed((np.asarray(raw.voxel_offset) + shape / 2).tolist()))
        state.show_axis_lines = False
        if screenshot_size is not None:
            state.layout = "xy"
            state.show_default_annotations = False  # the yellow outlines of each volume
            width, height = screenshot_size
            state.cross_section_scale = 1.05 * max(shape[2] / width, shape[1] / height * raw.voxel_size[1]
                                                   / raw.voxel_size[2])
    return viewer


def _ng_layer(ng, layer: ViewLayer):
    """The neuroglancer layer of one :class:`ViewLayer`, its data read lazily."""
    names, units, scales = ["z", "y", "x"], [layer.unit or ""] * 3, list(layer.voxel_size)
    offset = np.asarray(layer.voxel_offset, dtype=np.float64)
    if layer.kind == "affinities":
        names, units, scales, offset = ["c^", *names], ["", *units], [1.0, *scales], np.r_[0.0, offset]
    space = ng.CoordinateSpace(names=names, units=units, scales=scales)
    whole = np.round(offset)
    data = _Ids(layer.volume) if layer.kind == "segmentation" else layer.volume
    source = ng.LocalVolume(data, dimensions=space, voxel_offset=whole.astype(np.int64).tolist(),
                            volume_type="segmentation" if layer.kind == "segmentation" else "image")
    if layer.kind == "segmentation":
        source.get_object_mesh = _no_meshes  # (the ids are not read whole)
    if np.abs(offset - whole).max() > 1e-6:  # the rest of a fractional offset, as a translation
        matrix = np.hstack([np.eye(len(offset)), (offset - whole)[:, None]])
        source = ng.LayerDataSource(url=source, transform=ng.CoordinateSpaceTransform(output_dimensions=space,
                                                                                      matrix=matrix))
    if layer.kind == "segmentation":
        return ng.SegmentationLayer(source=source)
    if layer.kind == "affinities":
        return ng.ImageLayer(source=source, shader=rgb_shader(layer.channels or (0, 1, 2)))
    lo, hi = _contrast(layer.volume)
    return ng.ImageLayer(source=source, shader_controls={"normalized": {"range": [lo, hi]}})


def _no_meshes(object_id: int):
    """Segmentation layers come without 3D meshes: neuroglancer would read the whole volume into
    memory to make them. The browser is told so (and shows none); sections show every id."""
    from neuroglancer.local_volume import MeshesNotSupportedForVolume

    raise MeshesNotSupportedForVolume()


def serve_address(bind: str, port: int) -> None:
    """Bind neuroglancer's server to ``bind``:``port`` (0: a free port) and (re)start it. A note
    says that anyone who can reach a non-loopback address can read the data.

    Raises:
        UserError: the address cannot be bound (a port in use, an address not of this machine).
    """
    ng = neuroglancer_module()
    ng.server.stop()  # a server this process started before keeps its address until restarted
    ng.set_server_bind_address(bind, port)
    try:
        ng.server.start()
    except OSError as exc:
        raise UserError(f"cannot serve on {bind}:{port}: {exc.strerror or exc}; choose another {{port}} "
                        "(0: any free one) or {bind}", options=("port", "bind")) from None
    if not _loopback(bind):
        note(f"serving on {bind}: anyone who can reach this address can read the data shown")


def _loopback(bind: str) -> bool:
    """Whether ``bind`` is a loopback address (only this machine can connect)."""
    import ipaddress

    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def chromium_binary() -> str:
    """Path of a Chromium (or Chrome) browser with its driver on PATH; UserError naming the
    packages where either is missing (or selenium, which drives them, is not installed)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise UserError('--screenshot needs selenium: pip install "psc-seg[view]"') from None
    browser = next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)
    if browser is None or shutil.which("chromedriver") is None:
        raise UserError(NEEDS_CHROMIUM)
    return browser


def take_screenshot(viewer, out: Path, *, size: Sequence[int], browser: str,
                    timeout: float = SCREENSHOT_SECONDS) -> Path:
    """Open ``viewer`` in a headless Chromium, wait until its layers are loaded and rendered,
    and write the view (``size`` ``(width, height)`` pixels) to the PNG ``out``.

    Raises:
        UserError: the browser does not start, or renders nothing within ``timeout`` seconds.
    """
    import logging
    import os

    import neuroglancer.webdriver

    os.environ.setdefault("SE_OFFLINE", "true")  # the driver on PATH; no downloads, no statistics sent
    logging.getLogger("selenium").setLevel(logging.ERROR)
    try:
        driver = neuroglancer.webdriver.Webdriver(viewer, headless=True, docker=True, print_logs=False,
                                                  browser_binary_path=browser)
    except Exception as exc:  # selenium's errors: a driver that does not match the browser, ...
        text = str(getattr(exc, "msg", None) or exc).split("; For documentation")[0].strip().splitlines()
        raise UserError(f"the headless browser {browser!r} did not start ({text[0] if text else type(exc).__name__});"
                        " check that chromium and chromium-driver are installed at one version") from None
    with driver:
        with viewer.config_state.txn() as config:
            config.show_ui_controls = False
            config.show_panel_borders = False
            config.viewer_size = list(size)
        deadline = time.monotonic() + timeout
        for _ in range(5):  # the first may come before the browser took the new size
            image = _await(viewer.async_screenshot, max(0.0, deadline - time.monotonic()))
            if image is None:
                raise UserError(f"the browser rendered no screenshot within {timeout:g} s; try again, or view the "
                                "volumes without --screenshot")
            if (image.screenshot.width, image.screenshot.height) == tuple(size):
                break
    out.write_bytes(image.screenshot.image)
    return out


def _await(start: Callable[[Callable[[Any], None]], None], timeout: float):
    """Start an asynchronous call that reports through a callback; its result, or None after
    ``timeout`` seconds."""
    done, result = threading.Event(), []

    def finish(value) -> None:
        result.append(value)
        done.set()

    start(finish)
    return result[0] if done.wait(timeout) else None


def view_volumes(
    raw: str,
    *,
    labels: Sequence[str] = (),
    affinities: str | None = None,
    bind: str = "127.0.0.1",
    port: int = 0,
    screenshot: str | Path | None = None,
    size: Sequence[int] = (1024, 768),
    overwrite: bool = False,
    allow_incomplete: bool = False,
    on_url: Callable[[str], None] = print,
) -> Path | None:
    """Show the volumes named by the specs ``raw``, ``labels`` and ``affinities`` in neuroglancer
    (see :func:`view_layers`), served on ``bind``:``port``: prints (``on_url``) the URL and
    serves until Ctrl-C, or with ``screenshot`` writes that PNG of the xy section through the
    raw's centre (``size`` pixels) and returns its path.

    ``allow_incomplete``: show volumes psc-seg marked unfinished (a note says so); refused
    otherwise (:func:`~psc_seg.engine.resume.check_finished`).

    Raises:
        UserError: see :func:`view_layers`, :func:`serve_address`, :func:`chromium_binary`,
            :func:`take_screenshot`; a missing volume; an existing screenshot without
            ``overwrite``; neuroglancer not installed.
        Interrupted: Ctrl-C while serving.
    """
    from psc_seg.engine.resume import check_finished
    from psc_seg.io import open_volume

    out = Path(screenshot) if screenshot is not None else None
    if out is not None:
        check_png_output(out, "screenshot", inputs=[raw, *labels, *([affinities] if affinities else [])],
                         overwrite=overwrite)
    neuroglancer_module()
    browser = chromium_binary() if out is not None else None
    volumes = [open_volume(raw), [open_volume(s) for s in labels], open_volume(affinities) if affinities else None]
    for role, volume in (("raw", volumes[0]), *(("labels", v) for v in volumes[1]), ("affinities", volumes[2])):
        if volume is not None:
            note(check_finished(volume, role, allow_incomplete=allow_incomplete))
    layers = view_layers(volumes[0], labels=volumes[1], affinities=volumes[2])
    serve_address(bind, port)
    viewer = make_viewer(layers, screenshot_size=size if out is not None else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        return take_screenshot(viewer, out, size=size, browser=browser)  # type: ignore[arg-type]
    on_url(viewer.get_viewer_url())
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        raise Interrupted(f"stopped serving {viewer.get_viewer_url()}", resumable=False) from None
