"""`audiofind roots`: the folders an index holds, by name, where this machine has them and whether they are there,
mapping them here, and re-pointing one that moved."""

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from audiofind.cli.common import DbOpt, Group, JsonOpt, app, console, json_text

roots_app = typer.Typer(
    cls=Group,
    help="List the indexed folders (roots) by name, with where this machine has them and whether they are there; "
    "map a shared root here; re-point a root that moved.",
    invoke_without_command=True,
    add_completion=False,
)
app.add_typer(roots_app, name="roots")


@roots_app.callback(invoke_without_command=True)
def roots_cmd(ctx: typer.Context, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """List the roots: name, path on this machine (or not mounted here), available or missing, files."""
    if ctx.invoked_subcommand is not None:
        return
    from audiofind.store import open_store  # no torch: quick

    with open_store(db) as index:
        found = index.roots()
    when = lambda t: datetime.fromtimestamp(t).isoformat(timespec="seconds") if t else None
    rows: list[dict[str, Any]] = [
        {"name": r.name or r.path, "path": r.path if r.local else None, "mounted": r.local, "state": r.state,
         "files": r.files, "last_indexed": when(r.last_indexed_at)}
        for r in found
    ]  # fmt: skip
    if json_out:
        typer.echo(json_text(rows))
        return
    table = Table("name", "path here", "state", "files", "last indexed", box=None)
    for r in rows:
        path = escape(r["path"]) if r["mounted"] else "[yellow]not mounted here[/]"
        table.add_row(escape(r["name"]), path, STATE_STYLE[r["state"]], str(r["files"]), r["last_indexed"] or "never")
    console.print(table if rows else "no roots yet")


# How a root's state shows in a table: a missing one stands out, one another machine mounts does not.
STATE_STYLE = {"available": "available", "missing": "[red]missing[/]", "not mounted": "[dim]not mounted[/]"}


@roots_app.command("move")
def move_cmd(
    old: Annotated[Path, typer.Argument(help="The indexed folder, where it was.", show_default=False)],
    new: Annotated[Path, typer.Argument(help="Where that folder is now.", show_default=False)],
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Tell the index that the root OLD moved to NEW: its files are found there, nothing is embedded again."""
    from audiofind.library.relocate import move_root
    from audiofind.store import norm_path, open_store

    with open_store(db) as index, index.writer_lock():
        n = move_root(index, old, new)
    was, now = norm_path(old), norm_path(new)
    if json_out:
        typer.echo(json_text({"old": was, "new": now, "files": n}))
        return
    console.print(f"{escape(was)} is now {escape(now)}: {n:,} files, nothing embedded", highlight=False)


@roots_app.command("map")
def map_cmd(
    name: Annotated[str, typer.Argument(help="The root's name, as `audiofind roots` lists it.", show_default=False)],
    path: Annotated[Path, typer.Argument(help="Where this machine has that folder.", show_default=False)],
) -> None:
    """On this machine, find the shared root NAME at PATH (a machine that only searches a shared index)."""
    from audiofind.store import rootmap

    rootmap.write(name, str(path))
    console.print(f"{escape(name)} is {escape(str(path.expanduser().absolute()))} on this machine", highlight=False)


@roots_app.command("unmap")
def unmap_cmd(name: Annotated[str, typer.Argument(help="The root's name.", show_default=False)]) -> None:
    """Forget where this machine has the root NAME (its files show as NAME:path again, unless indexed here)."""
    from audiofind.store import rootmap

    rootmap.write(name, None)
    console.print(f"{escape(name)} is no longer mapped on this machine", highlight=False)
