"""``psc-seg demo``: the whole pipeline on built-in synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    task: Annotated[str, typer.Option("--task", help="em: neurons from EM (VI); mri: tissue classes (Dice).")] = "em",
    quick: Annotated[bool, typer.Option("--quick", help="Small volumes, short training: a few minutes on a CPU.")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for data, run, outputs and previews.")] = Path(
        "psc-seg-demo"
    ),
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace the demo an earlier run wrote into OUT (only what it wrote; a "
                                         "non-empty folder the demo did not write is refused)."),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Synthesise data, train a PmSCn network, predict, segment and evaluate, printing the scores.

    EM: a psc(2,2) UNet's affinities -> waterz -> VI against the ground truth, beside the
    no-learning baseline (affinities from the smoothed raw) through the same steps.
    MRI: a psc(2,2) DenseNet -> tissue labels -> Dice per class.
    """
    from psc_seg.pipelines.demo import run_demo
    from psc_seg.pipelines.evaluate import format_rows

    result = run_demo(task, quick=quick, out=out, device=device, overwrite=overwrite, progress=not quiet,
                      log=typer.echo)
    summary = result["summary"]
    typer.echo("")
    if task == "em":
        for method in ("learned", "baseline"):
            rows = [r for r in result["rows"] if r["method"] == method]
            typer.echo(f"{method}:")
            typer.echo(format_rows([{**r, "prediction": f"threshold {r['threshold']:.2f}"} for r in rows]))
        typer.echo(
            f"\nbest VI total: learned {summary['learned_voi']:.3f} (threshold {summary['learned_threshold']}) vs "
            f"no-learning baseline {summary['baseline_voi']:.3f} (threshold {summary['baseline_threshold']}); "
            f"{summary['iterations']} training iterations in {summary['train_seconds']:.0f} s"
        )
    else:
        typer.echo(format_rows(result["rows"]))
        typer.echo(f"\nmean Dice {summary['mean_dice']:.3f} after {summary['iterations']} training iterations "
                   f"in {summary['train_seconds']:.0f} s")
    typer.echo(f"outputs in {result['out']}/ ({result['seconds']:.0f} s in all); previews:")
    for path in result["previews"]:
        typer.echo(f"  {path}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
