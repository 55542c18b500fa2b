"""What every command shares: the app, the consoles, the option types and the one error handler."""

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Protocol

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from typer.core import TyperGroup

from audiofind.errors import AudiofindError

if TYPE_CHECKING:  # the Typer installed for development vendors click
    from typer._click import Context as ClickContext
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
else:
    try:  # Typer >= 0.20 vendors click; older ones use it directly
        from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
    except ImportError:  # pragma: no cover
        from click.exceptions import ClickException, NoArgsIsHelpError, UsageError


def _console(stderr: bool = False) -> Console:
    """A console that keeps its natural width on a terminal and does not wrap at 80 columns in a pipe."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=240 if piped else None)


console = _console()
err_console = _console(stderr=True)


def duration(seconds: float) -> str:
    """Seconds of audio for people: '42 s', '3.5 min', '2.25 h'."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def json_text(value: object) -> str:
    """The one JSON encoding of every command's output: UTF-8 as it is (paths with accents stay readable), one line."""
    import json

    return json.dumps(value, ensure_ascii=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line on stderr and return the Exit to raise."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(code)


class Group(TyperGroup):
    """Turns every AudiofindError, from any command or sub-command, into one line and its exit code."""

    def invoke(self, ctx: "ClickContext") -> object:
        try:
            return super().invoke(ctx)
        except AudiofindError as e:
            raise fail(str(e), e.exit_code) from None

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: object,
    ) -> object:
        """Argument errors too are one line on stderr (the framework draws multi-line boxes)."""
        _plain_metavars(self)
        if not standalone_mode:
            return super().main(
                args, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra
            )
        try:
            code = super().main(
                args, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra
            )
        except NoArgsIsHelpError as e:
            typer.echo(e.ctx.get_help() if e.ctx else str(e))
            code = e.exit_code
        except ClickException as e:
            where = f" (see: {e.ctx.command_path} --help)" if isinstance(e, UsageError) and e.ctx else ""
            typer.echo(f"error: {' '.join(e.format_message().split())}{where}", err=True)
            code = e.exit_code
        except typer.Abort:
            typer.echo("error: interrupted.", err=True)
            code = 130
        sys.exit(code if isinstance(code, int) else 0)


# What to type, by value type: help shows `--limit N`, `--db PATH`, and nothing after a plain flag.
_METAVARS = {"Path": "PATH", "int": "N", "float": "NUMBER", "str": "TEXT", "bool": ""}


class _Shown(Protocol):
    """A parameter as the help table sees it."""

    display_type_rich: Callable[[object], str | None]


def _plain_metavars(command: object) -> None:
    """Give every parameter a metavar that says what to type (the framework shows type names like <list[str]>)."""
    for param in getattr(command, "params", []):
        desc = param.type_descriptor
        base = param.bare_type().removeprefix("list[").removesuffix("]")
        if param.metavar is not None:
            label = param.metavar
        elif desc.is_choice:
            label = "|".join(map(str, desc.choices or ()))
        else:
            label = _METAVARS.get(base, base.upper())
        param.display_type_rich = lambda ctx, label=label: label or None  # what the help table shows
        if param.param_type_name == "argument" and param.metavar is None:
            param.metavar = param.name.upper()  # the usage line: PATHS...
    real = command.get_help_option  # type: ignore[attr-defined]  # any click command (typed object: its internals vary by version)

    def help_option(ctx: object, real: Callable[[object], _Shown | None] = real) -> _Shown | None:
        option = real(ctx)
        if option is not None:
            option.display_type_rich = lambda ctx: None
        return option

    command.get_help_option = help_option  # type: ignore[attr-defined]  # patched on this one instance
    for sub in getattr(command, "commands", {}).values():
        _plain_metavars(sub)


def sub_app(help: str) -> typer.Typer:
    """A command group that shares the error handling of the main app."""
    return typer.Typer(cls=Group, help=help, no_args_is_help=True, add_completion=False)


app = typer.Typer(
    cls=Group,
    help="Search your sound library by describing what you hear.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"audiofind {version('audiofind')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="AUDIOFIND_DEBUG",
            help="Log what happens on stderr, with the traceback of every file that failed.",
        ),
    ] = False,
) -> None:
    """Search your sound library by describing what you hear."""
    if debug:
        import logging

        logging.basicConfig(
            level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
        )


# Text, not a Path: a Path folds the // of postgresql://user@host/db into one slash.
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="AUDIOFIND_DB",
        metavar="PATH|URL",
        help="The index: an SQLite file (default: in the user data folder) or a postgresql:// URL.",
    ),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        "-w",
        envvar="AUDIOFIND_WEIGHTS",
        metavar="NAME",
        help="Model: a registered name or a checkpoint path.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
# The commands that run the model take it (embed, index, watch, serve; bench speed its own, repeatable): one spelling.
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        metavar="P",
        help="fp32 (exact); tf32 on CUDA; bf16 (the ResNeXt in bfloat16) on CUDA or on a CPU with AVX-512-BF16 "
        "or AMX. Default fp32; an existing index keeps the one it was built in.",
    ),
]


@contextmanager
def byte_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A download-style progress bar on stderr, driven by a (done, total) callback."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update
