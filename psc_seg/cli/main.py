"""Compose the ``psc-seg`` Typer app from one module per command.

User mistakes (:class:`psc_seg.errors.UserError`) become one line ``error: ...`` on stderr and
exit status 2, with the parameters they name spelled as the command's flags (``resume`` ->
``--resume``); ``psc-seg --debug COMMAND`` shows the traceback instead. Notes
(:class:`psc_seg.errors.Note`) become one line ``note: ...`` on stderr each. Ctrl-C ends a
command with status 130 and one line: what it kept and the command that continues it
(:class:`psc_seg.errors.Interrupted`), or ``interrupted``.
"""

from __future__ import annotations

import logging
import shlex
import warnings
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from psc_seg import __version__
from psc_seg.allocator import keep_freed_memory
from psc_seg.errors import Interrupted, Note, UserError


class PscGroup(TyperGroup):
    """Top-level group: turns a UserError raised anywhere below into a one-line error, and
    prints each Note as a one-line note."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["psc_seg.args"] = list(args)  # the command line, for the --resume command after Ctrl-C
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", Note)
                warnings.showwarning = _show(warnings.showwarning)
                return super().invoke(ctx)
        except UserError as exc:
            if ctx.params.get("debug"):
                raise
            text = exc.render(_flags(self, ctx)).strip()
            message = text.splitlines()[0] if text else type(exc).__name__
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt as exc:
            if ctx.params.get("debug"):
                raise
            # writes zarr had under way when Ctrl-C came are dropped at exit (the record lists only
            # finished blocks); asyncio would log each as "Task was destroyed but it is pending!"
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
            typer.echo(_interrupted(exc, ctx.meta.get("psc_seg.args", [])), err=True)
            raise typer.Exit(code=130) from None


def _interrupted(exc: KeyboardInterrupt, args: list[str]) -> str:
    """What to tell after Ctrl-C: what was kept and the command that continues
    (:class:`~psc_seg.errors.Interrupted`), or just that it stopped."""
    if not isinstance(exc, Interrupted):
        return "interrupted"
    words = [w for w in args if w not in ("--resume", "--overwrite")]  # they exclude each other
    if exc.resumable:
        command = exc.command if exc.command is not None else [*words, "--resume"]
        return f"interrupted: {exc.kept}; continue with `{shlex.join(['psc-seg', *command])}`"
    return f"interrupted: {exc.kept}; run `{shlex.join(['psc-seg', *words])}` again to start over"


def _show(show_other):
    """``warnings.showwarning`` printing a Note as ``note: <message>`` on stderr."""
    def show(message, category, *args, **kwargs):
        if issubclass(category, Note):
            typer.echo(f"note: {message}", err=True)
        else:
            show_other(message, category, *args, **kwargs)
    return show


def _flags(group: TyperGroup, ctx: click.Context):
    """Spell a parameter name as the invoked command's long flag (the name itself if it has none)."""
    command = group.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
    flags: dict[str, str] = {}
    todo = [command] if command is not None else []
    while todo:  # a group's subcommands too (``psc-seg synth em``): their options share names
        current = todo.pop()
        todo.extend(getattr(current, "commands", {}).values())
        for p in getattr(current, "params", []):
            if p.param_type_name == "option":
                flags.setdefault(p.name, next((o for o in p.opts if o.startswith("--")), p.opts[0]))
    return lambda name: flags.get(name, name)


app = typer.Typer(
    cls=PscGroup,
    name="psc-seg",
    help="Segment 3D EM and MRI volumes with Parallel Separable 3D Convolution (PmSCn) networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"psc-seg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    """Segment 3D EM and MRI volumes with Parallel Separable 3D Convolution (PmSCn) networks."""
    keep_freed_memory()  # a command's process ends with its work: reuse freed memory (psc_seg.allocator)


def _register() -> None:
    # One module per command; each exposes `register(app)`.
    from psc_seg.cli import demo as demo_cmd
    from psc_seg.cli import evaluate as evaluate_cmd
    from psc_seg.cli import info as info_cmd
    from psc_seg.cli import models as models_cmd
    from psc_seg.cli import predict as predict_cmd
    from psc_seg.cli import preview as preview_cmd
    from psc_seg.cli import segment as segment_cmd
    from psc_seg.cli import synth as synth_cmd
    from psc_seg.cli import train as train_cmd
    from psc_seg.cli import view as view_cmd

    for module in (demo_cmd, models_cmd, info_cmd, predict_cmd, segment_cmd, evaluate_cmd, train_cmd, synth_cmd, preview_cmd,
                   view_cmd):
        module.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    app()
