"""`audiofind search`: find sounds by description or by example."""

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from audiofind.cli.common import json_text, DbOpt, DeviceOpt, JsonOpt, WeightsOpt, app, console
from audiofind.errors import UsageError


def _time(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)}:{s:04.1f}"


@app.command()
def search(
    query: Annotated[str | None, typer.Argument(help="What it sounds like, e.g. 'rain on a tin roof'.", show_default=False)] = None,
    like: Annotated[Path | None, typer.Option("--like", help="Search by example: sounds like this audio file.")] = None,
    k: Annotated[int, typer.Option("-k", "--limit", min=1, help="How many files to show.")] = 20,
    json_out: JsonOpt = False,
    paths_out: Annotated[bool, typer.Option("--paths", help="One path per line, for pipes.")] = False,
    under: Annotated[Path | None, typer.Option("--under", help="Only files under this folder.")] = None,
    ext: Annotated[list[str] | None, typer.Option("--ext", help="Only these extensions (repeatable).")] = None,
    min_duration: Annotated[float | None, typer.Option("--min-duration", min=0, help="Only files at least this long (s).")] = None,
    max_duration: Annotated[float | None, typer.Option("--max-duration", min=0, help="Only files at most this long (s).")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only files with this tag, KEY=VALUE (repeatable).")] = None,
    db: DbOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Find the sounds that match QUERY (or --like FILE), best first."""
    from audiofind.search import query_encoder, search_like, search_text
    from audiofind.store import open_index
    from audiofind.store import Filters
    from audiofind.store.nearest import shown_tags

    if query is None and like is None:
        raise UsageError("Give a QUERY (what it sounds like) or --like FILE.")
    if query is not None and like is not None:
        raise UsageError("Give either a QUERY or --like FILE, not both.")
    if json_out and paths_out:
        raise UsageError("Choose one of --json and --paths.")
    filters = Filters.checked(under, ext or (), min_duration, max_duration, tag or ())
    with open_index(db) as index:
        encoder = query_encoder(index, weights, device)
        hits = search_text(index, encoder, query, k, filters) if like is None else search_like(index, encoder, like, k, filters)
    if json_out:
        typer.echo(json_text([asdict(h) for h in hits]))
    elif paths_out:
        for h in hits:
            typer.echo(h.path)
    else:
        table = Table("#", "score", "file", "time", "duration", "tags")
        for rank, h in enumerate(hits, 1):
            span = f"{_time(h.start)}–{_time(h.end)}" if h.end - h.start < h.duration - 1e-6 else ""
            link = f"[link=file://{escape(h.path)}]{escape(h.path)}[/link]"
            tags_text = ", ".join(f"{k}={v}" for k, v in shown_tags(h.tags or {}).items())
            table.add_row(str(rank), f"{h.score:.3f}", link, span, _time(h.duration), escape(tags_text))
        console.print(table if hits else "No matching sounds.")
