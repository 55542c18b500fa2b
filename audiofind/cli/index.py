"""`audiofind index` and `audiofind status`: build the index and show what it holds."""

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from audiofind.cli.common import (
    DbOpt,
    DeviceOpt,
    JsonOpt,
    PrecisionOpt,
    WeightsOpt,
    app,
    console,
    duration,
    err_console,
    json_text,
)
from audiofind.errors import UsageError

if TYPE_CHECKING:
    from audiofind.library.cluster import Cluster
    from audiofind.library.report import Report

ExtOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--ext",
        help="These extensions instead of the default list (repeatable, e.g. --ext wav --ext flac, or --ext tta for one it leaves out).",
    ),
]
# index and watch take these two (watch for its syncs): decoding and embedding on a Ray cluster, decisions and commits here.
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="ADDRESS",
        help="Decode and embed on a Ray cluster: auto (the one this machine belongs to), "
        "HOST:PORT, ray://HOST:10001, or local (one started here, on all its CPUs and GPUs). Needs the extra: pip install 'audiofind\\[ray]'.",
    ),
]
RaySharedOpt = Annotated[
    bool,
    typer.Option(
        "--ray-shared-paths",
        help="With --ray: every node mounts the library at the same path, so workers read "
        "the files themselves (by default this machine sends them their bytes).",
    ),
]


def open_cluster(address: str | None, shared_paths: bool, device: str) -> "Cluster | None":
    """The Ray cluster --ray names, joined or started (None without --ray); Ray is imported only here."""
    if address is None:
        if shared_paths:
            raise UsageError("--ray-shared-paths goes with --ray ADDRESS.")
        return None
    from audiofind.library.cluster import connect

    return connect(address, shared_paths, device)


@app.command("index")
def index_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Folders to index.", show_default=False)],
    db: DbOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    json_out: JsonOpt = False,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="Embed everything again into a new file (e.g. with another model), swapped in when complete.",
        ),
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Try again files that failed before, even if unchanged.")
    ] = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune", help="Remove indexed files that are gone even when a whole folder, or over a quarter of one, is."
        ),
    ] = False,
    ext: ExtOpt = None,
    ray: RayOpt = None,
    ray_shared_paths: RaySharedOpt = False,
    root_name: Annotated[
        str | None,
        typer.Option(
            "--root-name",
            metavar="NAME",
            help="In a shared (PostgreSQL) index, call the folder NAME, the same on every machine that mounts it (default: HOST:/absolute/path).",
        ),
    ] = None,
) -> None:
    """Add the audio files under PATHS to the index; re-running only touches what changed."""
    from audiofind.audio.formats import AUDIO_EXTS
    from audiofind.library.rebuild import rebuild as rebuild_index
    from audiofind.library.sync import Event, load_checked, prepare, sync
    from audiofind.library.walk import absolute
    from audiofind.store import check_writable, is_url, open_store, peek_model
    from audiofind.store.location import resolve

    exts = frozenset(e.lower().lstrip(".") for e in ext) if ext else AUDIO_EXTS
    db_path = resolve(db)
    roots = absolute(paths)
    if root_name is not None and (len(roots) != 1 or not is_url(db_path)):
        raise UsageError(
            "--root-name names one folder (give exactly one PATH) of a shared index (--db postgresql://...); an SQLite index names its folders by their paths."
        )
    if is_url(db_path) or not Path(db_path).exists():  # nothing indexed here yet: a root that is not a folder is a typo
        for root in roots:
            if not root.is_dir():
                raise UsageError(f"{root} is not a folder.")
    check_writable(db_path)  # a server role that can only read is refused before the model loads
    cluster = open_cluster(ray, ray_shared_paths, device)
    with cluster or nullcontext():
        # Before anything is written: a broken model, or a cluster with no room for it, changes nothing.
        encoder = (
            cluster.start(peek_model(db_path), weights, precision)
            if cluster
            else load_checked(db_path, weights, device, precision)
        )
        index = open_store(db_path, create=True)  # a read-only index is refused here, in its own words
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[audio]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with (
            index,
            index.writer_lock(),
            Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal) as bar,
        ):
            task = bar.add_task("rebuilding" if rebuild else "indexing", total=None, audio="")
            started = datetime.now()
            files_done = 0

            piped = not err_console.is_terminal  # a log file or a pipe: one line per file as it commits, not a bar

            def on_event(e: Event) -> None:
                nonlocal files_done
                files_done += 1
                if e.event == "embedded" and e.reason:  # indexed, with a warning (truncated, say)
                    err_console.print(
                        f"[yellow]warning[/] {escape(e.path)}: {escape(e.reason)}", highlight=False, soft_wrap=True
                    )
                elif e.event in ("failed", "unavailable", "kept", "changing", "relocated"):
                    style = "yellow" if e.event == "failed" else "cyan"
                    err_console.print(
                        f"[{style}]{e.event}[/] {escape(e.path)}: {escape(e.reason or '')}",
                        highlight=False,
                        soft_wrap=True,
                    )
                elif piped:
                    err_console.print(f"{e.event} {escape(e.path)}", highlight=False, soft_wrap=True)

            def progress(done: float, share: float) -> None:
                rate = done / max((datetime.now() - started).total_seconds(), 1e-6)
                text = f"{files_done} files, {duration(done)} audio, {rate:.1f}x real time"
                if cluster:
                    text += f", {cluster.working} actor{'s' if cluster.working != 1 else ''} working"
                bar.update(task, completed=share * 100, total=100, audio=text)  # time left follows the share done

            if root_name is not None:
                index.mount_root(roots[0], root_name)  # before any file under it is written
            with stop_on_ctrl_c() as stop:  # the run stops between windows and says what it kept
                try:
                    if not rebuild:
                        prepare(index, encoder)
                    run: Callable[..., Report] = rebuild_index if rebuild else sync  # one call, either way
                    report = run(index, encoder, roots, exts=exts, retry_failed=retry_failed, on_event=on_event,
                                 progress=progress, prune=prune, cluster=cluster, stop=stop)  # fmt: skip
                except KeyboardInterrupt:  # a second Ctrl-C: stop now; every commit is whole
                    kept = (
                        "the current index is unchanged and the rebuild continues"
                        if rebuild
                        else f"the {files_done} file(s) finished in this run are kept, and the next run continues"
                    )
                    err_console.print(
                        f"interrupted: {kept} where it stopped when you run the same command again.",
                        highlight=False,
                        soft_wrap=True,
                    )
                    raise typer.Exit(130) from None
    if report.stopped:
        if json_out:
            typer.echo(json_text(report.as_dict()))
        finished = report.embedded + report.reused + report.moved + report.failed
        if rebuild:
            kept = "the current index is unchanged and the rebuild continues"
        else:
            windows = (
                f", with {report.windows_kept} window(s) ({duration(report.seconds_kept)}) of an unfinished recording,"
                if report.windows_kept
                else ""
            )
            kept = f"the {finished} file(s) finished in this run are kept{windows} and the next run continues"
        err_console.print(
            f"interrupted: {kept} where it stopped when you run the same command again.",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(130)
    with open_store(db_path) as index:
        failed_before = index.stats().failed - report.failed
    if json_out:
        typer.echo(json_text(report.as_dict()))
    else:
        print_summary(report, failed_before)
    if report.relocated:  # a folder asked for was left alone (a moved root): the user has a command to run
        raise typer.Exit(1)


def print_summary(report: "Report", failed_before: int) -> None:
    """The one line `index` ends with."""
    earlier = f" ({failed_before} failed earlier: see audiofind status)" if failed_before > 0 else ""
    kept = f", {report.kept} kept" if report.kept else ""
    n = sum(report.left_out.values())
    exts = " ".join(f".{e}" for e in report.left_out)
    left_out = f"; {n} audio file(s) not indexed for their extension ({exts}: --ext picks them)" if n else ""
    console.print(
        f"{report.embedded} embedded, {report.reused} reused, {report.skipped} skipped, {report.moved} moved, "
        f"{report.removed} removed{kept}, {report.failed} failed{earlier}; {duration(report.audio_seconds)} of audio in "
        f"{report.seconds:.1f} s on {report.device} ({report.model}){left_out}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def status(db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Show the index: where it is, which model built it, its folders, counts and failed files."""
    from audiofind.store import open_store  # no torch: status stays quick

    with open_store(db) as index:
        s = index.stats()
    data = s.as_dict()
    if json_out:
        typer.echo(json_text(data))
        return
    table = Table(show_header=False, box=None)
    rows = [
        ("index", data["path"]),
        ("size", f"{data['size_bytes'] / 2**20:.1f} MiB"),
        (
            "model",
            f"{data['model']} (sha256 {(data['sha256'] or '')[:12]}…, {data['precision']})"
            if data["model"]
            else "none yet",
        ),
        ("folders", "\n".join(f"{path} ({state})" for path, state in data["root_state"].items()) or "-"),
        ("files", f"{data['files']} ({data['ok']} indexed, {data['failed']} failed)"),
        ("segments", str(data["segments"])),
        ("audio", duration(s.audio_seconds)),
        ("last update", data["last_update"] or "never"),
    ]
    for label, value in rows:
        table.add_row(f"[bold]{label}[/]", escape(value))
    console.print(table)
    if data.get("warnings"):
        warned = Table("file", "warning", title="Indexed with a warning")
        for item in data["warnings"]:
            warned.add_row(escape(item["path"]), escape(item["reason"] or ""))
        console.print(warned)
    if data.get("failures"):
        failed = Table("failed file", "reason", title="Failed files")
        for item in data["failures"]:
            failed.add_row(escape(item["path"]), escape(item["reason"] or ""))
        console.print(failed)


@contextmanager
def stop_on_ctrl_c() -> Iterator[threading.Event]:
    """An event the first Ctrl-C sets, so that a run stops between windows with what it did counted; a second
    Ctrl-C interrupts at once (everything committed is kept either way)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield stop
        return

    def first(signum: int, frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
