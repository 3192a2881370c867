"""``psc-seg train``: train a network on labelled volumes (config file or preset)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def train_command(
    config: Annotated[
        str | None,
        typer.Argument(help="Config YAML file or preset name (e.g. em/unet-p2sc2; see --list-presets)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run folder (default runs/<config name>): new, empty, or a run psc-seg "
                                         "wrote (marked by its .psc-seg-run file)."),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from checkpoints/last.pt.")] = False,
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
    list_presets: Annotated[bool, typer.Option("--list-presets", help="List the shipped presets and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    allow_incomplete: Annotated[
        bool,
        typer.Option("--allow-incomplete",
                     help="Train on raw, labels or masks that psc-seg marked unfinished (refused by default)."),
    ] = False,
) -> None:
    """Train a model on labelled volumes as CONFIG says; write checkpoints, metrics.csv and
    curves into the run folder. Ctrl-C saves checkpoints/last.pt and prints the command that
    continues (--resume)."""
    from psc_seg.errors import UserError
    from psc_seg.train.config import list_presets as presets

    if list_presets:
        for name in presets():
            typer.echo(name)
        return
    if config is None:
        raise UserError("give a CONFIG file or preset name, e.g. `psc-seg train em/demo-small` (see --list-presets)")
    from psc_seg.pipelines.train import train

    summary = train(config, out=out, resume=resume, overwrite=overwrite, iterations=iterations, device=device,
                    overrides=set_ or [], quiet=quiet, allow_incomplete=allow_incomplete)
    best = f", best {summary['best_value']:.4f} at iteration {summary['best_iteration']}" if summary["best_value"] is not None else ""
    typer.echo(f"trained to iteration {summary['iteration']} (loss {summary['loss']:.4f}{best}); "
               f"checkpoints in {summary['run_dir']}/checkpoints")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
