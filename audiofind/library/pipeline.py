"""Embedding files into the index: decoding threads feed the model, and each file ends committed or failed.

Decoding runs ahead on other threads (library/decoding.py). A file's windows are committed as they are embedded, about
a minute of audio at a time, hidden from search until the file is complete: an interruption loses at most that much
and the next run continues inside the file. Anything that goes wrong with one file (a decoder error, any exception
while decoding, tagging or embedding it, NaN samples, a non-finite embedding) fails that file alone, with a
one-line reason; storage errors and interruptions stop the run, with everything committed so far kept.
"""

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from audiofind.audio import decode
from audiofind.audio import fingerprint as fingerprints
from audiofind.audio.fingerprint import MAX_SAMPLES, Fingerprinter
from audiofind.audio.tags import read_tags
from audiofind.errors import DecodeError
from audiofind.library.decoding import QUEUE_WINDOWS, Work, decode_ahead
from audiofind.library.walk import signature
from audiofind.store import AudioRow, FileRow, Store

if TYPE_CHECKING:  # decoding workers of a cluster import this module for decode_ahead, and need no torch
    from audiofind.model.embedder import Embedder

log = logging.getLogger(__name__)

# A batching encoder (a GPU's) sees pending windows of this many batches at once, gathered across files, so that
# windows of equal length (long recordings' 10 s windows, clips that share a length) meet and fill batches.
GATHER_BATCHES = 4
CHUNK_SECONDS = 60.0  # a long recording commits its windows about this much audio at a time
# A file whose decoded audio ends this much short of what its header declares is truncated (VBR estimates of MP3
# durations are off by a few percent; a file cut short misses seconds).
TRUNCATED_SECONDS, TRUNCATED_SHARE = 0.5, 0.05


Slot = list[np.ndarray | None]  # [a window's vector], None until the model has run on it


@dataclass
class _InFlight:
    """A file whose windows are arriving; `skip` leading windows were committed by an earlier, interrupted run."""

    work: Work
    info: decode.AudioInfo
    skip: int
    received: int = 0
    bounds: list[tuple[float, float]] = field(default_factory=list)  # windows not committed yet
    slots: list[list] = field(default_factory=list)  # one [vector or None] per window in bounds
    ended: bool = False
    failed: bool = False
    printer: Fingerprinter = field(default_factory=Fingerprinter)  # its acoustic fingerprint, fed as windows come
    fed: int = 0  # samples fed to the printer (windows overlap: only what is past this is new)
    printed: bytes | None = None  # its fingerprint, made where it was decoded (a cluster's worker)
    kept: int = 0  # windows this run committed ahead of the file's end (a long recording, a chunk at a time)
    kept_from: float | None = None  # where in the file this run's first committed window starts...
    kept_to: float = 0.0  # ...and where its last ends


def reason_of(e: BaseException) -> str:
    """The one-line reason a file failed: a decoder's own words, else the exception's class and message."""
    if isinstance(e, DecodeError):
        return e.reason
    return f"{type(e).__name__}: {e}".strip().rstrip(":")


def embed_windows(encoder: "Embedder", clips: Sequence[np.ndarray]) -> list[np.ndarray | Exception]:
    """A vector per clip from one model call (the encoder batches equal lengths); if that call raises, each clip
    alone, so that an exception belongs to the one clip (and file) that caused it."""
    try:
        return list(encoder.embed_audio(clips))
    except Exception as e:
        if len(clips) == 1:
            return [e]
    out: list[np.ndarray | Exception] = []
    for clip in clips:
        try:
            out.append(encoder.embed_audio([clip])[0])
        except Exception as e:
            out.append(e)
    return out


def _embedded(slots: list[Slot]) -> list[np.ndarray]:
    """The vectors in slots that are all filled: a window is committed only once the model has run on it."""
    vectors = [s[0] for s in slots if s[0] is not None]
    assert len(vectors) == len(slots), "a window was committed before the model ran on it"
    return vectors


class Remote(Protocol):
    """Somewhere else to decode and embed (library/cluster.py: a Ray cluster). `run` feeds the pipeline each file's
    start, windows (embedded) and end or error, in order, and returns when every work is done or the pipeline is
    stopped; the pipeline commits as in a local run."""

    def run(self, pipeline: "Pipeline", works: list[Work], progress: Callable[[float, float], None] | None) -> None:
        """Decode and embed works elsewhere, feeding pipeline."""
        ...


class Pipeline:
    """Embeds a list of files into an index, reporting through the callbacks; `run` returns when all are done."""

    def __init__(
        self,
        index: Store,
        encoder: "Embedder",
        on_done: Callable[[str, Work, int, float, str | None], None],
        stop: threading.Event | None = None,
    ) -> None:
        self.index, self.encoder, self.stop = index, encoder, stop
        self.on_done = on_done  # (outcome, work, segments, duration, reason): embedded | failed | changing
        self.files: dict[str, _InFlight] = {}
        self.finished: set[str] = set()  # committed, failed or changing: a message repeated for one of them is dropped
        self.batch: list[tuple[_InFlight, list, np.ndarray]] = []  # windows waiting for the model
        size = encoder.audio_batch
        self.gather = size * GATHER_BATCHES if size > 1 else 1  # the most windows that wait
        bound = index.model()
        assert bound is not None, "bind a model before embedding"
        self.window, self.hop = bound.window, bound.hop
        self.chunk = max(1, math.ceil(CHUNK_SECONDS / self.hop))  # windows a chunk: each adds about one hop of audio
        self.audio_seconds = 0.0
        self.bytes_done = 0  # of the files finished (committed, failed or changing)

    def unfinished(self) -> tuple[int, float]:
        """Windows (and seconds of audio) this run committed of files it did not finish: kept for the next run."""
        kept = [p for p in self.files.values() if p.kept]
        return sum(p.kept for p in kept), sum(p.kept_to - (p.kept_from or 0.0) for p in kept)

    def stopped(self) -> bool:
        """Whether the run was asked to stop (what is committed stays; the rest is done next time)."""
        return self.stop is not None and self.stop.is_set()

    def run(self, works: list[Work], decoders: int, progress: Callable[[float, float], None] | None = None) -> None:
        """Decode, embed and commit every work; returns early (keeping what is committed) once stop is set.

        progress gets (audio seconds embedded, bytes of the files done so far, counting in-flight files pro rata).
        """
        ahead = max(QUEUE_WINDOWS, self.gather)  # decoders stay a gathering ahead of the model
        rate = self.encoder.sample_rate  # decoded at the model's own rate
        for kind, work, payload in decode_ahead(works, self.window, self.hop, self.stop, decoders, ahead, rate):
            if self.stopped():
                return  # windows not committed are simply done again next time
            if kind == "start":
                self.start(work, payload)  # type: ignore[arg-type]
            elif kind == "window":
                if self.take_window(work, payload) and progress:  # type: ignore[arg-type]
                    self.tell(progress)
            elif kind == "error":
                self.error(work, payload)  # type: ignore[arg-type]
            elif kind == "end":  # with the fingerprint where the model's rate is not the fingerprint's
                self.end(work, payload)  # type: ignore[arg-type]
        if not self.stopped():
            self._embed_batch()
            self._commit_ready()

    # What a file's decoding says, in its order: start, window..., then end or error. `run` says it for local
    # decoding; a Remote says it for files decoded and embedded elsewhere, each window with its vector.

    def resume_point(self, work: Work) -> int:
        """How many leading windows of work an earlier, interrupted run committed: a remote decoder starts after them."""
        return self.index.partial_segments(work.hash)

    def start(self, work: Work, info: decode.AudioInfo, resume_at: int | None = None) -> None:
        """work's decoding began. resume_at: the window its windows start at (the decoder skipped those committed
        before, see resume_point); None: every window comes, and those committed before are dropped here."""
        if work.path in self.files or work.path in self.finished:
            return  # said again (a retried remote task): the file is under way or done
        skip = self.resume_point(work) if resume_at is None else resume_at
        if skip:
            log.info("%s: continuing after %d committed windows", work.path, skip)
        self.files[work.path] = _InFlight(work, info, skip, received=0 if resume_at is None else resume_at)

    def take_window(self, work: Work, w: decode.Window, embedded: "np.ndarray | str | None" = None,
                  index: int | None = None) -> bool:  # fmt: skip
        """The next window of a started file: its samples, to embed here, or with `embedded` its vector (or the
        reason the model failed on it) from elsewhere; `index`, its place in the file, drops a window said twice
        (and fails the file if one before it never came). False if the window was not taken."""
        pending = self.files.get(work.path)
        if pending is None or (index is not None and index < pending.received):
            return False  # the file failed, or the window was said before
        if index is not None and index > pending.received:  # never, unless a sender skipped a window
            self._fail(pending, f"window {pending.received + 1} of the file was lost before window {index + 1}")
            return False
        self._window(pending, w, embedded)
        return True

    def error(self, work: Work, e: BaseException | str) -> None:
        """work cannot be decoded (or an exception, or a reason given elsewhere, ended it): it fails alone."""
        pending = self.files.get(work.path)
        if pending is not None:
            self._fail(pending, e)

    def end(self, work: Work, fingerprint: bytes | None = None) -> None:
        """work's last window was said (with its fingerprint, where it was decoded elsewhere)."""
        pending = self.files.get(work.path)
        if pending is not None:
            pending.ended = True
            pending.printed = fingerprint
            self._commit_ready()

    def tell(self, progress: Callable[[float, float], None]) -> None:
        """Report (audio seconds embedded, bytes of the files done, counting in-flight files pro rata)."""
        progress(self.audio_seconds, self.bytes_done + self._in_flight())

    def _in_flight(self) -> float:
        """Bytes of the files under way, in proportion to how far through them the windows are."""
        share = 0.0
        for p in self.files.values():
            if p.info.duration > 0 and p.bounds:
                share += p.work.size * min(1.0, p.bounds[-1][1] / p.info.duration)
        return share

    def _window(self, pending: _InFlight, w: decode.Window, embedded: "np.ndarray | str | None" = None) -> None:
        pending.received += 1
        first = round(w.start * decode.SAMPLE_RATE)
        at_rate = self.encoder.sample_rate == fingerprints.SAMPLE_RATE  # else the decoder fingerprints (decode_ahead)
        if at_rate and len(w.samples) and pending.fed < MAX_SAMPLES and first + len(w.samples) > pending.fed:
            pending.printer.feed(w.samples[max(0, pending.fed - first) :])
            pending.fed = first + len(w.samples)
        if pending.received <= pending.skip:
            return  # committed by an earlier run: decoded again only to reach the windows after it
        last_end = pending.bounds[-1][1] if pending.bounds else 0.0
        self.audio_seconds += w.end - max(w.start, last_end)  # seconds not counted before
        slot: list = [None]
        pending.bounds.append((w.start, w.end))
        pending.slots.append(slot)
        if embedded is not None:  # embedded elsewhere
            self._place(pending, slot, embedded)
            self._commit_ready()
            return
        self.batch.append((pending, slot, w.samples))
        if len(self.batch) >= self.gather:  # one window on CPU; a gathering of batches on a GPU, across files
            self._embed_batch(final=False)
            self._commit_ready()

    def _ready(self) -> list[tuple[_InFlight, list, np.ndarray]]:
        """The waiting windows to run now that the gathering is full: every full batch of one length, then the
        lengths fewest windows share, until at most half a gathering waits (for more of its length: a long
        recording's 10 s windows keep coming, a clip's own length rarely does)."""
        size = self.encoder.audio_batch
        groups: dict[int, list[tuple[_InFlight, list, np.ndarray]]] = {}
        for item in self.batch:
            groups.setdefault(len(item[2]), []).append(item)
        run, rest = [], []
        for group in groups.values():
            full = len(group) // size * size
            run += group[:full]
            if group[full:]:
                rest.append(group[full:])
        # Fewest first; among equal counts the shorter length, so a lone full window (the length that keeps coming:
        # nothing is longer) waits behind the clips.
        rest.sort(key=lambda group: (len(group), len(group[0][2])))
        waiting = sum(map(len, rest))
        while rest and waiting > self.gather // 2:
            waiting -= len(rest[0])
            run += rest.pop(0)
        kept = {id(item) for group in rest for item in group}
        self.batch = [item for item in self.batch if id(item) in kept]
        return run

    def _embed_batch(self, final: bool = True) -> None:
        """Run the model on the waiting windows (all of them when final); a failure or a non-finite vector fails
        only its own file."""
        items = self.batch if final else self._ready()
        if final:
            self.batch = []
        if not items:
            return
        for (pending, slot, _), v in zip(items, embed_windows(self.encoder, [s for _, _, s in items])):
            self._place(pending, slot, v)

    def _place(self, pending: _InFlight, slot: list, v: "np.ndarray | BaseException | str") -> None:
        """Put a window's vector in its slot; an exception (or a reason from elsewhere) or a vector that is not
        finite, or all zeros, fails the window's file instead."""
        if pending.failed:
            return
        if isinstance(v, BaseException | str):
            if isinstance(v, BaseException):
                log.debug("embedding %s failed", pending.work.path, exc_info=v)
            self._fail(pending, v)
        elif not (np.all(np.isfinite(v)) and np.any(v)):
            self._fail(pending, DecodeError(pending.work.path, "the model gave a non-finite or zero embedding"))
        else:
            slot[0] = v

    def _commit_ready(self) -> None:
        """Commit finished files whole, and a chunk of every long file that has one embedded."""
        for pending in list(self.files.values()):
            done = next((i for i, s in enumerate(pending.slots) if s[0] is None), len(pending.slots))
            if pending.ended and done == len(pending.slots):
                self._commit(pending)
            elif not pending.ended and done >= self.chunk:
                self._commit_chunk(pending, done)

    def _commit_chunk(self, pending: _InFlight, n: int) -> None:
        work, bounds = pending.work, pending.bounds[:n]
        audio = _audio_row(work.hash, bounds[-1][1], pending.info)
        vectors = np.stack(_embedded(pending.slots[:n]))
        self.index.add_segments(work.hash, work.path, audio, bounds, vectors)
        pending.kept += n
        pending.kept_from = bounds[0][0] if pending.kept_from is None else pending.kept_from
        pending.kept_to = bounds[-1][1]
        pending.bounds, pending.slots = pending.bounds[n:], pending.slots[n:]
        pending.skip += n  # so a failure after this still knows what to drop

    def _commit(self, pending: _InFlight) -> None:
        work = pending.work
        del self.files[work.path]
        self.finished.add(work.path)
        if signature(work.path) != (work.size, work.mtime_ns):
            self._changing(pending)
            return
        try:
            tags = read_tags(Path(work.path))
        except Exception as e:
            log.debug("reading the tags of %s failed", work.path, exc_info=e)
            self._fail(pending, e)
            return
        duration = pending.bounds[-1][1] if pending.bounds else self.index.partial_duration(work.hash)
        # Its fingerprint, for duplicates, is stored with it; made here from the windows, or where it was decoded.
        printed = pending.printed or (pending.printer.finish().to_bytes() if pending.fed else None)
        audio = replace(_audio_row(work.hash, duration, pending.info), fingerprint=printed)
        vectors = np.stack(_embedded(pending.slots)) if pending.slots else np.zeros((0, self.encoder.dim), np.float32)
        # dict(): FileRow.tags is a dict[str, str | list[str]], which (invariant) a dict[str, list[str]] is not
        warning = truncation(duration, pending.info.duration)
        row = FileRow(work.path, work.root, work.size, work.mtime_ns, work.hash, "ok", warning, dict(tags))
        self.index.add_file(row, audio, pending.bounds, vectors)
        self.bytes_done += work.size
        self.on_done("embedded", work, pending.skip + len(pending.bounds), duration, warning)

    def _changing(self, pending: _InFlight) -> None:
        self.finished.add(pending.work.path)
        self.index.drop_partials(paths=[pending.work.path])
        self.bytes_done += pending.work.size
        self.on_done("changing", pending.work, 0, 0.0, "changed while being read; it is indexed once it settles")

    def _fail(self, pending: _InFlight, e: BaseException | str) -> None:
        """Fail one file (a file that changed meanwhile is 'changing' instead: a recorder is still writing it)."""
        pending.failed = True
        self.files.pop(pending.work.path, None)
        self.finished.add(pending.work.path)
        self.batch = [b for b in self.batch if b[0] is not pending]
        if signature(pending.work.path) != (pending.work.size, pending.work.mtime_ns):
            self._changing(pending)
            return
        self.index.drop_partials(paths=[pending.work.path])
        self.bytes_done += pending.work.size
        self.on_done("failed", pending.work, 0, 0.0, e if isinstance(e, str) else reason_of(e))


def truncation(decoded: float, declared: float) -> str | None:
    """The warning an ok file keeps when its container promises more audio than it holds (a copy cut short, a
    recorder that died): indexed as what is there, and said."""
    if declared > 0 and declared - decoded > max(TRUNCATED_SECONDS, TRUNCATED_SHARE * declared):
        return f"truncated: {decoded:.1f} s of {declared:.1f} s present"
    return None


def _audio_row(hash: str, duration: float, info: decode.AudioInfo) -> AudioRow:
    """What the index records of a content: its duration and what the decoder read of its header."""
    return AudioRow(hash, duration, info.sample_rate, info.channels, info.container, info.codec, info.bits)
