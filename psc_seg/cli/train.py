"""``psc-seg train``: train a network on labelled volumes (config file or preset)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def train_command(
    config: Annotated[
        str | None,
        typer.Argument(help="Config YAML file or preset name (e.g. em/unet-p2sc2; see --list-presets); with "
                            "--resume, the run folder."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run folder (default runs/<config name>): new, empty, or a run psc-seg "
                                         "wrote (marked by its .psc-seg-run file)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume",
                     help="Continue a run from its checkpoints/last.pt: `psc-seg train --resume RUN_DIR` (config, "
                          "--set overrides and data from RUN_DIR/config.yaml; -n to train longer), or CONFIG "
                          "--out RUN_DIR --resume (CONFIG must match the run's)."),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite",
                     help="Start the run in --out again, once config and data have passed their checks: removes "
                          "only what psc-seg wrote there (the entries its .psc-seg-run marker lists; in a run "
                          "folder made before markers, checkpoints/, metrics.csv, config.yaml, curves.png, "
                          "tensorboard/ and validation/). A non-empty folder that is not a run is refused."),
    ] = False,
    iterations: Annotated[int | None, typer.Option("--iterations", "-n", min=1, help="Override train.iterations.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda (mixed precision on cuda).")] = "cpu",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key: key.path=value (value parsed as YAML). Repeatable."),
    ] = None,
    list_presets: Annotated[
        bool, typer.Option("--list-presets", help="List the shipped presets, one line each, and exit.")
    ] = False,
    show: Annotated[
        str | None,
        typer.Option("--show", metavar="PRESET",
                     help="Print the preset's YAML (with its comments) and exit: a start for your own config."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    allow_incomplete: Annotated[
        bool,
        typer.Option("--allow-incomplete",
                     help="Train on raw, labels or masks that psc-seg marked unfinished (refused by default)."),
    ] = False,
) -> None:
    """Train a model on labelled volumes as CONFIG says; write checkpoints, metrics.csv and
    curves into the run folder. Ctrl-C saves checkpoints/last.pt and prints the command that
    continues (psc-seg train --resume RUN_DIR)."""
    from psc_seg.train.config import list_presets as presets
    from psc_seg.train.config import preset_description, preset_text

    if list_presets:
        names = presets()
        width = max(map(len, names))
        for name in names:
            typer.echo(f"{name:<{width}}  {preset_description(name)}")
        return
    if show is not None:
        typer.echo(preset_text(show), nl=False)
        return
    from psc_seg.pipelines.train import train
    from psc_seg.train.loop import TrainingInterrupted

    try:
        summary = train(config, out=out, resume=resume, overwrite=overwrite, iterations=iterations, device=device,
                        overrides=set_ or [], quiet=quiet, allow_incomplete=allow_incomplete)
    except TrainingInterrupted as exc:  # continued by the run folder alone: its config.yaml has the rest
        flags = [*(["--device", device] if device != "cpu" else []), *(["-q"] if quiet else []),
                 *(["--allow-incomplete"] if allow_incomplete else [])]
        exc.command = ["train", "--resume", str(exc.checkpoint.parent.parent), *flags]
        raise
    typer.echo(summary_line(summary))


def summary_line(summary: dict) -> str:
    """The last line of ``psc-seg train``: iteration, loss, the best validation figure named
    (``best validation VI 0.7900 at iteration 1500``) and where the checkpoints are."""
    if summary.get("metric") is None:
        best = "no validation data (best.pt is the final model)"
    elif summary.get("best_value") is None:
        best = f"validation {summary['metric']} gave no score yet"
    else:
        best = (f"best validation {summary['metric']} {summary['best_value']:.4f} at iteration "
                f"{summary['best_iteration']}")
    return (f"trained to iteration {summary['iteration']} (loss {summary['loss']:.4f}); {best}; "
            f"checkpoints in {summary['run_dir']}/checkpoints")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
