"""Watching in tests: watch() on a thread of its own with every event it reports, and the waits around it."""

import threading
import time
from collections.abc import Callable
from pathlib import Path

import audiogen
import pytest

from audiofind.library.sync import Event, prepare
from audiofind.library.watch import watch
from audiofind.model.encoder import Encoder
from audiofind.store.sqlite.store import SqliteStore

SETTLE = 0.2
# Seconds any awaited result may take before the test fails. Generous: the machine may be busy, and a wait ends as
# soon as its result is there, so a long deadline costs nothing when things work.
DEADLINE = 120.0


def wait_until(check: Callable[[], object], what: str, deadline: float = DEADLINE) -> object:
    """Poll until check() is truthy; fail naming `what` after the deadline."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if result := check():
            return result
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def tone(path: Path, freq: float, seconds: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return audiogen.write_audio(path, audiogen.sine(freq, seconds))


class Watching:
    """watch() on a thread of its own, with every event it reports; stops and re-raises its error on exit."""

    def __init__(self, db: Path, encoder: Encoder, roots: list[Path], **options) -> None:
        self.db, self.encoder, self.roots, self.options = db, encoder, roots, {"settle": SETTLE, **options}
        self.events: list[Event] = []
        self.stop, self.ready = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def __enter__(self) -> "Watching":
        self.index = SqliteStore.open(self.db)
        prepare(self.index, self.encoder)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.ready.is_set() or self.error, "the first sync")
        self.initial = len(self.events)  # what the first sync reported; the rest comes from watching
        return self

    def _run(self) -> None:
        try:
            watch(self.index, self.encoder, self.roots, on_event=self.events.append, stop=self.stop,
                  on_ready=self.ready.set, **self.options)  # fmt: skip
        except BaseException as e:  # handed to the test thread
            self.error = e

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)
        self.index.close()
        assert not self.thread.is_alive(), "watch did not stop"
        if self.error:
            raise self.error

    def of(self, kind: str, path: Path | None = None) -> list[Event]:
        return [e for e in list(self.events) if e.event == kind and (path is None or e.path == str(path))]

    def wait(self, kind: str, path: Path | None = None, n: int = 1) -> list[Event]:
        return wait_until(lambda: len(self.of(kind, path)) >= n and self.of(kind, path), f"{n} {kind} {path or ''}")
