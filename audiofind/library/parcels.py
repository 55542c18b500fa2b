"""One sync's embedding on a Ray cluster (library/cluster.py says how it is spread): the files to embed go out in
parcels to decoding tasks, the pieces those stream back go to the actors with the least work, and each parcel's
messages come back into the pipeline in their order, each window with its vector, to be committed there.

A parcel is a few dozen short files (short first, as sync sorts them), or one long recording; a piece is a
header of messages (start, window, end, error) and, as a separate object, the samples of its windows, which go from
the decoding worker to an actor without passing through here. Back-pressure: at most two parcels per decoder at
once (and, in bytes mode, at most BYTES_IN_FLIGHT of their files), at most CALLS_PER_ACTOR batches per actor, and a
decoding task pauses after GENERATOR_AHEAD objects the driver has not taken.
"""

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from audiofind.audio import decode
from audiofind.errors import DecodeError
from audiofind.library.decoding import Work
from audiofind.library.pipeline import Pipeline, reason_of
from audiofind.library.workers import Source, decode_parcel, die_here, fault_point

PARCEL_FILES = 32
PARCEL_BYTES = 8 << 20  # a parcel stops growing at this many bytes of files; a larger file is a parcel alone
PIECE_BYTES = 64 << 20  # bytes mode: a file's bytes go to the object store in pieces of at most this size
BYTES_IN_FLIGHT = 512 << 20  # bytes mode: files read but not yet done (one parcel always may, whatever its size)
CALLS_PER_ACTOR = 2  # one batch running and one waiting, so an actor never waits for the driver
DECODE_RETRIES = 3  # a decoding worker that dies is replaced (its parcel decoded again)
GENERATOR_AHEAD = 4  # objects (two pieces) a decoding task may produce before the driver takes them
TICK = 0.25  # seconds between looks at the stop flag while waiting for the cluster


class Pool(Protocol):
    """What a dispatch needs of the cluster (library/cluster.py's Cluster)."""

    ray: Any
    shared_paths: bool
    busy: dict  # actor in the pool -> its batches sent and not returned
    starting: dict  # the ready() ref of each actor not in the pool yet -> the actor
    checkpoint: list  # [ref of the model in the object store], sent with every batch
    env: dict | None  # the runtime environment of decoding tasks
    piece: int  # windows a decoding task gathers per piece

    @property
    def decoders(self) -> int:
        """Decoding tasks that can run at once."""
        ...

    def ready(self, refs: list) -> None:
        """Actors whose ready() answered join the pool."""
        ...

    def lost(self, actor: object) -> None:
        """An actor died past its restarts: it leaves the pool (ClusterError if none is left)."""
        ...


_NO_SAMPLES = np.zeros(0, np.float32)  # a window embedded elsewhere: its samples stayed there
_NO_INFO = decode.AudioInfo(0.0, 0, 0, "")  # a file that failed before its decoding said anything


@dataclass
class _Piece:
    """Part of a parcel's messages, applied in order once its windows' vectors are back."""

    header: list
    samples: Any = None  # the ref of its samples, until an actor has them
    result: Any = None  # (vectors, failures), or the reason they were lost
    crash: str | None = None  # the decoding task failed for good here: the parcel's unfinished files fail

    @property
    def windows(self) -> int:
        """How many of its messages are windows (0: it waits for no actor)."""
        return sum(1 for e in self.header if e[0] == "window")


@dataclass
class _Parcel:
    """Works decoded by one task; the headers' file numbers index works and sources."""

    works: list[Work]
    size: int
    sources: list[Source] = field(default_factory=list)
    data: list = field(default_factory=list)  # bytes mode: refs of the files' pieces, kept until the parcel is done
    gen: Any = None
    header: list | None = None  # read, its samples not yet
    queue: deque = field(default_factory=deque)
    exhausted: bool = False


class Dispatch:
    """One sync's embedding on the cluster: parcels out, pieces to actors, results into the pipeline in order."""

    def __init__(self, cluster: "Pool", pipeline: Pipeline, works: list[Work],
                 progress: Callable[[float, float], None] | None) -> None:  # fmt: skip
        self.cluster, self.ray, self.pipeline, self.progress = cluster, cluster.ray, pipeline, progress
        self.max_parcels = 2 * cluster.decoders  # one decoding, one waiting, per decoder
        self.todo = deque(_parcels(works, self.max_parcels))
        self.parcels: list[_Parcel] = []
        self.waiting: deque[_Piece] = deque()  # pieces whose samples wait for an actor
        self.calls: dict = {}  # batch ref -> (actor, piece)
        self.decode = self.ray.remote(decode_parcel).options(
            num_cpus=1, max_retries=DECODE_RETRIES, runtime_env=cluster.env,
            _generator_backpressure_num_objects=GENERATOR_AHEAD)  # fmt: skip
        self.dying = fault_point("driver")

    def run(self) -> None:
        """Until every work is done, or the pipeline is stopped."""
        try:
            while (self.todo or self.parcels) and not self.pipeline.stopped():
                self._submit()
                self._wait()
                self._dispatch()
                self._apply()
        finally:
            for parcel in self.parcels:  # stopped or interrupted: what is not committed is done next time
                self.ray.cancel(parcel.gen)
            for actor, _ in self.calls.values():  # batches still running are forgotten with this run
                if actor in self.cluster.busy:
                    self.cluster.busy[actor] -= 1

    def _room(self) -> bool:
        """Whether another parcel may start: a decoder for it, and in bytes mode memory for its bytes."""
        if not self.parcels:
            return True
        if len(self.parcels) >= self.max_parcels:
            return False
        return self.cluster.shared_paths or sum(p.size for p in self.parcels) + self.todo[0].size <= BYTES_IN_FLIGHT

    def _submit(self) -> None:
        """Start decoding tasks while there is room for them."""
        while self.todo and self._room():
            parcel = self.todo.popleft()
            works, parcel.works = parcel.works, []
            for work in works:
                skip = self.pipeline.resume_point(work)
                if self.cluster.shared_paths:
                    parcel.works.append(work)
                    parcel.sources.append(Source(work.path, skip))
                    continue
                try:
                    refs = [self.ray.put(np.frombuffer(b, np.uint8)) for b in _read(work.path)]
                except OSError as e:  # gone or unreadable since it was hashed: say it as decoding would
                    why = (
                        "file not found"
                        if isinstance(e, FileNotFoundError)
                        else f"cannot read the file: {e.strerror or e}"
                    )
                    self.pipeline.start(work, _NO_INFO, skip)
                    self.pipeline.error(work, DecodeError(work.path, why))
                    continue
                parcel.works.append(work)
                parcel.sources.append(Source(work.path, skip, len(refs)))
                parcel.data += refs
            if parcel.works:
                parcel.gen = self.decode.remote(parcel.sources, self.pipeline.window, self.pipeline.hop,
                                                self.cluster.piece, *parcel.data,
                                                rate=self.pipeline.encoder.sample_rate)  # fmt: skip
                self.parcels.append(parcel)

    def _wait(self) -> None:
        """Until a decoding task has its next object, an actor a result or is ready (or a tick passes)."""
        room = len(self.waiting) < 2 * CALLS_PER_ACTOR * max(1, len(self.cluster.busy))
        refs = (
            [p.gen for p in self.parcels if room and not p.exhausted] + list(self.calls) + list(self.cluster.starting)
        )
        if not refs:
            return
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=TICK)
        if ready:
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        done = set(ready)
        self.cluster.ready([r for r in self.cluster.starting if r in done])
        for parcel in self.parcels:
            if parcel.gen in done:
                self._take(parcel)
        for ref in [r for r in self.calls if r in done]:
            actor, piece = self.calls.pop(ref)
            piece.samples = None  # the actor is done with them: the object store may free them
            try:
                piece.result = self.ray.get(ref)
            except self.ray.exceptions.RayError as e:  # its batch fails, its files with it
                piece.result = reason_of(e)
                if isinstance(e, self.ray.exceptions.ActorDiedError):  # past its restarts: it leaves the pool
                    self.cluster.lost(actor)
                    continue
            self.cluster.busy[actor] -= 1

    def _take(self, parcel: _Parcel) -> None:
        """The next object of a decoding task: a header, or the samples of the header before it."""
        try:
            ref = next(parcel.gen)
            value = ref if parcel.header is not None else self.ray.get(ref)
        except StopIteration:
            parcel.exhausted = True
            return
        except self.ray.exceptions.RayError as e:  # its worker died DECODE_RETRIES times (or a bug of ours)
            parcel.queue.append(_Piece([], crash=reason_of(e)))
            parcel.exhausted = True
            return
        if parcel.header is None:
            parcel.header = value
            return
        piece = _Piece(parcel.header, samples=value)
        parcel.header = None
        parcel.queue.append(piece)
        if piece.windows:
            self.waiting.append(piece)

    def _dispatch(self) -> None:
        """Hand waiting pieces to the actors with the least work, up to CALLS_PER_ACTOR each."""
        busy = self.cluster.busy
        while self.waiting and busy:
            actor = min(busy, key=busy.__getitem__)
            if busy[actor] >= CALLS_PER_ACTOR:
                return
            piece = self.waiting.popleft()
            self.calls[actor.embed.remote(piece.samples, self.cluster.checkpoint)] = (actor, piece)
            busy[actor] += 1

    def _apply(self) -> None:
        """Feed the pipeline every parcel's pieces that are complete, in order; forget finished parcels."""
        for parcel in list(self.parcels):
            while parcel.queue and (not parcel.queue[0].windows or parcel.queue[0].result is not None):
                self._feed(parcel, parcel.queue.popleft())
            if parcel.exhausted and not parcel.queue:
                self._fail_rest(parcel, "its decoding task ended before the file did")  # never, unless cancelled
                self.parcels.remove(parcel)
        if self.progress:
            self.pipeline.tell(self.progress)
        if self.dying is not None and len(self.pipeline.finished) >= self.dying:
            die_here("driver")

    def _feed(self, parcel: _Parcel, piece: _Piece) -> None:
        """One piece's messages, in order, each window with its vector (or the reason the model failed on it)."""
        pipeline, result, j = self.pipeline, piece.result, 0
        for event in piece.header:
            kind, work = event[0], parcel.works[event[1]]
            if kind == "start":
                pipeline.start(work, event[2], parcel.sources[event[1]].skip)
            elif kind == "window":
                v = result if isinstance(result, str) else result[1].get(j, result[0][j])
                pipeline.take_window(work, decode.Window(event[3], event[4], _NO_SAMPLES), v, event[2])
                j += 1
            elif kind == "end":
                pipeline.end(work, event[2])
            else:
                pipeline.error(work, event[2])
        if piece.crash is not None:
            self._fail_rest(parcel, piece.crash)

    def _fail_rest(self, parcel: _Parcel, reason: str) -> None:
        for work, source in zip(parcel.works, parcel.sources):
            if work.path not in self.pipeline.finished:
                self.pipeline.start(work, _NO_INFO, source.skip)
                self.pipeline.error(work, reason)


def _parcels(works: list[Work], at_least: int) -> Iterator[_Parcel]:
    """Consecutive works (short first) in parcels of at most PARCEL_FILES files and PARCEL_BYTES bytes (a larger
    file alone), smaller when there are few works, so that `at_least` decoders all have one."""
    per = max(1, min(PARCEL_FILES, -(-len(works) // max(1, at_least))))
    group: list[Work] = []
    for work in works:
        if group and (len(group) >= per or sum(w.size for w in group) + work.size > PARCEL_BYTES):
            yield _Parcel(group, sum(w.size for w in group))
            group = []
        group.append(work)
    if group:
        yield _Parcel(group, sum(w.size for w in group))


def _read(path: str) -> Iterator[bytes]:
    """A file's bytes in pieces of at most PIECE_BYTES (one empty piece for an empty file)."""
    with open(path, "rb") as f:
        while True:
            b = f.read(PIECE_BYTES)
            yield b
            if len(b) < PIECE_BYTES:
                return
