"""Decoding ahead of the model: threads decode files into windows (PyAV releases the GIL) through a bounded queue,
so the model never waits for the disk and memory stays bounded for a file of any length. Run here by the Pipeline,
and by a cluster's decoding workers (library/workers.py), which need no torch."""

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from audiofind.audio import decode
from audiofind.audio import fingerprint as fingerprints
from audiofind.errors import DecodeError

log = logging.getLogger(__name__)

QUEUE_WINDOWS = 16  # decoded windows waiting for the model: bounds memory whatever the file length


@dataclass
class Work:
    """A file to embed, as the walk saw it."""

    path: str
    root: str
    size: int
    mtime_ns: int
    hash: str = ""
    copies: list["Work"] = field(default_factory=list)  # same content found in this run: stored once it is done


# What decode_ahead yields for each file: start (its AudioInfo), window (a decode.Window)..., then end or error.
Message = (
    tuple[Literal["start"], Work, decode.AudioInfo]
    | tuple[Literal["window"], Work, decode.Window]
    | tuple[Literal["end"], Work, bytes | None]
    | tuple[Literal["error"], Work, BaseException]
)


def head_fingerprint(path: Path) -> bytes:
    """The fingerprint of a file's first minute decoded at the fingerprint's own rate: for a model that takes another
    rate (CLAP's 48 kHz), whose windows cannot feed it. Decoding a minute again costs little beside the model."""
    samples = decode.load_audio(path, max_seconds=fingerprints.MAX_SECONDS, rate=fingerprints.SAMPLE_RATE)
    return fingerprints.fingerprint(samples).to_bytes()


def decode_ahead(
    works: list[Work],
    window: float,
    hop: float,
    stop: threading.Event | None,
    decoders: int = 1,
    ahead: int = QUEUE_WINDOWS,
    rate: int = decode.SAMPLE_RATE,
) -> Iterator[Message]:
    """(kind, work, payload) messages: start (AudioInfo), window (a decode.Window at `rate`, the encoder's)..., then
    end or error (exception).

    Messages of different files may interleave when several threads decode. Any exception while decoding one file
    becomes that file's error message; the thread goes on with the next file.
    """
    q: queue.Queue[Message | tuple[Literal["done"], None, None]] = queue.Queue(maxsize=ahead)  # done: a thread ended
    todo: queue.SimpleQueue[Work] = queue.SimpleQueue()
    for work in works:
        todo.put(work)
    finished = threading.Event()

    def produce() -> None:
        try:
            while not finished.is_set() and not (stop is not None and stop.is_set()):
                try:
                    work = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    q.put(("start", work, decode.probe(Path(work.path))))
                    for w in decode.iter_windows(Path(work.path), window, hop, rate):
                        if finished.is_set():
                            return
                        q.put(("window", work, w))
                    q.put(
                        ("end", work, head_fingerprint(Path(work.path)) if rate != fingerprints.SAMPLE_RATE else None)
                    )
                except Exception as e:
                    if not isinstance(e, DecodeError):
                        log.debug("decoding %s failed", work.path, exc_info=e)
                    q.put(("error", work, e))
        finally:
            q.put(("done", None, None))

    n = max(1, min(decoders, len(works)))
    threads = [threading.Thread(target=produce, name=f"audiofind-decode-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    started: set[str] = set()
    try:
        running = n
        while running:
            msg = q.get()
            if msg[0] == "done":
                running -= 1
                continue
            work = msg[1]
            if msg[0] == "error" and work.path not in started:  # failed before its start message (probe)
                yield "start", work, decode.AudioInfo(0.0, 0, 0, "")
            started.add(work.path)
            yield msg
    finally:
        finished.set()  # the consumer stopped early: let the producers run out
        while any(t.is_alive() for t in threads):
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.1)
