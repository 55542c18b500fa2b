"""`audiofind watch`: index folders, then follow their changes until Ctrl-C or SIGTERM."""

import signal
import threading
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from audiofind.cli.common import (
    DbOpt,
    DeviceOpt,
    JsonOpt,
    PrecisionOpt,
    WeightsOpt,
    app,
    console,
    err_console,
    json_text,
)
from audiofind.cli.index import RayOpt, RaySharedOpt, open_cluster

if TYPE_CHECKING:
    from audiofind.library.sync import Event

STYLES = {"embedded": "green", "reused": "green", "moved": "cyan", "removed": "magenta", "failed": "red",
          "lost": "yellow", "found": "yellow", "rescan": "yellow", "unavailable": "yellow", "kept": "yellow"}  # fmt: skip


def _as_json(e: "Event") -> dict:
    """One change as the JSON object printed with --json (moves add "from")."""
    out: dict = {"event": e.event, "path": e.path, "time": datetime.now().astimezone().isoformat(timespec="seconds")}
    if e.source:
        out["from"] = e.source
    if e.reason:
        out["reason"] = e.reason
    if e.event == "embedded":
        out |= {"segments": e.segments, "duration": round(e.duration, 3)}
    if e.count:
        out["count"] = e.count  # unavailable, kept: how many indexed files were kept
    return out


def json_line(e: "Event") -> str:
    """The --json line: UTF-8 as every command prints JSON, not ASCII escapes."""
    return json_text(_as_json(e))


def _as_text(e: "Event") -> str:
    """One change as a timestamped rich line."""
    what = escape(e.path)
    if e.event == "moved":
        what = f"{escape(e.source or '')} -> {what}"
    elif e.event == "embedded":
        what += f" [dim]({e.segments} segment{'s' if e.segments != 1 else ''}, {e.duration:.1f} s)[/]"
    elif e.event == "reused":
        what += " [dim](same audio as an indexed file)[/]"
    if e.reason:
        what += f": {escape(e.reason)}"
    return f"[dim]{datetime.now():%H:%M:%S}[/] [{STYLES.get(e.event, 'white')}]{e.event}[/] {what}"


@app.command("watch")
def watch_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Folders to index and watch.", show_default=False)],
    db: DbOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    json_out: JsonOpt = False,
    polling: Annotated[
        bool,
        typer.Option(
            "--polling", help="Poll instead of OS events (network drives and other file systems without events)."
        ),
    ] = False,
    settle: Annotated[
        float,
        typer.Option(
            "--settle", metavar="SECONDS", help="Index a file once its size and mtime have not changed for this long."
        ),
    ] = 1.0,
    ray: RayOpt = None,
    ray_shared_paths: RaySharedOpt = False,
) -> None:
    """Index PATHS, then keep the index in step with every change under them until Ctrl-C."""
    from audiofind.library.sync import Event, check_roots, indexing_encoder, prepare
    from audiofind.library.watch import watch
    from audiofind.store import open_store, peek_model

    def on_event(e: Event) -> None:
        if json_out:
            typer.echo(json_line(e))
        else:
            console.print(_as_text(e), highlight=False, soft_wrap=True)  # one line, however long the path

    def on_ready() -> None:
        folders = "folder" if len(paths) == 1 else "folders"
        err_console.print(f"watching {len(paths)} {folders}; press Ctrl-C to stop", highlight=False)

    stop = threading.Event()
    check_roots(paths)
    cluster = open_cluster(ray, ray_shared_paths, device)  # before our signal handlers: Ray's start sets its own
    previous = {}
    if threading.current_thread() is threading.main_thread():  # only the main thread may set signal handlers
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        with cluster or nullcontext():
            # A cluster out of reach, or without room for the model, leaves the index untouched: started first.
            remote = cluster.start(peek_model(db), weights, precision) if cluster else None
            with open_store(db, create=True) as index, index.writer_lock():
                encoder = remote if remote is not None else indexing_encoder(index, weights, device, precision)
                if not stop.is_set():  # else Ctrl-C or SIGTERM came while the model loaded
                    prepare(index, encoder)
                    watch(index, encoder, paths, settle=settle, polling=polling, on_event=on_event, stop=stop,
                          on_ready=on_ready, cluster=cluster)  # fmt: skip
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # The index is closed and complete; what follows is the interpreter's own teardown (seconds, with torch loaded).
    err_console.print("stopped", highlight=False)
