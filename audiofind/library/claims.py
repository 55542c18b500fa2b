"""Embedding what a sync found new, when several writers may share the index (PostgreSQL): each content is claimed
before anything of it is read, so two writers never embed the same one.

1. The contents to embed are claimed a batch at a time (a server's lock table holds a few thousand claims in all);
   one another writer is embedding now is deferred, one that was stored meanwhile is a copy.
2. Only a claimed content's committed windows are read (Pipeline.start asks `partial_segments`), so a long recording
   another writer has half done is continued by whoever holds its claim, never by two.
3. A claim is given back once its content is committed or has failed (releasing twice is harmless).
4. After its own embedding, the writer waits for each deferred content in turn (holding no other claim, so two
   writers never wait on each other): stored by then, it is a copy; otherwise (that writer failed or died) it is
   embedded here.
On SQLite one writer holds the index at a time: every claim is granted and the works run as one batch.
"""

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from audiofind.audio.tags import read_tags
from audiofind.library.decoding import Work
from audiofind.library.pipeline import Pipeline, Remote, reason_of
from audiofind.library.report import Event, Report
from audiofind.model.embedder import Embedder
from audiofind.store import FileRow, Store

log = logging.getLogger(__name__)

CLAIM_BATCH = 256  # contents claimed at a time by a writer that shares the index


def embed(
    index: Store,
    encoder: Embedder,
    works: list[Work],
    report: Report,
    emit: Callable[[Event], None],
    progress: Callable[[float, float], None] | None,
    stop: threading.Event | None,
    decoders: int | None,
    cluster: Remote | None = None,
) -> None:
    """Run the embedder over works (here, or on the cluster), each content under its claim, turning its outcomes
    into report counts and events."""
    bytes_total = sum(w.size for w in works)
    stopped = lambda: stop is not None and stop.is_set()

    def done(outcome: str, work: Work, segments: int, duration: float, reason: str | None) -> None:
        index.release(work.hash)  # committed, failed or changing: another writer may have it now
        if outcome == "embedded":
            report.embedded += 1
            report.segments += segments
            report.audio_seconds += duration  # the audio added, counted as status counts it: per file
            report.truncated += reason is not None
            emit(Event("embedded", work.path, reason=reason, segments=segments, duration=duration))
            for copy in work.copies:
                if add_copy(index, copy, report, emit):
                    report.audio_seconds += duration
        elif outcome == "changing":
            report.changing += 1 + len(work.copies)
            for w in (work, *work.copies):
                emit(Event("changing", w.path, reason=reason))
        else:
            for w in (work, *work.copies):
                fail(index, w, reason or "failed", report, emit)

    def seconds(audio: float, bytes_done: float) -> None:
        if progress:  # the share done is measured in bytes: known for every file before it is decoded
            progress(audio, min(1.0, bytes_done / bytes_total) if bytes_total else 0.0)

    if decoders is None:
        decoders = 1 if encoder.device.type == "cpu" else 4
    embedder = Pipeline(index, encoder, done, stop)

    def run(batch: list[Work]) -> None:
        try:
            if cluster is not None:
                cluster.run(embedder, batch, seconds)
            else:
                embedder.run(batch, decoders, seconds)
        finally:
            for w in batch:  # stopped or interrupted: what is not committed is anyone's again
                index.release(w.hash)

    size = CLAIM_BATCH if index.features.shared_writers else max(1, len(works))
    deferred: list[Work] = []
    for start in range(0, len(works), size):
        if stopped():
            break
        mine = []
        for work in works[start : start + size]:
            if not index.claim(work.hash):
                deferred.append(work)  # another writer is embedding it now
            elif index.features.shared_writers and index.has_audio(work.hash):
                index.release(work.hash)  # stored by another writer since it was sorted out
                _copies(index, work, report, emit)
            else:
                mine.append(work)
        run(mine)
    for work in deferred:
        if stopped():
            break
        log.info("waiting for another writer to finish %s", work.path)
        index.claim(work.hash, wait=True)
        if index.has_audio(work.hash):
            index.release(work.hash)
            _copies(index, work, report, emit)
        else:
            run([work])
    report.windows_kept, report.seconds_kept = embedder.unfinished()


def _copies(index: Store, work: Work, report: Report, emit: Callable[[Event], None]) -> None:
    for w in (work, *work.copies):
        add_copy(index, w, report, emit)


def add_copy(index: Store, work: Work, report: Report, emit: Callable[[Event], None]) -> bool:
    """A path whose content is already indexed: store the row, reusing the vectors; False if it failed."""
    try:
        tags = read_tags(Path(work.path))
    except Exception as e:
        fail(index, work, reason_of(e), report, emit)
        return False
    # dict(): FileRow.tags is a dict[str, str | list[str]], which (invariant) a dict[str, list[str]] is not
    index.add_file(FileRow(work.path, work.root, work.size, work.mtime_ns, work.hash, "ok", None, dict(tags)))
    report.reused += 1
    emit(Event("reused", work.path))
    return True


def fail(index: Store, work: Work, reason: str, report: Report, emit: Callable[[Event], None]) -> None:
    """Record that work could not be indexed, and why."""
    index.record_failure(work.path, work.root, work.size, work.mtime_ns, reason)
    report.failed += 1
    emit(Event("failed", work.path, reason=reason))
