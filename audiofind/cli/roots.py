"""`audiofind roots`: the folders an index holds, by name, where this machine has them, and mapping them here."""

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from audiofind.cli.common import DbOpt, Group, JsonOpt, app, console, json_text

roots_app = typer.Typer(
    cls=Group,
    help="List the indexed folders (roots) by name, with where this machine has them; map a shared root here.",
    invoke_without_command=True,
    add_completion=False,
)
app.add_typer(roots_app, name="roots")


@roots_app.callback(invoke_without_command=True)
def roots_cmd(ctx: typer.Context, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """List the roots: name, path on this machine (or not mounted here), files."""
    if ctx.invoked_subcommand is not None:
        return
    from audiofind.store import open_store  # no torch: quick

    with open_store(db) as index:
        found = index.roots()
    when = lambda t: datetime.fromtimestamp(t).isoformat(timespec="seconds") if t else None
    rows: list[dict[str, Any]] = [
        {"name": r.name or r.path, "path": r.path if r.local else None, "mounted": r.local, "files": r.files,
         "last_indexed": when(r.last_indexed_at)}
        for r in found
    ]  # fmt: skip
    if json_out:
        typer.echo(json_text(rows))
        return
    table = Table("name", "path here", "files", "last indexed", box=None)
    for r in rows:
        path = escape(r["path"]) if r["mounted"] else "[yellow]not mounted here[/]"
        table.add_row(escape(r["name"]), path, str(r["files"]), r["last_indexed"] or "never")
    console.print(table if rows else "no roots yet")


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
