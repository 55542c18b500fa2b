"""Where watch's changes come from: the OS's file-system events through watchdog, or our own polling.

Both put ("change", paths) on watch's queue, one tuple per change (both ends of a move together), each path as the
index stores it, and both are scheduled on folders the index walks (`schedule(folder)` returns what
`unschedule` takes).

- `OSObserver`: inotify, FSEvents or ReadDirectoryChangesW. These stop at symlinks, so watch schedules the real
  folder behind each symlinked one too; the paths of its events are mapped back under the link. Queue overflows,
  which watchdog reports only in its log, come as ("overflow", paths named).
- `Poller` (`--polling`, for file systems without events): each root compared snapshot to snapshot. Watchdog's
  PollingObserver cannot be used: its snapshot follows symlinked folders without loop detection, so a folder
  holding a link to itself is walked until memory runs out, on the thread that scheduled it. Ours walk as `index`
  does (`folders.walk_folders`: each folder once, hidden names skipped), hold only folders and audio files, so they
  are bounded by the library's size, and give up as soon as watching stops.
"""

import contextlib
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable
from typing import cast

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import ObservedWatch

from audiofind.library.walk import FolderId, audio_files, walk_folders

# Watchdog reports an inotify queue overflow only through its log (then rebuilds its watches): we listen there.
OVERFLOW_LOGGER = "watchdog.observers"
IGNORED = {"opened", "closed_no_write"}  # our own reads of a file make these: never a change
Watch = object  # what an observer's schedule returns and its unschedule takes back; opaque to the watcher
Messages = queue.Queue[tuple[str, tuple[str, ...]]]  # ("change" or "overflow", paths)


class OSObserver:
    """Watchdog's observer for this OS, scheduled recursively on the real folder behind each folder given."""

    follows_links = False

    def __init__(self, q: Messages) -> None:
        from watchdog.observers import Observer

        self.q = q
        self.observer = Observer()  # OSError: too many inotify instances
        self.listener = _OverflowListener(q)

    def schedule(self, walked: str) -> Watch:
        """Watch a folder and all under it; events come back under `walked`, whatever symlinks lead there."""
        real = os.path.realpath(walked)
        return self.observer.schedule(_Collector(self.q, real, walked), real, recursive=True)

    def unschedule(self, watch: Watch) -> None:
        """Stop watching (a folder already gone is fine)."""
        with contextlib.suppress(KeyError, OSError):  # watchdog may have dropped it already
            self.observer.unschedule(cast(ObservedWatch, watch))  # one that schedule returned

    def start(self) -> None:
        """Start the observer's threads."""
        logging.getLogger(OVERFLOW_LOGGER).addHandler(self.listener)
        self.observer.start()

    def stop(self) -> None:
        """Ask the observer's threads to end."""
        logging.getLogger(OVERFLOW_LOGGER).removeHandler(self.listener)
        self.observer.stop()

    def join(self) -> None:
        """Wait for the observer's threads to end."""
        if self.observer.is_alive():
            self.observer.join()


class _Collector(FileSystemEventHandler):
    """Runs on watchdog's thread: puts the paths of each event on the queue, nothing more."""

    def __init__(self, q: Messages, real: str, walked: str) -> None:
        self.q, self.real, self.walked = q, real, walked

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in IGNORED or (event.is_directory and event.event_type in ("modified", "attrib")):
            return
        paths = tuple(self._walked(os.fsdecode(p)) for p in (event.src_path, event.dest_path) if p)
        self.q.put(("change", paths))

    def _walked(self, path: str) -> str:
        if self.real == self.walked or os.path.commonpath([path, self.real]) != self.real:
            return path
        return os.path.normpath(os.path.join(self.walked, os.path.relpath(path, self.real)))


class _OverflowListener(logging.Handler):
    """Turns watchdog's 'queue overflowed' log records into rescan requests (a path when the record names one)."""

    def __init__(self, q: Messages) -> None:
        super().__init__(logging.WARNING)
        self.q = q

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" not in str(record.msg).lower():
            return
        args = record.args if isinstance(record.args, tuple) else ()
        named = [os.fsdecode(a) for a in args if isinstance(a, bytes | str)]
        self.q.put(("overflow", tuple(named)))


Snapshot = dict[str, tuple[int, int, int, int, bool]]  # path -> (st_dev, st_ino, size, mtime_ns, is_folder)


def snapshot(root: str, exts: frozenset[str], stopped: Callable[[], bool] = lambda: False) -> Snapshot:
    """The folders and audio files under root, as the index walks them."""
    out: Snapshot = {}
    for folder, st, names in walk_folders(root, {}, stopped):
        out[folder] = (st.st_dev, st.st_ino, 0, 0, True)  # a folder's own size and mtime change with every entry
        for path, fst in audio_files(folder, names, exts):
            out[path] = (fst.st_dev, fst.st_ino, fst.st_size, fst.st_mtime_ns, False)
    return out


def changes(old: Snapshot, new: Snapshot) -> list[tuple[str, ...]]:
    """What changed from old to new: (path,) for a path created, deleted or modified, (old, new) for a move."""
    gone = {old[p][:2]: p for p in sorted(old.keys() - new.keys())}
    out: list[tuple[str, ...]] = []
    for path in sorted(new.keys() - old.keys()):  # parents before what they hold
        source = gone.get(new[path][:2])
        if source is not None and old[source][4] == new[path][4]:
            del gone[new[path][:2]]
            out.append((source, path))
        else:
            out.append((path,))
    out += [(p,) for p in sorted(gone.values())]
    out += [(p,) for p in sorted(old.keys() & new.keys()) if old[p] != new[p]]
    return out


class Poller:
    """A thread comparing a snapshot of each scheduled root with the last every `interval` seconds.

    A root that is gone or replaced is skipped, never reported as emptied: the watcher notices and reports it lost.
    """

    follows_links = True  # its snapshots walk through symlinked folders

    def __init__(self, q: Messages, interval: float, exts: frozenset[str],
                 stopped: Callable[[], bool]) -> None:  # fmt: skip
        self.q, self.interval, self.exts, self.stopped = q, interval, exts, stopped
        self._lock = threading.Lock()
        self._roots: dict[str, tuple[FolderId, Snapshot]] = {}
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audiofind-poll", daemon=True)

    def schedule(self, root: str) -> Watch:
        """Start following root, from a snapshot taken now; returns what unschedule takes (root itself)."""
        st = os.stat(root)
        snap = snapshot(root, self.exts, self._stopping)
        with self._lock:
            self._roots[root] = ((st.st_dev, st.st_ino), snap)
        return root

    def unschedule(self, watch: Watch) -> None:
        """Stop following the root that schedule returned."""
        with self._lock:
            self._roots.pop(cast(str, watch), None)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end, even in the middle of a snapshot."""
        self._halt.set()

    def join(self) -> None:
        """Wait for the thread to end."""
        if self._thread.is_alive():
            self._thread.join()

    def _stopping(self) -> bool:
        return self._halt.is_set() or self.stopped()

    def _run(self) -> None:
        while not self._halt.wait(self.interval):
            with self._lock:
                roots = dict(self._roots)
            for root, (identity, old) in roots.items():
                if not _same_folder(root, identity):
                    continue
                new = snapshot(root, self.exts, self._stopping)
                if self._stopping():
                    return
                with self._lock:
                    if self._roots.get(root, (None,))[0] != identity or not _same_folder(root, identity):
                        continue  # unscheduled, or lost while we looked: this snapshot proves nothing
                    self._roots[root] = (identity, new)
                for paths in changes(old, new):
                    self.q.put(("change", paths))


def _same_folder(path: str, identity: FolderId) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == identity
