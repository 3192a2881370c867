"""``psc-seg models``: list the model zoo with parameter counts, write untrained checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from psc_seg.errors import UserError

COMPARED_SPECS = ("conv3d", "psc(1,1)", "psc(2,2)", "psc(2,3)", "psc(3,2)")

models_app = typer.Typer(help="The model zoo: parameter counts and untrained checkpoints.", no_args_is_help=True)


@models_app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the registered models (and their named variants) with their parameter count for each
    conv spec at the default size."""
    from psc_seg.pipelines.models import model_table

    rows = model_table(COMPARED_SPECS)
    if as_json:
        typer.echo(json.dumps({"specs": list(COMPARED_SPECS), "models": rows}, indent=2))
        return
    header = f"{'model':<17}" + "".join(f"{spec:>16}" for spec in COMPARED_SPECS)
    typer.echo(header)
    for row in rows:
        cells = []
        for spec in COMPARED_SPECS:
            count = row["parameters"][spec]
            ratio = count / row["parameters"]["conv3d"]
            cells.append(f"{count / 1e6:>9.2f}M {ratio:>4.2f}x")
        label = row["name"] if row["variant"] is None else f"{row['name']} ({row['variant']})"
        typer.echo(f"{label:<17}" + "".join(cells))
    typer.echo("(parameters at the default size; ratio to conv3d)")


@models_app.command("init")
def init_command(
    name: Annotated[str, typer.Argument(help="Registered model name (see `psc-seg models list`).")],
    out: Annotated[Path, typer.Argument(help="Checkpoint file to write (.pt).")],
    conv: Annotated[str, typer.Option("--conv", help='Conv spec: "conv3d", "psc(m,n)" or "r2plus1d".')] = "conv3d",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a model argument: key=value, value parsed as YAML. Repeatable."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the random initial weights.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
) -> None:
    """Write an untrained checkpoint of model NAME to OUT."""
    from psc_seg.pipelines.models import init_checkpoint, parse_overrides

    if out.exists() and not overwrite:
        raise UserError(f"{str(out)!r} exists; pass --overwrite to replace it")
    kwargs = parse_overrides(set_ or [])
    summary = init_checkpoint(name, out, conv=conv, overrides=kwargs, seed=seed)
    typer.echo(f"wrote {out}: {summary['name']} conv={summary['conv']} parameters={summary['parameters']:,}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
