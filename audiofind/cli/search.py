"""`audiofind search`: find sounds by description or by example."""

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from audiofind.cli.common import DbOpt, DeviceOpt, JsonOpt, WeightsOpt, app, console, err_console, json_text
from audiofind.errors import UsageError

if TYPE_CHECKING:
    from audiofind.store import Hit


def _time(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)}:{s:04.1f}"


@app.command()
def search(
    query: Annotated[
        str | None,
        typer.Argument(
            help="What it sounds like, e.g. 'rain on a tin roof'; -word leaves out files named with it, \"a phrase\" must appear in a name as written.",
            show_default=False,
        ),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            "--mode", help="hybrid: sound and names fused; audio: sound alone; text: names and tags alone (no model)."
        ),
    ] = "hybrid",
    not_: Annotated[
        str | None, typer.Option("--not", help="Move the sound query away from this description.", show_default=False)
    ] = None,
    like: Annotated[Path | None, typer.Option("--like", help="Search by example: sounds like this audio file.")] = None,
    k: Annotated[int, typer.Option("-k", "--limit", min=1, help="How many files to show.")] = 20,
    json_out: JsonOpt = False,
    paths_out: Annotated[bool, typer.Option("--paths", help="One path per line, for pipes.")] = False,
    under: Annotated[Path | None, typer.Option("--under", help="Only files under this folder.")] = None,
    ext: Annotated[list[str] | None, typer.Option("--ext", help="Only these extensions (repeatable).")] = None,
    min_duration: Annotated[
        float | None, typer.Option("--min-duration", min=0, help="Only files at least this long (s).")
    ] = None,
    max_duration: Annotated[
        float | None, typer.Option("--max-duration", min=0, help="Only files at most this long (s).")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Only files with this tag, KEY=VALUE (repeatable).")
    ] = None,
    min_rate: Annotated[
        int | None, typer.Option("--min-rate", min=1, metavar="HZ", help="Only files sampled at least this fast (Hz).")
    ] = None,
    channels: Annotated[
        int | None, typer.Option("--channels", min=1, help="Only files with this many channels.")
    ] = None,
    export_to: Annotated[
        Path | None,
        typer.Option(
            "--export",
            metavar="DIR",
            help="Also write each result's matching segment into DIR as a WAV in its own format.",
        ),
    ] = None,
    db: DbOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Find the sounds that match QUERY (or --like FILE), best first."""
    from audiofind.audio.tags import shown_tags
    from audiofind.search import MODES, search
    from audiofind.search.embedding import query_encoder
    from audiofind.search.filters import read_filters
    from audiofind.store import open_store

    if query is None and like is None:
        raise UsageError("Give a QUERY (what it sounds like) or --like FILE.")
    if query is not None and like is not None:
        raise UsageError("Give either a QUERY or --like FILE, not both.")
    if mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}.")
    if like is not None and (mode == "text" or not_ is not None):
        raise UsageError("--like searches by sound alone; it takes neither --mode text nor --not.")
    if json_out and paths_out:
        raise UsageError("Choose one of --json and --paths.")
    filters = read_filters(under, ext or (), min_duration, max_duration, tag or (), min_rate, channels)
    with open_store(db) as index:
        encoder = query_encoder(index, weights, device)  # loads nothing until a query needs a tower
        # the model is used only if the mode searches by sound
        found = search(index, query, like=like, k=k, filters=filters, mode=mode, not_=not_, model=encoder)
    hits = [f.hit for f in found]
    exported = _export(hits, export_to) if export_to is not None else {}
    if json_out:
        extra = lambda h: {"export": exported.get(h.path)} if export_to is not None else {}
        typer.echo(json_text([f.as_dict() | extra(f.hit) for f in found]))
    elif paths_out:
        for h in hits:
            typer.echo(h.path)
    else:
        table = Table("#", "score", "file", "time", "duration", "rate/bits/ch", "why", "tags")
        for rank, f in enumerate(found, 1):
            h = f.hit
            span = f"{_time(h.start)}–{_time(h.end)}" if h.end - h.start < h.duration - 1e-6 else ""
            link = f"[link=file://{escape(h.path)}]{escape(h.path)}[/link]"
            if not h.available:  # its folder is not there now (an unplugged drive): found, not playable
                link = f"[dim]{escape(h.path)}[/] [yellow]offline[/]"
            tags_text = ", ".join(f"{k}={v}" for k, v in shown_tags(h.tags or {}).items())
            table.add_row(
                str(rank),
                f"{h.score:.3f}",
                link,
                span,
                _time(h.duration),
                facts(h),
                escape(f.why.text()),
                escape(tags_text),
            )
        console.print(table if hits else "No matching sounds.")
    if export_to is not None:
        err_console.print(
            f"Wrote {sum(1 for p in exported.values() if p)} of {len(hits)} segments to {escape(str(export_to))}."
        )
        if not all(exported.values()):
            raise typer.Exit(1)


def facts(h: "Hit") -> str:
    """Rate, bits and channels in a few characters: 48k/24/2, 44.1k/-/2 for a lossy file, blank where unknown."""
    if h.sample_rate is None or h.channels is None:
        return ""
    rate = f"{h.sample_rate / 1000:g}k"
    return f"{rate}/{h.bits if h.bits is not None else '-'}/{h.channels}"


def _export(hits: "list[Hit]", folder: Path) -> dict[str, str | None]:
    """Write each hit's matching segment into folder; path -> the WAV written, or None (with a warning) if it failed."""
    from audiofind.audio import region
    from audiofind.errors import AudiofindError

    written: dict[str, str | None] = {}
    for h in hits:
        try:
            cut = region.plan(Path(h.path), h.start, h.end)
            out = region.unused(folder.expanduser() / region.default_name(h.path, cut.start, cut.end))
            done = region.write(cut, out)
            written[h.path] = os.path.abspath(done.path)  # as "path" is: absolute
            if done.silent_seconds > 0:
                err_console.print(
                    f"[yellow]warning:[/] {escape(h.path)} ends early (truncated): the last "
                    f"{done.silent_seconds:.2f} s of its exported region are silence.",
                    highlight=False,
                )
        except (AudiofindError, OSError) as e:
            err_console.print(f"[yellow]warning:[/] not exported: {escape(str(e))}", highlight=False)
            written[h.path] = None
    return written
