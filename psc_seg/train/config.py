"""The training config: a YAML file (or a shipped preset) validated by pydantic.

Shape of a config (every section but ``model``, ``task`` and ``data.train`` has defaults)::

    model: {name: unet, conv: "psc(2,2)", num_fmaps: 12, fmap_inc_factor: 3,
            downsample_factors: [[2,2,2],[2,2,2]]}     # keys but name/conv go to the builder
    task: {kind: affinities, offsets: [[-1,0,0],[0,-1,0],[0,0,-1]]}  # or {kind: semantic, num_classes: 4}
    data:
      train: [{raw: train-image.h5:/stack, labels: train-gt.lzf.h5:/stack}]  # optional mask, roi:
      validation: [{raw: test-image.h5:/stack, labels: test-gt.lzf.h5:/stack}]
      normalize: {kind: uint8}                            # or percentile / zscore (MRI)
      zero_label: ignore                                   # or boundary (label 0 = cell boundary)
    train: {iterations: 2000, batch_size: 1, patch_shape: [44,44,44], lr: 1.0e-4, loss: bce,
            schedule: constant, warmup: 0, validate_every: 250, seed: 0}   # or cosine / poly
    augment: {flip: true, transpose: true, intensity_scale: [0.8, 1.2], ...}
    validation: {thresholds: [0.1, 0.3, 0.5, 0.7], scoring: hist_quant_75}

``CONFIG`` is a path to such a file or a preset name (``em/unet-p2sc2``, see
:func:`list_presets`). ``--set key.path=value`` overrides any key by its dotted path, the value
parsed as YAML. Volume paths are relative to the current directory. The presets hold no data:
``data.train`` comes with ``--set "data.train=[{raw: ..., labels: ...}]"`` (a config without it is
refused, showing that form), and an override of ``data.train`` without one of ``data.validation``
drops the config's validation volumes, with a note (they went with the other training data). An unknown or misspelt key
is a :class:`~psc_seg.errors.UserError` naming it, the allowed keys and the closest one.

Labels (and a mask) may cover a sub-region of the raw, as in CREMI and daisy containers: they
are placed by their world offsets and voxel sizes (the same as the raw's). Training patches are
drawn so that the network's output lies inside the labels (and mask); its input reads the raw
around them. ``roi: {offset: [z, y, x], shape: [z, y, x]}`` on a volume, in world units (nm for
EM, mm for MRI, as the volume's offset), restricts training patches (and validation scores) to
that region of the labels::

    train: [{raw: c.zarr/raw, labels: c.zarr/gt, roi: {offset: [400, 800, 800], shape: [96, 192, 192]}}]
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from psc_seg.errors import UserError, note
from psc_seg.affinities import DEFAULT_OFFSETS



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(BaseModel):
    """``name`` and ``conv``; every other key is passed to the model builder, which checks it.

    Input and output channels follow from the data (1 channel) and the task."""

    model_config = ConfigDict(extra="allow")

    name: str = "unet"
    conv: str = "conv3d"

    def builder_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for :func:`psc_seg.models.build_model` besides the channels."""
        return {"conv": self.conv, **(self.model_extra or {})}


class TaskConfig(_Strict):
    """What the network predicts: affinities (one channel per offset) or semantic classes."""

    kind: Literal["affinities", "semantic"] = "affinities"
    offsets: list[tuple[int, int, int]] | None = None
    num_classes: int | None = Field(default=None, ge=2)

    @model_validator(mode="after")
    def _fill(self) -> TaskConfig:
        if self.kind == "affinities":
            if self.num_classes is not None:
                raise ValueError("task.num_classes is for kind: semantic; affinities take task.offsets")
            if self.offsets is None:
                self.offsets = [tuple(o) for o in DEFAULT_OFFSETS]
            if not self.offsets:
                raise ValueError("task.offsets must list at least one (z, y, x) offset")
        else:
            if self.offsets is not None:
                raise ValueError("task.offsets is for kind: affinities; semantic takes task.num_classes")
            if self.num_classes is None:
                raise ValueError("task.kind semantic needs task.num_classes (background included), e.g. 4")
        return self

    @property
    def out_channels(self) -> int:
        return len(self.offsets) if self.kind == "affinities" else int(self.num_classes)

    def metadata(self) -> dict[str, Any]:
        """The checkpoint's ``task`` entry (COMMON convention, read by predict)."""
        if self.kind == "affinities":
            return {"kind": "affinities", "offsets": [list(o) for o in self.offsets]}
        return {"kind": "semantic", "num_classes": int(self.num_classes)}


class WorldRoi(_Strict):
    """A box in world units (the volumes' unit: nm for EM, mm for MRI): the world position of
    its first corner and its size, each ``(z, y, x)``."""

    offset: tuple[float, float, float]
    shape: tuple[float, float, float]

    @field_validator("shape")
    @classmethod
    def _positive(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError("roi shape must be positive on every axis")
        return value


class VolumeSet(_Strict):
    """One labelled volume: raw intensities, labels, an optional mask (non-zero = use) and an
    optional ``roi`` (world units) that restricts training patches and validation scores to a
    region of the labels."""

    raw: str
    labels: str
    mask: str | None = None
    roi: WorldRoi | None = None


class NormalizeConfig(_Strict):
    """How raw intensities become network input (:mod:`psc_seg.io.normalize`); stored in the
    checkpoint for predict.

    ``uint8``: divide by 255. ``zscore``: subtract ``mean`` and divide by ``std`` (estimated
    from each volume when not given). ``percentile``: map the ``low`` / ``high`` percentiles of
    each volume to 0 / 1."""

    kind: Literal["uint8", "zscore", "percentile"] = "uint8"
    mean: float | None = None
    std: float | None = Field(default=None, gt=0)
    low: float | None = Field(default=None, ge=0, le=100)
    high: float | None = Field(default=None, ge=0, le=100)

    @model_validator(mode="after")
    def _check(self) -> NormalizeConfig:
        if self.kind == "percentile":
            self.low = 1.0 if self.low is None else self.low
            self.high = 99.0 if self.high is None else self.high
            if self.low >= self.high:
                raise ValueError(f"data.normalize: low ({self.low}) must be below high ({self.high})")
        elif self.low is not None or self.high is not None:
            raise ValueError(f"data.normalize: low/high are for kind percentile, not {self.kind}")
        if self.kind != "zscore" and (self.mean is not None or self.std is not None):
            raise ValueError(f"data.normalize: mean/std are for kind zscore, not {self.kind}")
        return self

    def metadata(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class DataConfig(_Strict):
    train: list[VolumeSet] = Field(min_length=1)
    validation: list[VolumeSet] = Field(default_factory=list)
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    zero_label: Literal["ignore", "boundary"] = "ignore"
    """Affinities only. ``ignore``: label 0 is unlabelled, no loss on pairs touching it.
    ``boundary``: label 0 marks cell boundaries (gala, many EM ground truths): affinities to it
    are 0 and are learnt. (Semantic tasks learn every class, 0 = background included; use a
    ``mask`` to leave voxels out.)"""
    preload: bool = True
    """Read the training volumes into memory once (shared by the loader workers)."""


class TrainSettings(_Strict):
    iterations: int = Field(default=2000, ge=1)
    batch_size: int = Field(default=1, ge=1)
    patch_shape: tuple[int, int, int] = (44, 44, 44)
    """Output patch ``(z, y, x)`` in voxels; must be a valid output size of the model."""
    lr: float = Field(default=1.0e-4, gt=0)
    """The learning rate: the rate of a ``constant`` schedule, the peak of ``cosine`` / ``poly``."""
    schedule: Literal["constant", "cosine", "poly"] = "constant"
    """How the rate changes over the run (after ``warmup``): ``constant``: ``lr``; ``cosine``:
    from ``lr`` down to 0 along half a cosine; ``poly``: ``lr * (1 - progress) ** poly_power``
    (nnU-Net's). Progress runs from 0 after the warmup to 1 at ``iterations``, so a resume
    with more ``iterations`` stretches the rest of the schedule to the new total (the rate
    follows the new curve from the resumed iteration on). See :func:`psc_seg.train.loop.scheduled_lr`."""
    warmup: int = Field(default=0, ge=0)
    """Iterations of linear warmup: the rate climbs from ``lr / warmup`` at the first
    iteration to ``lr`` at iteration ``warmup``, then follows ``schedule``."""
    poly_power: float = Field(default=0.9, gt=0)
    """The exponent of the ``poly`` schedule (0.9 as nnU-Net)."""
    betas: tuple[float, float] = (0.99, 0.999)
    weight_decay: float = Field(default=5.0e-6, ge=0)
    loss: Literal["bce", "mse", "ce", "dice", "ce+dice"] = "bce"
    balance: bool = True
    """Affinities: weight positives and negatives so each class carries half the loss."""
    validate_every: int = Field(default=250, ge=1)
    checkpoint_every: int | None = Field(default=None, ge=1)
    """Write last.pt every this many iterations (default: validate_every)."""
    log_every: int = Field(default=1, ge=1)
    max_seconds: float | None = Field(default=None, gt=0)
    """Stop (saving last.pt, as at the end) once this invocation has trained this long."""
    seed: int = 0
    init: Literal["kaiming", "default"] = "kaiming"
    """Initial weights: He (Kaiming) normal for every conv, zero biases; or PyTorch's default
    (whose shrinking variance stalls the deeper PmSCn stacks)."""
    num_workers: int = Field(default=2, ge=0)
    min_labelled: float = Field(default=0.25, ge=0, le=1)
    """Reject patches whose output region has a smaller fraction of labelled voxels."""

    @field_validator("patch_shape")
    @classmethod
    def _positive(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError(f"train.patch_shape must be positive, got {list(value)}")
        return value


class ElasticConfig(_Strict):
    enabled: bool = False
    alpha: float = Field(default=4.0, ge=0)
    """Largest displacement, in voxels (of the finest axis; coarser axes move proportionally
    fewer voxels, the same distance in world units)."""
    sigma: float = Field(default=8.0, gt=0)
    """Spacing of the control grid, in voxels of the finest axis: the displacement is random at
    the control points and trilinear between them, so it varies over about ``sigma`` voxels."""


class MisalignConfig(_Strict):
    probability: float = Field(default=0.0, ge=0, le=1)
    """Probability for each z section of the patch to start a misalignment: it and the
    sections after it shift in y and x (raw and labels alike, as a badly aligned stack)."""
    max_shift: float = Field(default=0.0, ge=0)
    """Largest shift in y and x, in voxels, relative to the first section."""


class BlurConfig(_Strict):
    probability: float = Field(default=0.0, ge=0, le=1)
    """Probability for each z section of the patch to be out of focus (EM)."""
    max_sigma: float = Field(default=2.0, gt=0)
    """Its Gaussian blur in y and x has a standard deviation uniform in [0, max_sigma] voxels."""


def _check_range(value: tuple[float, float], *, positive: bool) -> tuple[float, float]:
    low, high = value
    if low > high:
        raise ValueError("expected [low, high] with low <= high")
    if positive and low <= 0:
        raise ValueError("expected factors above 0")
    if not positive and low < 0:
        raise ValueError("expected factors of at least 0")
    return value


class AugmentConfig(_Strict):
    """Augmentations of each training patch. The geometric ones (rotation, scale, elastic,
    misalign, and flips and transposes with them) are composed into one map and applied in one
    resampling pass: raw linearly, labels and mask by nearest neighbour. Without rotation,
    scale, elastic or misalign, flips and transposes are exact axis reversals and permutations
    (no resampling)."""

    flip: bool = True
    transpose: bool = True
    """Swap axes of equal voxel size (and equal patch size)."""
    sections: bool = False
    """Keep z sections whole, as serial-section EM deforms: each z section of the patch is one
    source section warped in y and x (elastic and scale in y and x only; no rotation about y
    or x, no transpose of z with y or x). The loader then warps the patch section by section,
    several times faster."""
    rotate: float = Field(default=0.0, ge=0, le=180)
    """Largest rotation about z (in the yx plane), in degrees, drawn uniform in
    [-rotate, rotate]; 180 for any angle. Skipped where y and x voxel sizes differ."""
    rotate_out_of_plane: float = Field(default=0.0, ge=0, le=180)
    """Largest rotation about y and about x, in degrees; each only where the two axes it turns
    have equal voxel sizes (isotropic data, e.g. MRI or FIB-SEM), skipped otherwise."""
    scale: tuple[float, float] = (1.0, 1.0)
    """Zoom factor range [low, high] (1.2 shows the tissue 1.2 times larger); same on all axes."""
    intensity_scale: tuple[float, float] = (0.8, 1.2)
    intensity_shift: tuple[float, float] = (-0.2, 0.2)
    contrast: tuple[float, float] = (1.0, 1.0)
    """Factor range on the deviation of each patch from its mean intensity."""
    gamma: tuple[float, float] = (1.0, 1.0)
    """Exponent range of a gamma curve on the patch rescaled to [0, 1] (and back)."""
    noise_sigma: float = Field(default=0.0, ge=0)
    """Gaussian noise with a standard deviation drawn from [0, noise_sigma]."""
    missing_section: float = Field(default=0.0, ge=0, le=1)
    """Probability for each z section of the patch to be blanked (EM)."""
    low_contrast: float = Field(default=0.0, ge=0, le=1)
    """Probability for each z section of the patch to lose most of its contrast (EM)."""
    elastic: ElasticConfig = Field(default_factory=ElasticConfig)
    misalign: MisalignConfig = Field(default_factory=MisalignConfig)
    blur: BlurConfig = Field(default_factory=BlurConfig)

    @model_validator(mode="after")
    def _sections_stay_whole(self) -> AugmentConfig:
        if self.sections and self.rotate_out_of_plane:
            raise ValueError("augment.sections keeps z sections whole, which a rotation about y or x would not; "
                             "set augment.rotate_out_of_plane to 0 or augment.sections to false")
        return self

    @field_validator("scale", "gamma")
    @classmethod
    def _positive_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _check_range(value, positive=True)

    @field_validator("contrast")
    @classmethod
    def _non_negative_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _check_range(value, positive=False)

    @property
    def resamples(self) -> bool:
        """Whether a patch goes through the resampling pass (rotation, scale, elastic or
        misalignment on)."""
        return bool(self.rotate or self.rotate_out_of_plane or self.scale != (1.0, 1.0)
                    or (self.elastic.enabled and self.elastic.alpha > 0)
                    or (self.misalign.probability > 0 and self.misalign.max_shift > 0))


class ValidationConfig(_Strict):
    thresholds: list[float] = Field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    """Agglomeration thresholds at which VI is computed (EM)."""
    scoring: Literal["hist_quant_50", "hist_quant_75", "mean"] = "hist_quant_75"
    """waterz merge scoring of the validation segmentation (EM)."""
    block_shape: tuple[int, int, int] | None = None
    """Output block for the blockwise predict (default: the training patch shape)."""


class TrainConfig(_Strict):
    """A resolved training config."""

    model: ModelConfig
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig
    train: TrainSettings = Field(default_factory=TrainSettings)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

    @model_validator(mode="after")
    def _losses_fit_task(self) -> TrainConfig:
        affinity_losses = ("bce", "mse")
        if (self.task.kind == "affinities") != (self.train.loss in affinity_losses):
            allowed = "bce, mse" if self.task.kind == "affinities" else "ce, dice, ce+dice"
            raise ValueError(f"train.loss {self.train.loss!r} does not fit task {self.task.kind}; use one of {allowed}")
        return self

    def as_dict(self, *, absolute: bool = False) -> dict[str, Any]:
        """Plain values (lists, not tuples) for YAML and checkpoint metadata; ``absolute``: local
        volume paths made absolute (from the current folder, as they are read), as a run's
        ``config.yaml`` and checkpoints store them, so that the run resumes from any folder."""
        plain = yaml.safe_load(yaml.safe_dump(self.model_dump(mode="json")))
        if absolute:
            for volume in [*plain["data"]["train"], *plain["data"]["validation"]]:
                for role in ("raw", "labels", "mask"):
                    if volume.get(role):
                        volume[role] = absolute_spec(volume[role])
        return plain


def absolute_spec(spec: str) -> str:
    """A local volume spec with an absolute path (``vol.h5:/raw`` -> ``/here/vol.h5:/raw``);
    URLs and absolute paths as they are."""
    from psc_seg.io.spec import url_scheme

    if url_scheme(spec) or spec.lower().startswith("file://") or Path(spec).is_absolute():
        return spec
    return str(Path.cwd() / spec)


# ------------------------------------------------------------------ error messages

def _section_model(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that holds the key at ``loc`` (a ValidationError location)."""
    model: Any = TrainConfig
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def _dotted(loc: Iterable) -> str:
    return ".".join(str(p) for p in loc)


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    where = _dotted(loc)
    if error["type"] == "extra_forbidden":
        model = _section_model(loc)
        allowed = sorted(model.model_fields) if model is not None else []
        key = str(loc[-1])
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}? " if close else ""
        return f"config key {where!r} is not allowed; {hint}allowed keys here: {', '.join(allowed)}"
    if error["type"] == "missing":
        return f"config key {where!r} is missing"
    message = error["msg"].removeprefix("Value error, ")
    if where and not message.startswith(where.split(".")[0]):
        return f"config key {where!r}: {message} (got {error.get('input')!r})"
    return f"config: {message}"


# ------------------------------------------------------------------ presets and overrides

def _preset_root():
    return resources.files("psc_seg") / "configs"


def list_presets() -> list[str]:
    """Names of the shipped presets, such as ``em/unet-p2sc2`` (``.yaml`` files under configs/)."""
    names = []

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".yaml"):
                names.append(prefix + child.name[: -len(".yaml")])

    walk(_preset_root(), "")
    return sorted(names)


def _preset_name(config: str | Path) -> str:
    """The preset ``config`` names (``.yaml`` optional); UserError with the closest one if none."""
    name = str(config).removesuffix(".yaml")
    presets = list_presets()
    if name not in presets:
        close = difflib.get_close_matches(name, presets, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"config {str(config)!r} is neither a file nor a preset; {hint}presets: {', '.join(presets)}")
    return name


def preset_text(name: str) -> str:
    """The YAML text of the preset ``name``, comments included (``psc-seg train --show``).

    Raises:
        UserError: no such preset (the closest one proposed).
    """
    return (_preset_root() / f"{_preset_name(name)}.yaml").read_text()


def preset_description(name: str) -> str:
    """The first comment line of the preset ``name``: what it is, in one line."""
    for line in preset_text(name).splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def read_config_source(config: str | Path) -> tuple[dict[str, Any], str]:
    """The raw YAML mapping of a config file or preset, and where it came from."""
    path = Path(config)
    if path.is_file():
        text, origin = path.read_text(), str(path)
    else:
        name = _preset_name(config)
        text, origin = preset_text(name), f"preset {name}"
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config {origin}: invalid YAML{where} ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"config {origin}: expected a mapping of sections (model, task, data, train), got {type(raw).__name__}")
    return raw, origin


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``key.path=value`` override to ``raw`` in place (value parsed as YAML;
    integer parts index lists, e.g. ``data.train.0.raw=vol.zarr``)."""
    path, sep, text = item.partition("=")
    parts = [p.strip() for p in path.split(".")]
    if not sep or not all(parts):
        raise UserError(f"--set {item!r}: expected key.path=value, e.g. --set train.iterations=500")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"--set {item!r}: the value is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"--set {item!r}: {_dotted(parts[:depth])!r} is a list of {len(node)}; use an index below {len(node)}")
            index = int(part)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise UserError(f"--set {item!r}: {_dotted(parts[:depth])!r} is a value, not a section")


def load_config(config: str | Path | dict[str, Any], overrides: Iterable[str] = ()) -> TrainConfig:
    """Read, override and validate a training config.

    Args:
        config: a YAML file, a preset name (``em/unet-p2sc2``) or an already-parsed mapping.
        overrides: ``key.path=value`` strings, applied in order.

    Raises:
        UserError: one line naming the bad key (with the allowed keys and a close match); no
            ``data.train`` (with the ``--set`` form that gives it).

    An override of ``data.train`` without one of ``data.validation`` drops the config's
    validation volumes, with a :class:`~psc_seg.errors.Note`.
    """
    if isinstance(config, dict):
        raw, origin = yaml.safe_load(yaml.safe_dump(config)), "mapping"
    else:
        raw, origin = read_config_source(config)
    overrides = list(overrides)
    for item in overrides:
        apply_override(raw, item)
    _keep_validation_with_train(raw, overrides, origin)
    data = raw.get("data")
    if not (isinstance(data, dict) and data.get("train")):
        what = origin if origin.startswith("preset ") else f"config {origin}"
        raise UserError(f"{what} has no training data; give it with --set "
                        f"\"data.train=[{{raw: train.zarr/raw, labels: train.zarr/labels}}]\" "
                        "(and data.validation likewise)")
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_one_line(exc)) from None


def _keep_validation_with_train(raw: dict[str, Any], overrides: Sequence[str], origin: str) -> None:
    """Overrides of ``data.train`` without one of ``data.validation`` drop the config's
    ``data.validation`` (a note says so): validation volumes that went with other training
    data are not kept by accident. ``raw`` is changed in place."""
    paths = [[p.strip() for p in item.partition("=")[0].split(".")] for item in overrides]
    if not any(p[:2] == ["data", "train"] for p in paths):
        return
    if any(p[:2] == ["data", "validation"] or p == ["data"] for p in paths):
        return
    data = raw.get("data")
    if isinstance(data, dict) and data.get("validation"):
        shown = ", ".join(str(v.get("raw") if isinstance(v, dict) else v) for v in data["validation"])
        data["validation"] = []
        note(f"--set data.train replaces the training data of {origin}, so its data.validation ({shown}) is left "
             "out: no validation; give --set \"data.validation=[{raw: ..., labels: ...}]\" to validate")
