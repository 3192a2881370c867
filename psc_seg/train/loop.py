"""The training loop: optimise, log, validate, checkpoint, resume.

A run folder holds::

    RUN_DIR/config.yaml              the resolved config
    RUN_DIR/metrics.csv              iteration, loss, lr, validation figures, elapsed_s
    RUN_DIR/checkpoints/last.pt      model + optimizer + iteration + RNG states (resume), every
                                     checkpoint_every iterations, at each validation and the end
    RUN_DIR/checkpoints/best.pt      the model at the best validation figure so far (the final
                                     model when there is no validation data)
    RUN_DIR/validation/              the latest predictions on the validation volumes
    RUN_DIR/curves.png               loss (raw and smoothed) and validation curves, redrawn at
                                     each validation and at the end
    RUN_DIR/tensorboard/             event files, when tensorboard is installed (``pip install
                                     "psc-seg[tensorboard]"``): train/loss, train/lr,
                                     validation/<figure>, and at each validation the middle
                                     sections of raw, target and prediction (images/...)

The learning rate of each step is :func:`scheduled_lr` of the iteration (``train.schedule``,
``train.warmup``); metrics.csv's ``lr`` column is the rate of the row's step.

Resuming restores model, optimizer, AMP scaler, iteration and RNG states from ``last.pt``,
drops rows of ``metrics.csv`` written after it, and continues with the very samples an
uninterrupted run would have drawn (see :mod:`psc_seg.train.data`).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from psc_seg.errors import Interrupted, UserError
from psc_seg.files import atomic_path
from psc_seg.models import load_weights, read_checkpoint, save_checkpoint
from psc_seg.train.config import TrainConfig, TrainSettings
from psc_seg.train.data import PatchDataset, make_loader, worker_error
from psc_seg.train.losses import affinity_loss, semantic_loss


class Validator(Protocol):
    """Scores a checkpoint on the validation volumes."""

    columns: list[str]  # metrics.csv columns it fills
    metric: str  # the column that picks best.pt
    label: str  # what the metric is, for people: "VI", "mean Dice"
    mode: str  # "min" or "max"

    def __call__(self, checkpoint: Path, device: torch.device) -> dict[str, float]: ...

    def checkpoint_metadata(self, figures: dict[str, float]) -> dict[str, Any]:
        """Entries a checkpoint scored with ``figures`` keeps in its metadata (e.g. the
        segmentation settings validation chose, which later stages take as defaults)."""
        ...


class TrainingInterrupted(Interrupted):
    """Ctrl-C during training, after ``last.pt`` was written (``checkpoint``, ``iteration``)."""

    def __init__(self, checkpoint: Path, iteration: int) -> None:
        super().__init__(f"training stopped at iteration {iteration}; {checkpoint} saved")
        self.checkpoint, self.iteration = checkpoint, iteration


@dataclass
class RunState:
    """Where a run stands; stored in ``last.pt``'s extra entries."""

    iteration: int = 0
    best_value: float | None = None
    best_iteration: int | None = None
    elapsed_s: float = 0.0
    last_validation: dict[str, float] = field(default_factory=dict)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam as in the paper (lr 1e-4, betas (0.99, 0.999), weight decay 5e-6 for EM)."""
    t = config.train
    return torch.optim.Adam(model.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)


def scheduled_lr(settings: TrainSettings, iteration: int) -> float:
    """The learning rate of the step that follows ``iteration`` completed ones (0 for the
    first step), as ``settings`` (``lr``, ``schedule``, ``warmup``, ``poly_power``,
    ``iterations``) say: a pure function, so a resumed run continues the schedule exactly.

    Warmup: ``lr * (iteration + 1) / warmup`` for the first ``warmup`` steps. After it, with
    ``progress = (iteration - warmup) / (iterations - warmup)`` (0 to 1): ``constant`` is
    ``lr``, ``cosine`` ``lr * (1 + cos(pi * progress)) / 2``, ``poly``
    ``lr * (1 - progress) ** poly_power``; 0 from ``iterations`` on."""
    lr, warmup = settings.lr, settings.warmup
    if iteration < warmup:
        return lr * (iteration + 1) / warmup
    if settings.schedule == "constant":
        return lr
    progress = min(1.0, (iteration - warmup) / max(1, settings.iterations - warmup))
    if settings.schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr * (1.0 - progress) ** settings.poly_power


def compute_loss(config: TrainConfig, prediction: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The configured loss of ``prediction`` against a batch of :class:`PatchDataset` items."""
    if config.task.kind == "affinities":
        return affinity_loss(prediction, batch["target"], batch["mask"], kind=config.train.loss,
                             balance=config.train.balance)
    return semantic_loss(prediction, batch["target"], batch["mask"], kind=config.train.loss)


# ------------------------------------------------------------------ resuming

RESUME_ENTRIES = ("optimizer", "iteration", "rng")  # what Trainer.save keeps for resuming besides the model


def check_resumable(path: Path, model: nn.Module, config: TrainConfig) -> None:
    """UserError unless ``path`` is a ``last.pt`` that :meth:`Trainer.save` wrote for ``model``
    (the model ``config`` builds): the same architecture, and the optimizer, iteration and RNG
    states resuming needs. Neither ``model`` nor anything on disk is changed."""
    model = copy.deepcopy(model)
    _load_states(path, read_checkpoint(path), model, make_optimizer(model, config))


def _load_states(path: Path, payload: dict[str, Any], model: nn.Module,
                 optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a resume checkpoint's model and optimizer states; returns its ``extra`` entries."""
    fix = "resume with the config the run was trained with, or pass {overwrite} to start the run again"
    stored, built = payload.get("model") or {}, getattr(model, "build_config", None)
    if built is not None:
        differ = _differences({"model": stored.get("name"), **(stored.get("kwargs") or {})},
                              {"model": built["name"], **built["kwargs"]})
        if differ:
            raise UserError(f"{str(path)!r} holds another network than the config builds ({differ}); {fix}",
                            options=("overwrite",))
    extra = payload.get("extra") or {}
    missing = [key for key in RESUME_ENTRIES if key not in extra]
    if missing:
        raise UserError(f"{str(path)!r} has no {' / '.join(missing)} state to resume from (it is not a last.pt "
                        "psc-seg train wrote); pass {overwrite} to start the run again", options=("overwrite",))
    try:
        load_weights(model, payload["state_dict"])
        optimizer.load_state_dict(extra["optimizer"])
    except (KeyError, RuntimeError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        reason = " ".join(lines[:2])[:200].rstrip(":. ")
        raise UserError(f"{str(path)!r} does not fit the config's network ({reason}); {fix}",
                        options=("overwrite",)) from None
    return extra


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``"conv 'psc(2,2)' in the checkpoint, 'conv3d' in the config; ..."`` for the keys that differ."""
    def plain(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    keys = [k for k in dict.fromkeys([*old, *new]) if plain(old.get(k)) != plain(new.get(k))]
    return "; ".join(f"{k} {old.get(k)!r} in the checkpoint, {new.get(k)!r} in the config" for k in keys)


# ------------------------------------------------------------------ RNG states

def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain values / tensors (loadable with
    ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ------------------------------------------------------------------ metrics file

class MetricsLog:
    """``metrics.csv``: one row per logged iteration, flushed at once."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = ["iteration", "loss", "lr", *columns, "elapsed_s"]

    def start(self, *, after_iteration: int) -> None:
        """Keep the rows up to ``after_iteration`` (resume) or start a new file."""
        rows = [r for r in self.read() if int(r["iteration"]) <= after_iteration] if after_iteration else []
        with atomic_path(self.path, suffix=".csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, "") for k in self.columns})

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow({k: _format(row.get(k)) for k in self.columns})

    def read(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _tensorboard(run_dir: Path, *, after_iteration: int = 0):
    """A SummaryWriter into ``RUN_DIR/tensorboard``, or None when tensorboard is not installed
    (it is optional: ``pip install "psc-seg[tensorboard]"``). Resuming after ``after_iteration``,
    the events of later iterations that an earlier session wrote are purged, as rows of
    metrics.csv are."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=after_iteration + 1 if after_iteration else None)


def smoothed(values: list[float], *, span: int | None = None) -> list[float]:
    """An exponential moving average of ``values`` over about ``span`` points (default: a 20th of
    them, at least 5), started at the first value: the trend of a noisy training loss."""
    span = span if span is not None else max(5, len(values) // 20)
    weight = 2.0 / (span + 1.0)
    out: list[float] = []
    for value in values:
        out.append(value if not out else out[-1] + weight * (value - out[-1]))
    return out


def plot_curves(metrics: list[dict[str, str]], path: Path, *, metric: str | None,
                label: str | None = None) -> Path | None:
    """Loss (raw and smoothed) and the validation ``metric`` (a metrics.csv column, shown as
    ``label``) against iterations, as a PNG written atomically (a viewer never sees half a file)."""
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = [int(r["iteration"]) for r in metrics]
    losses = [float(r["loss"]) for r in metrics]
    panels = 2 if metric and any(r.get(metric) for r in metrics) else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5), squeeze=False)
    axes[0][0].plot(iterations, losses, lw=0.6, alpha=0.4, label="loss")
    axes[0][0].plot(iterations, smoothed(losses), lw=1.5, label="smoothed")
    axes[0][0].set(xlabel="iteration", ylabel="training loss", yscale="log" if min(losses) > 0 else "linear")
    axes[0][0].legend(loc="upper right", fontsize="small")
    if panels == 2:
        points = [(int(r["iteration"]), float(r[metric])) for r in metrics if r.get(metric)]
        axes[0][1].plot(*zip(*points), marker="o")
        axes[0][1].set(xlabel="iteration", ylabel=f"validation {label or metric}")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ the loop

@dataclass
class Trainer:
    """Trains ``model`` as ``config`` says, writing into ``run_dir``.

    ``metadata``: the checkpoint metadata besides the iteration (task, normalize, config,
    voxel_size); ``validator``: None when there are no validation volumes."""

    config: TrainConfig
    model: nn.Module
    dataset: PatchDataset
    run_dir: Path
    metadata: dict[str, Any]
    validator: Validator | None = None
    device: torch.device = torch.device("cpu")
    quiet: bool = False
    on_iteration: Callable[[int, float], None] | None = None

    def __post_init__(self) -> None:
        self.model.to(self.device)
        self.optimizer = make_optimizer(self.model, self.config)
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.state = RunState()
        self.checkpoints = self.run_dir / "checkpoints"
        columns = self.validator.columns if self.validator else []
        self.log = MetricsLog(self.run_dir / "metrics.csv", columns)

    # -------------------------------------------------------------- checkpoints
    def _metadata(self) -> dict[str, Any]:
        figures = dict(self.state.last_validation)
        chosen = self.validator.checkpoint_metadata(figures) if self.validator is not None and figures else {}
        return {**self.metadata, "iteration": self.state.iteration, "trained": True, "validation": figures,
                **chosen}

    def save(self, name: str) -> Path:
        """Write ``checkpoints/<name>.pt`` atomically with what resuming needs."""
        extra = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.state.iteration,
            "best_value": self.state.best_value,
            "best_iteration": self.state.best_iteration,
            "elapsed_s": self.state.elapsed_s,
            "rng": rng_states(),
        }
        return save_checkpoint(self.checkpoints / f"{name}.pt", self.model, metadata=self._metadata(), extra=extra)

    def restore(self, path: Path) -> None:
        """Continue from a ``last.pt`` written by :meth:`save` (UserError for another one, see
        :func:`check_resumable`)."""
        payload = read_checkpoint(path)
        extra = _load_states(path, payload, self.model, self.optimizer)
        self.model.to(self.device)
        if extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])
        self.state = RunState(
            iteration=int(extra["iteration"]), best_value=extra.get("best_value"),
            best_iteration=extra.get("best_iteration"), elapsed_s=float(extra.get("elapsed_s", 0.0)),
            last_validation=dict(payload.get("metadata", {}).get("validation", {})),
        )
        set_rng_states(extra["rng"])

    # -------------------------------------------------------------- steps
    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One optimisation step on a batch; returns the loss."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        self.model.train()
        for group in self.optimizer.param_groups:  # the schedule's rate, from the iteration alone
            group["lr"] = scheduled_lr(self.config.train, self.state.iteration)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            try:
                prediction = self.model(batch["raw"])
            except ValueError as exc:
                if "more than 1 value per channel" not in str(exc):
                    raise
                raise UserError(
                    f"train.batch_size {self.config.train.batch_size} with train.patch_shape "
                    f"{list(self.config.train.patch_shape)} leaves one voxel per channel at the model's coarsest "
                    "batch norm; raise train.batch_size or train.patch_shape"
                ) from None
        diverged = (f"at iteration {self.state.iteration + 1}: training diverged; lower train.lr "
                    f"(now {self.config.train.lr:g}) and start again with {{overwrite}}, or check the data")
        if not torch.isfinite(prediction).all():  # the losses would fail on it with their own traceback
            raise UserError(f"the network's output is NaN or infinite {diverged}", options=("overwrite",))
        loss = compute_loss(self.config, prediction.float(), batch)  # losses in float32, outside autocast
        if not torch.isfinite(loss):
            raise UserError(f"the loss is {loss.item()} {diverged}", options=("overwrite",))
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def validate(self) -> dict[str, float]:
        """Run the validator and keep ``best.pt`` up to date."""
        figures = self.validator(self.checkpoints / "last.pt", self.device)
        self.state.last_validation = dict(figures)
        value = figures.get(self.validator.metric)
        if value is not None and not math.isnan(value):
            better = self.state.best_value is None or (
                value < self.state.best_value if self.validator.mode == "min" else value > self.state.best_value
            )
            if better:
                self.state.best_value, self.state.best_iteration = float(value), self.state.iteration
                self.save("best")
        return figures

    def _log_row(self, iteration: int, loss: float, figures: dict[str, float], writer) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        self.log.write({"iteration": iteration, "loss": loss, "lr": lr, **figures,
                        "elapsed_s": round(self.state.elapsed_s, 3)})
        if writer is not None:
            writer.add_scalar("train/loss", loss, iteration)
            writer.add_scalar("train/lr", lr, iteration)
            for key, value in figures.items():
                writer.add_scalar(f"validation/{key}", value, iteration)

    def _after_validation(self, iteration: int, writer) -> None:
        """Redraw ``curves.png`` (so a long run shows its progress) and, with TensorBoard, add
        the validator's images (middle sections of raw, target and prediction)."""
        plot_curves(self.log.read(), self.run_dir / "curves.png", metric=self.validator.metric,
                    label=getattr(self.validator, "label", None))
        images = getattr(self.validator, "images", None)
        if writer is not None and images is not None:
            for name, image in images().items():
                writer.add_image(f"images/{name}", image, iteration, dataformats="CHW")
            writer.flush()

    # -------------------------------------------------------------- run
    def fit(self, *, resume_from: Path | None = None) -> dict[str, Any]:
        """Train up to ``config.train.iterations``; KeyboardInterrupt writes ``last.pt`` first.

        Returns:
            ``{"iteration", "loss", "best_value", "best_iteration", "elapsed_s", "validation"}``.
        """
        t = self.config.train
        if resume_from is not None:
            self.restore(resume_from)
        self.log.start(after_iteration=self.state.iteration)
        checkpoint_every = t.checkpoint_every or t.validate_every
        writer = _tensorboard(self.run_dir, after_iteration=self.state.iteration)
        loader = make_loader(
            self.dataset, batch_size=t.batch_size, start_iteration=self.state.iteration, iterations=t.iterations,
            num_workers=t.num_workers, seed=t.seed, pin_memory=self.device.type == "cuda",
        )
        session_start = time.perf_counter()
        started = session_start - self.state.elapsed_s
        loss = float("nan")
        progress = tqdm(total=t.iterations, initial=self.state.iteration, desc="train", unit="it",
                        disable=self.quiet, dynamic_ncols=True)
        try:
            for batch in loader:
                loss = self.step(batch)
                self.state.iteration += 1
                it = self.state.iteration
                self.state.elapsed_s = time.perf_counter() - started
                out_of_time = t.max_seconds is not None and time.perf_counter() - session_start >= t.max_seconds
                final = it == t.iterations or out_of_time
                validating = self.validator is not None and (it % t.validate_every == 0 or final)
                if it % checkpoint_every == 0 or final or validating:
                    self.save("last")  # validation predicts from last.pt
                figures = self.validate() if validating else {}
                self.state.elapsed_s = time.perf_counter() - started  # the validation's time included
                if figures:
                    self.save("last")  # with the validation figures and best so far, for --resume
                if it % t.log_every == 0 or figures or final:
                    self._log_row(it, loss, figures, writer)
                if figures:
                    self._after_validation(it, writer)
                postfix = {"loss": f"{loss:.4f}"}
                if self.validator is not None and self.validator.metric in self.state.last_validation:
                    postfix[self.validator.metric] = f"{self.state.last_validation[self.validator.metric]:.4f}"
                progress.set_postfix(postfix)
                progress.update(1)
                if self.on_iteration is not None:
                    self.on_iteration(it, loss)
                if out_of_time:
                    break
        except UserError as exc:  # one raised in a loader worker comes wrapped in torch's traceback text
            raise worker_error(exc) from None
        except KeyboardInterrupt:
            progress.close()
            path = self.save("last")
            raise TrainingInterrupted(path, self.state.iteration) from None
        finally:
            progress.close()
            if writer is not None:
                writer.close()
        if self.validator is None or self.state.best_value is None:
            self.save("best")  # no validation: the final model is the best we know
        plot_curves(self.log.read(), self.run_dir / "curves.png",
                    metric=self.validator.metric if self.validator else None,
                    label=getattr(self.validator, "label", None))
        return {
            "iteration": self.state.iteration, "loss": loss, "best_value": self.state.best_value,
            "best_iteration": self.state.best_iteration, "elapsed_s": self.state.elapsed_s,
            "validation": dict(self.state.last_validation),
        }
