"""What every command shares: the app, the consoles, the option types and the one error handler."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from typer.core import TyperGroup

from audiofind.errors import AudiofindError

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line on stderr and return the Exit to raise."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(code)


class Group(TyperGroup):
    """Turns every AudiofindError, from any command or sub-command, into one line and its exit code."""

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except AudiofindError as e:
            raise fail(str(e), e.exit_code) from None


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

DbOpt = Annotated[
    Path | None,
    typer.Option("--db", envvar="AUDIOFIND_DB", help="Index database file (default: in the user data folder)."),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option("--weights", "-w", envvar="AUDIOFIND_WEIGHTS", help="Model: a registered name or a checkpoint path."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


@contextmanager
def byte_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A download-style progress bar on stderr, driven by a (done, total) callback."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update
