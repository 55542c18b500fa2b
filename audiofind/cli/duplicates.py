"""`audiofind duplicates`: list exact and near copies, and the bytes they waste; never deletes."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from audiofind.cli.common import DbOpt, JsonOpt, app, console
from audiofind.search.duplicates import NEAR


@app.command()
def duplicates(
    paths: Annotated[list[Path] | None, typer.Argument(help="Only files under these folders (default: the whole index).", show_default=False)] = None,
    near: Annotated[float, typer.Option("--near", min=0, max=2, help="Cosine distance under which two different files count as the same sound; 0 lists exact copies only.")] = NEAR,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List groups of copies: exact (same content) and near (same sound, other format or trim), with wasted bytes."""
    from audiofind.search.duplicates import find
    from audiofind.store import (
        open_store,  # no torch: the vectors are in the index already
    )

    with open_store(db) as index:
        groups = find(index, [p.expanduser() for p in paths or []], near)
    if json_out:
        typer.echo(json.dumps([g.as_dict() for g in groups], ensure_ascii=False))
        return
    if not groups:
        console.print("No duplicates.")
        return
    table = Table("kind", "files", "size", "wasted")
    for g in groups:
        table.add_row(g.kind, escape("\n".join(g.paths)), f"{g.bytes / 2**20:.2f} MiB", f"{g.wasted / 2**20:.2f} MiB")
    console.print(table)
    wasted = sum(g.wasted for g in groups)
    console.print(f"{len(groups)} group(s); keeping the largest file of each would free {wasted / 2**20:.2f} MiB.")
