"""`audiofind db copy`: move a whole index between an SQLite file and a PostgreSQL server, nothing embedded again."""

from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from audiofind.cli.common import JsonOpt, app, console, err_console, json_text, sub_app

db_app = sub_app("Work on whole indexes: copy one between SQLite files and PostgreSQL servers.")
app.add_typer(db_app, name="db")


@db_app.command("copy")
def copy_cmd(
    src: Annotated[
        str, typer.Argument(help="The index to copy: an SQLite file or a postgresql:// URL.", show_default=False)
    ],
    dst: Annotated[
        str, typer.Argument(help="Where to copy it: an SQLite file or a postgresql:// URL.", show_default=False)
    ],
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite the index DST already holds.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Copy the whole index SRC to DST: vectors bit for bit, file ids and root names kept, nothing embedded again."""
    from audiofind.store.transfer import copy_index

    columns = (TextColumn("copying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    piped = not err_console.is_terminal  # a log or a pipe: a line every tenth of the way instead of a bar
    shown = [-1]

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)
        tenth = 10 * done // max(total, 1)
        if piped and tenth > shown[0]:
            shown[0] = tenth
            err_console.print(f"copying: {done} of {total} contents and files", highlight=False)

    with Progress(*columns, console=err_console, transient=True, disable=piped) as bar:
        task = bar.add_task("copying", total=None)
        report = copy_index(src, dst, replace=replace, progress=progress)
    if json_out:
        typer.echo(json_text(report.as_dict()))
        return
    console.print(
        f"copied {report.files} files, {report.contents} contents ({report.segments} segments) from {report.source} "
        f"to {report.destination} in {report.seconds:.1f} s",
        highlight=False,
        soft_wrap=True,
    )
