"""Following folders as they change: sync once, then feed settled file-system changes back through `sync`.

Watchdog's threads only collect paths; this loop decides when a path has settled (no event and the same size and
mtime for `settle` seconds) and hands every settled path to one `indexer.sync(..., only=paths)` call. The old and
the new path of a move land in the same call, so `sync` recognises the content and moves the row instead of
embedding it again. Besides the indexer's events, `on_event` receives three of our own:

- `lost`: a watched root disappeared (deleted, moved, unmounted); it is no longer watched and its sounds stay in
  the index, since an unmounted drive is not a deletion.
- `found`: a lost root is back; it is watched again and rescanned.
- `rescan`: the kernel's event queue overflowed, so events were lost; the root is compared with the index in full.
"""

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import apsw
from watchdog.events import FileSystemEvent, FileSystemEventHandler

from audiofind.encoder import Encoder
from audiofind.errors import AudiofindError, IndexBusy, UsageError
from audiofind.formats import AUDIO_EXTS, extension
from audiofind.indexer import Event, Report, check_roots, sync
from audiofind.store import Index

log = logging.getLogger(__name__)

SETTLE_SECONDS = 1.0
BURST_WAIT = 10.0  # a settled path waits at most this long past settling for the rest of its burst
TICK = 0.1  # seconds between looks at pending paths
ROOT_CHECK = 1.0  # seconds between checks that every root is still there
BUSY_RETRY = (0.25, 8.0)  # first and longest wait before retrying a sync that found the database locked
# Watchdog reports an inotify queue overflow only through its log (then rebuilds its watches): we listen there.
OVERFLOW_LOGGER = "watchdog.observers"
IGNORED = {"opened", "closed_no_write"}  # our own reads of a file make these: never a change
LIMIT_HINT = (
    "The limit on watched folders may be reached (on Linux raise fs.inotify.max_user_watches), or use --polling."
)


@dataclass
class _Pending:
    since: float  # monotonic time of the last event or size/mtime change
    sig: tuple[int, int] | None  # (size, mtime_ns), None when the path does not exist


class _Collector(FileSystemEventHandler):
    """Runs on watchdog's thread: turns each relevant event into a tuple of paths on the queue, nothing more."""

    def __init__(self, q: queue.SimpleQueue, relevant: Callable[[str, bool], bool]) -> None:
        self.q = q
        self.relevant = relevant

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in IGNORED or (event.is_directory and event.event_type in ("modified", "attrib")):
            return
        paths = [os.fsdecode(p) for p in (event.src_path, event.dest_path) if p]
        paths = [p for p in paths if self.relevant(p, event.is_directory)]
        if paths:
            self.q.put(("change", tuple(paths)))  # two paths: the ends of one move, to be synced together


class _OverflowListener(logging.Handler):
    """Turns watchdog's 'queue overflowed' log records into rescan requests (a path when the record names one)."""

    def __init__(self, q: queue.SimpleQueue) -> None:
        super().__init__(logging.WARNING)
        self.q = q

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" not in str(record.msg).lower():
            return
        args = record.args if isinstance(record.args, tuple) else ()
        named = [os.fsdecode(a) for a in args if isinstance(a, bytes | str)]
        self.q.put(("overflow", tuple(named)))


def watch(
    index: Index,
    encoder: Encoder,
    roots: Iterable[Path],
    *,
    settle: float = SETTLE_SECONDS,
    polling: bool = False,
    exts: frozenset[str] = AUDIO_EXTS,
    on_event: Callable[[Event], None] | None = None,
    stop: threading.Event,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Sync the roots, then keep the index in step with every change under them until `stop` is set."""
    if settle < 0:
        raise UsageError(f"--settle must be zero or more seconds, got {settle:g}.")
    roots = check_roots(roots)
    w = _Watcher(index, encoder, roots, settle, polling, exts, on_event or (lambda e: None), stop)
    w.run(on_ready)


class _Watcher:
    """The state of one watch session; lives on the caller's thread except for the queue it reads."""

    def __init__(self, index: Index, encoder: Encoder, roots: list[Path], settle: float, polling: bool,
                 exts: frozenset[str], emit: Callable[[Event], None], stop: threading.Event) -> None:  # fmt: skip
        self.index, self.encoder, self.roots, self.settle = index, encoder, roots, settle
        self.exts, self.emit, self.stop = exts, emit, stop
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.pending: dict[str, _Pending] = {}
        self.links: dict[str, set[str]] = {}  # the other end of each pending move
        self.watches: dict[Path, object] = {}  # live root -> its watchdog watch
        self.identity: dict[Path, tuple[int, int]] = {}  # live root -> (st_dev, st_ino) when scheduled
        self.lost: set[Path] = set()
        self.retry_at = 0.0
        self.backoff = BUSY_RETRY[0]
        self.handler = _Collector(self.q, self._relevant)
        if polling:
            from watchdog.observers.polling import PollingObserver

            # The poll interval follows settle: no point looking more often than a change can settle.
            self.observer = PollingObserver(timeout=min(max(settle, 0.2), 1.0))
        else:
            from watchdog.observers import Observer

            try:
                self.observer = Observer()
            except OSError as e:  # inotify: too many instances (fs.inotify.max_user_instances)
                raise AudiofindError(f"Cannot watch folders: {e.strerror or e}. {LIMIT_HINT}") from e

    def run(self, on_ready: Callable[[], None] | None) -> None:
        """Start watching before the first sync, so nothing that changes during it is missed."""
        listener = _OverflowListener(self.q)
        logging.getLogger(OVERFLOW_LOGGER).addHandler(listener)
        self.observer.start()
        try:
            for root in self.roots:  # after start, so a root that cannot be watched raises here, named
                try:
                    self._schedule(root)
                except OSError as e:
                    raise AudiofindError(f"Cannot watch {root}: {e.strerror or e}. {LIMIT_HINT}") from e
            self._first_sync()
            log.info("watching %s", ", ".join(map(str, self.roots)))
            if on_ready is not None:
                on_ready()
            next_root_check = time.monotonic() + ROOT_CHECK
            while not self.stop.is_set():
                self._collect(TICK)
                now = time.monotonic()
                if now >= next_root_check:
                    self._check_roots()
                    next_root_check = now + ROOT_CHECK
                self._flush_settled(now)
        finally:
            logging.getLogger(OVERFLOW_LOGGER).removeHandler(listener)
            self.observer.stop()
            self.observer.join()

    # Events in.

    def _relevant(self, path: str, is_dir: bool) -> bool:
        """Audio files and folders under a root, minus hidden names (what `walk` would visit)."""
        root = self._root_of(path)
        if root is None:
            return False
        rel = os.path.relpath(path, root)
        if rel != "." and any(part.startswith(".") for part in Path(rel).parts):
            return False
        return is_dir or extension(path) in self.exts

    def _root_of(self, path: str) -> Path | None:
        for root in self.roots:
            r = str(root)
            if path == r or path.startswith(r.rstrip(os.sep) + os.sep):
                return root
        return None

    def _collect(self, timeout: float) -> None:
        """Wait up to timeout for messages from watchdog, then take all that are queued."""
        try:
            msgs = [self.q.get(timeout=timeout)]
        except queue.Empty:
            return
        while True:
            try:
                msgs.append(self.q.get_nowait())
            except queue.Empty:
                break
        now = time.monotonic()
        for kind, paths in msgs:
            if kind == "change":
                for p in paths:
                    self.pending[p] = _Pending(now, _signature(p))
                    if Path(p) in self.identity:  # an event on a root itself: deleted or replaced?
                        self._check_roots()
                if len(paths) == 2:
                    self.links.setdefault(paths[0], set()).add(paths[1])
                    self.links.setdefault(paths[1], set()).add(paths[0])
            elif kind == "overflow":
                named = [r for r in self.watches if str(r) in paths]
                for root in named or list(self.watches):  # unnamed: all our watches share the lost queue
                    if str(root) in self.pending:  # watchdog logs twice per overflow: report it once
                        continue
                    log.info("events were lost under %s; rescanning it", root)
                    self.emit(Event("rescan", str(root), reason="The file-system event queue overflowed."))
                    self.pending[str(root)] = _Pending(now, _signature(str(root)))

    # Roots coming and going.

    def _schedule(self, root: Path) -> None:
        st = os.stat(root)
        self.watches[root] = self.observer.schedule(self.handler, str(root), recursive=True)
        self.identity[root] = (st.st_dev, st.st_ino)

    def _check_roots(self) -> None:
        """Report roots that vanished (or were replaced) and stop watching them; watch again those that are back."""
        for root in list(self.watches):
            try:
                st = os.stat(root)
                same = (st.st_dev, st.st_ino) == self.identity[root] and root.is_dir()
            except OSError:
                same = False
            if same:
                continue
            with contextlib.suppress(KeyError):  # watchdog may have dropped it already
                self.observer.unschedule(self.watches.pop(root))
            del self.identity[root]
            self.lost.add(root)
            for p in [p for p in self.pending if self._root_of(p) == root]:
                self._forget(p)
            log.info("%s disappeared; no longer watching it", root)
            self.emit(Event("lost", str(root), reason="The folder disappeared; its sounds stay in the index."))
        for root in sorted(self.lost):
            if not root.is_dir():
                continue
            try:
                self._schedule(root)
            except OSError as e:  # gone again, or not readable yet
                log.debug("cannot watch %s yet: %s", root, e)
                continue
            self.lost.discard(root)
            self.emit(Event("found", str(root)))
            self.pending[str(root)] = _Pending(time.monotonic(), None)  # whatever happened while away

    # Settled paths out.

    def _flush_settled(self, now: float) -> None:
        """Sync the settled paths together once the whole burst has settled (or a settled path waited too long)."""
        for p, entry in self.pending.items():
            sig = _signature(p)
            if sig != entry.sig:
                entry.sig, entry.since = sig, now
        ready = {p for p, e in self.pending.items() if now - e.since >= self.settle}
        changed = True
        while changed:  # both ends of a move go together, or neither does
            changed = False
            for p in list(ready):
                if any(o in self.pending and o not in ready for o in self.links.get(p, ())):
                    ready.discard(p)
                    changed = True
        if not ready or now < self.retry_at:
            return
        oldest = min(self.pending[p].since for p in ready)
        if len(ready) < len(self.pending) and now - oldest < self.settle + BURST_WAIT:
            return
        live = [r for r in self.roots if r in self.watches]
        only = sorted(p for p in ready if self._root_of(p) in live)
        roots = [r for r in live if any(self._root_of(p) == r for p in only)]
        if only and self._sync(roots, [Path(p) for p in only]) is None:
            return  # busy or a root vanished: keep them pending and try again
        for p in ready:
            self._forget(p)

    def _forget(self, path: str) -> None:
        self.pending.pop(path, None)
        for other in self.links.pop(path, set()):
            self.links.get(other, set()).discard(path)
            if not self.links.get(other):
                self.links.pop(other, None)

    def _first_sync(self) -> None:
        """Everything under the roots, as `index` does; retried while the database is busy, until done or stopped."""
        while self._sync([r for r in self.roots if r in self.watches], None) is None and not self.stop.is_set():
            self.stop.wait(max(0.0, self.retry_at - time.monotonic()))

    def _sync(self, roots: list[Path], only: list[Path] | None) -> Report | None:
        """One sync call; None (and a later retry time) when the database was busy or a root just vanished."""
        try:
            report = sync(self.index, self.encoder, roots, exts=self.exts, only=only, on_event=self.emit,
                          stop=self.stop)  # fmt: skip
        except (IndexBusy, apsw.BusyError) as e:
            # A moment of contention is routine; only one that lasts deserves a warning.
            level = logging.WARNING if self.backoff >= BUSY_RETRY[1] else logging.INFO
            log.log(level, "the index is busy (%s); retrying in %.2g s", e, self.backoff)
            self.retry_at = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, BUSY_RETRY[1])
            return None
        except UsageError:  # sync found a root that is no longer a folder
            if all(r.is_dir() for r in roots):
                raise
            self._check_roots()
            return None
        self.backoff = BUSY_RETRY[0]
        return report


def _signature(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns): a file still being written changes it; None when the path is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
