"""`audiofind duplicates`: list exact and near copies, and the bytes they waste; never deletes."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from audiofind.audio.printmatch import NEAR
from audiofind.cli.common import DbOpt, JsonOpt, app, console, err_console

if TYPE_CHECKING:
    from audiofind.search.duplicates import Group


@app.command()
def duplicates(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Only groups with a file under these folders, listed with all their files (default: the whole index).",
            show_default=False,
        ),
    ] = None,
    near: Annotated[
        float,
        typer.Option(
            "--near",
            min=0,
            max=1,
            help="Fingerprint similarity (0-1) at or above which two different files count as one recording; 0 lists exact copies only.",
        ),
    ] = NEAR,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List groups of copies: exact (same content) and near (same recording, other format, rate, gain or trim), with
    wasted bytes."""
    from audiofind.search.duplicates import find
    from audiofind.store import open_store  # no torch: fingerprints need no model

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with open_store(db) as index, Progress(*columns, console=err_console, transient=True,
                                           disable=not err_console.is_terminal) as bar:  # fmt: skip
        tasks: dict[str, TaskID] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:  # fingerprints of contents indexed before they were made, then comparisons
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        groups = find(index, [p.expanduser() for p in paths or []], near, progress)
    if json_out:
        typer.echo(json.dumps([g.as_dict() for g in groups], ensure_ascii=False))
        return
    if not groups:
        console.print("No duplicates.")
        return
    table = Table("kind", "files", "size", "wasted")
    for g in groups:
        table.add_row(g.kind, _files(g), f"{g.bytes / 2**20:.2f} MiB", f"{g.wasted / 2**20:.2f} MiB")
    console.print(table)
    wasted = sum(g.wasted for g in groups)  # each file is in one group: the sum is what can be freed
    files = sum(len(g.paths) for g in groups)
    console.print(
        f"{len(groups)} group(s) of {files} files; keeping the largest file of each would free {wasted / 2**20:.2f} MiB."
    )


def _files(g: "Group") -> str:
    """A group's files, one a line: an offline one marked as search marks it, a near group's byte-for-byte copies
    named after the first of their set."""
    first = {p: s[0] for s in g.identical for p in s[1:]} if g.kind == "near" else {}
    lines = []
    for f in g.files:
        line = f"[dim]{escape(f.path)}[/] [yellow]offline[/]" if not f.available else escape(f.path)
        if f.path in first:
            line += f" [dim](same bytes as {escape(Path(first[f.path]).name)})[/]"
        lines.append(line)
    return "\n".join(lines)
