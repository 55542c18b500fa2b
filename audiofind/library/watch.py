"""Following folders as they change: sync once, then feed settled file-system changes back through `sync`.

Watchdog's threads only collect paths; `settle.Settler` decides when a path has settled (no event and the same size
and mtime for `settle` seconds), and this loop hands every settled path to one `sync.sync(..., only=paths)` call. The old and
the new path of a move land in the same call, so `sync` recognises the content and moves the row instead of
embedding it again. Besides the indexer's events, `on_event` receives three of our own:

- `lost`: a watched root disappeared (deleted, moved, unmounted); it is no longer watched and its sounds stay in
  the index, since an unmounted drive is not a deletion.
- `found`: a lost root is back; it is watched again and rescanned.
- `rescan`: the kernel's event queue overflowed, so events were lost; the root is compared with the index in full.

Symlinked folders are followed as `index` walks them, each folder once (`folders.Folders` keeps that map): OS
watches do not follow symlinks, so the real folder behind each one is watched too and its events are mapped back to
the path the index stores. A file that sync finds changing while it reads it (`changing`) waits to settle again, and
a failure is reported only once the failed file has stayed unchanged for `settle` seconds more: a recorder still
writing is waited for, not reported as broken.
"""

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from audiofind.audio.formats import AUDIO_EXTS
from audiofind.errors import AudiofindError, IndexBusy, UsageError
from audiofind.library.folders import Folders
from audiofind.library.observers import Messages, OSObserver, Poller, Watch
from audiofind.library.pipeline import Remote
from audiofind.library.settle import Settler
from audiofind.library.sync import Event, Report, check_roots, sync
from audiofind.model.embedder import Embedder
from audiofind.store import Store

log = logging.getLogger(__name__)

SETTLE_SECONDS = 1.0
BURST_WAIT = 10.0  # a settled path waits at most this long past settling for the rest of its burst
TICK = 0.1  # seconds between looks at pending paths
ROOT_CHECK = 1.0  # seconds between checks that every root is still there
BUSY_RETRY = (0.25, 8.0)  # first and longest wait before retrying a sync that found the database locked
LIMIT_HINT = (
    "The limit on watched folders may be reached (on Linux raise fs.inotify.max_user_watches), or use --polling."
)


def watch(
    index: Store,
    encoder: Embedder,
    roots: Iterable[Path],
    *,
    settle: float = SETTLE_SECONDS,
    polling: bool = False,
    exts: frozenset[str] = AUDIO_EXTS,
    on_event: Callable[[Event], None] | None = None,
    stop: threading.Event,
    on_ready: Callable[[], None] | None = None,
    cluster: Remote | None = None,
) -> None:
    """Sync the roots, then keep the index in step with every change under them until `stop` is set (every sync
    embedding on `cluster` if given)."""
    if settle < 0:
        raise UsageError(f"--settle must be zero or more seconds, got {settle:g}.")
    roots = check_roots(roots)
    w = Watcher(index, encoder, roots, settle, polling, exts, on_event or (lambda e: None), stop, cluster)
    w.run(on_ready)


class Watcher:
    """One watch session: what is watched, and the loop that feeds settled changes to sync. It lives on the caller's
    thread but for the observer's queue; tests drive it step by step with start(), collect() and tick()."""

    def __init__(self, index: Store, encoder: Embedder, roots: list[Path], settle: float, polling: bool,
                 exts: frozenset[str], emit: Callable[[Event], None], stop: threading.Event,
                 cluster: Remote | None = None) -> None:  # fmt: skip
        self.index, self.encoder, self.roots, self.settle, self.cluster = index, encoder, roots, settle, cluster
        self.exts, self.emit, self.stop = exts, emit, stop
        self.clock: Callable[[], float] = time.monotonic  # tests drive a fake one
        # Not a SimpleQueue: on Python 3.11 its get(timeout) blocks forever when a signal handler (Ctrl-C, SIGTERM)
        # runs past the timeout's end; Queue waits on a lock, which recomputes its deadline correctly.
        self.q: Messages = queue.Queue()
        self.settler = Settler(settle, BURST_WAIT)
        self.unsettled: set[str] = set()  # files sync found changing while it read them: pending again after it
        self.folders = Folders(roots, exts, stopped=stop.is_set)
        self.watches: dict[Path, Watch] = {}  # live root -> its watch
        self.identity: dict[Path, tuple[int, int]] = {}  # live root -> (st_dev, st_ino) when scheduled
        self.followed: dict[str, tuple[str, Watch]] = {}  # symlinked folder -> (its real folder, the watch there)
        self.lost: set[Path] = set()
        self.retry_at = 0.0
        self.backoff = BUSY_RETRY[0]
        # The poll interval follows settle: no point looking more often than a change can settle.
        interval = min(max(settle, 0.2), 1.0)
        try:
            self.observer = Poller(self.q, interval, exts, stop.is_set) if polling else OSObserver(self.q)
        except OSError as e:  # inotify: too many instances (fs.inotify.max_user_instances)
            raise AudiofindError(f"Cannot watch folders: {e.strerror or e}. {LIMIT_HINT}") from e

    def run(self, on_ready: Callable[[], None] | None) -> None:
        """Start watching before the first sync, so nothing that changes during it is missed."""
        self.observer.start()
        try:
            self.start()
            self._first_sync()
            if not self.stop.is_set():
                log.info("watching %s", ", ".join(map(str, self.roots)))
                if on_ready is not None:
                    on_ready()
            next_root_check = self.clock() + ROOT_CHECK
            while not self.stop.is_set():
                self.collect(TICK)
                now = self.clock()
                if now >= next_root_check:
                    self._check_roots()
                    next_root_check = now + ROOT_CHECK
                self.tick(now)
            self._report_held(final=True)
        finally:
            self.observer.stop()
            self.observer.join()

    def start(self) -> None:
        """Watch every root (a root that cannot be watched raises here, named), then the folders symlinks lead to."""
        for root in self.roots:
            try:
                self._schedule(root)
            except OSError as e:
                raise AudiofindError(f"Cannot watch {root}: {e.strerror or e}. {LIMIT_HINT}") from e
        self.folders.rebuild()
        self._follow_links()

    # Events in.

    def _root_of(self, path: str) -> Path | None:
        for root in self.roots:
            r = str(root)
            if path == r or path.startswith(r.rstrip(os.sep) + os.sep):
                return root
        return None

    def collect(self, timeout: float) -> None:
        """Wait up to timeout for messages from the observer, then take all that are queued."""
        try:
            msgs = [self.q.get(timeout=timeout)]
        except queue.Empty:
            return
        while True:
            try:
                msgs.append(self.q.get_nowait())
            except queue.Empty:
                break
        now = self.clock()
        folders = self.folders.version
        for kind, paths in msgs:
            if kind == "change":
                kept = [p for p in paths if self._take(p, now)]
                if len(kept) == 2:
                    self.settler.moved(*kept)
            elif kind == "overflow":
                self._rescan(paths, now)
        if self.folders.version != folders:
            self._follow_links()

    def _take(self, path: str, now: float) -> bool:
        """Make a changed path pending if the index can hold it, keeping the walked folders in step."""
        root = self._root_of(path)
        if root is None or root not in self.watches:
            return False
        rel = os.path.relpath(path, root)
        if rel != "." and any(part.startswith(".") for part in Path(rel).parts):
            return False  # hidden, as walk skips it
        if Path(path) in self.identity:  # an event on a root itself: deleted or replaced?
            self._check_roots()
            if root not in self.watches:
                return False
        was_folder = path in self.folders.dirs
        self.folders.update(path)
        if not self.folders.holds(path, was_folder):
            return False  # not audio, or a folder the walk reaches by another path (a symlink loop, say)
        self.settler.changed(path, now)
        return True

    def _rescan(self, named: tuple[str, ...], now: float) -> None:
        """Events were lost: compare the roots named (all when none is) with the index in full."""
        real = {os.path.realpath(r): r for r in self.watches}
        real |= {r: root for w, (r, _) in self.followed.items() if (root := self._root_of(w)) is not None}
        roots = {real[p] for p in named if real.get(p) in self.watches}
        for root in sorted(roots) or list(self.watches):  # unnamed: all our watches share the lost queue
            if str(root) in self.settler.pending:  # watchdog logs twice per overflow: report it once
                continue
            log.info("events were lost under %s; rescanning it", root)
            self.emit(Event("rescan", str(root), reason="The file-system event queue overflowed."))
            self.settler.changed(str(root), now)
        self.folders.rebuild()
        self._follow_links()

    # What is watched.

    def _follow_links(self) -> None:
        """Watch the real folder behind each symlinked folder the walk visits: OS watches stop at symlinks."""
        if self.observer.follows_links:
            return
        want = {w: r for w, r in self.folders.links().items() if self._root_of(w) in self.watches}
        for walked, (real, watch) in list(self.followed.items()):
            if want.get(walked) != real:
                self.observer.unschedule(watch)
                del self.followed[walked]
        for walked, real in want.items():
            if walked in self.followed:
                continue
            try:
                self.followed[walked] = (real, self.observer.schedule(walked))
            except OSError as e:  # tried again at the next folder change
                log.warning("cannot watch %s (the folder %s links to): %s", walked, real, e.strerror or e)

    def _schedule(self, root: Path) -> None:
        st = os.stat(root)
        self.watches[root] = self.observer.schedule(str(root))
        self.identity[root] = (st.st_dev, st.st_ino)

    def _unwatch(self, root: Path) -> None:
        """Stop watching root, forgetting what was pending under it."""
        self.observer.unschedule(self.watches.pop(root))
        del self.identity[root]
        self.folders.drop(str(root))
        self._follow_links()
        for p in [p for p in self.settler.pending if self._root_of(p) == root]:
            self.settler.forget(p)

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
            self._unwatch(root)
            self.lost.add(root)
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
            self.folders.update(str(root))
            self._follow_links()
            self.emit(Event("found", str(root)))
            self.settler.changed(str(root), self.clock(), sig=None)  # whatever happened while away

    # Settled paths out.

    def tick(self, now: float) -> None:
        """Sync the settled paths together once the whole burst has settled (or a settled path waited too long)."""
        self._report_held()
        ready = self.settler.ready(now)
        if not ready or now < self.retry_at:
            return
        live = [r for r in self.roots if r in self.watches]
        only = self._scope(p for p in ready if self._root_of(p) in live)
        roots = [r for r in live if any(self._root_of(p) == r for p in only)]
        if only and self._sync(roots, [Path(p) for p in only]) is None:
            return  # busy or a root vanished: keep them pending and try again
        for p in ready:
            self.settler.forget(p)
        self._pend_unsettled()

    def _scope(self, paths: Iterable[str]) -> list[str]:
        """What sync is given for settled paths: each path, or its whole root for a folder holding a symlink loop.

        Sync walks a folder on its own, so a link in it back up the tree (or to a folder indexed by another path)
        would be followed and the library stored again under it; from the root, the walk is the one `index` does.
        """
        scope = {str(self._root_of(p)) if p in self.folders.dirs and self.folders.aliased(p) else p for p in paths}
        whole = {Path(p) for p in scope if Path(p) in self.watches}  # roots synced in full: nothing else under them
        return sorted(p for p in scope if Path(p) in whole or self._root_of(p) not in whole)

    def _first_sync(self) -> None:
        """Everything under the roots, as `index` does; retried while the database is busy, until done or stopped."""
        while not self.stop.is_set() and self._sync([r for r in self.roots if r in self.watches], None) is None:
            self._pause(self.retry_at - self.clock())
        self._pend_unsettled()

    def _pause(self, seconds: float) -> None:
        """Sleep up to seconds, ending early once stopped.

        Not stop.wait(): the signal handlers call stop.set(), which deadlocks if the signal lands while this
        thread holds the Event's (non-reentrant) lock inside wait().
        """
        end = time.monotonic() + seconds
        while not self.stop.is_set() and (left := end - time.monotonic()) > 0:
            time.sleep(min(TICK, left))

    def _sync(self, roots: list[Path], only: list[Path] | None) -> Report | None:
        """One sync call; None (and a later retry time) when the database was busy or a root just vanished."""
        try:
            report = sync(self.index, self.encoder, roots, exts=self.exts, only=only, on_event=self._on_sync_event,
                          stop=self.stop, cluster=self.cluster)  # fmt: skip
        except IndexBusy as e:
            # A moment of contention is routine; only one that lasts deserves a warning.
            level = logging.WARNING if self.backoff >= BUSY_RETRY[1] else logging.INFO
            log.log(level, "the index is busy (%s); retrying in %.2g s", e, self.backoff)
            self.retry_at = self.clock() + self.backoff
            self.backoff = min(self.backoff * 2, BUSY_RETRY[1])
            return None
        except UsageError:  # sync found a root that is no longer a folder
            if all(r.is_dir() for r in roots):
                raise
            self._check_roots()
            return None
        self.backoff = BUSY_RETRY[0]
        return report

    # A file still being written.

    def _on_sync_event(self, e: Event) -> None:
        """Sync's events on their way out: a file read while it changed, or one that failed, may still be written."""
        if e.event == "changing":
            log.debug("%s changed while being read; waiting for it to settle", e.path)
            self.unsettled.add(e.path)
        elif e.event == "failed":
            self.settler.hold(e, self.clock())
        elif e.event == "relocated":  # a moved root: its files arriving one by one must not be indexed as copies
            root = Path(e.path)
            if root in self.watches:
                self._unwatch(root)
            self.roots = [r for r in self.roots if r != root]
            log.info("%s holds a moved root; no longer watching it (audiofind roots move re-points it)", root)
            self.emit(e)
        else:
            self.settler.release(e.path)
            self.emit(e)

    def _pend_unsettled(self) -> None:
        """Files sync found changing wait to settle again (after the sync, which forgets the paths it was given)."""
        self.settler.again(self.unsettled, self.clock())
        self.unsettled.clear()

    def _report_held(self, final: bool = False) -> None:
        """Report the failures whose file stayed unchanged for `settle`; one that changed is tried again instead."""
        for event in self.settler.settled_failures(self.clock(), final):
            self.emit(event)
