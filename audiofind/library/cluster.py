"""Indexing on a Ray cluster (`index --ray ADDRESS`, `watch --ray`): the cluster decodes and embeds, this process
decides and commits.

The driver (this process) walks, hashes, sorts out moves and copies and chooses what needs embedding exactly as a
local sync does (sync.py); only the embedding phase runs elsewhere, and Ray does only placement, retries, transport
and back-pressure:

- The files to embed (short first) are packed into parcels: a few dozen short files, or one long recording. Each
  parcel is one decoding task on a CPU (workers.decode_parcel, a Ray generator running pipeline.decode_ahead) that
  streams its messages back in pieces: a small header (start, window, end, error) and, as a separate object, the
  samples of its windows. Long recordings travel as windows, a piece of a few dozen at a time, never whole.
- The driver reads the headers and hands each piece's samples, by reference, to the embedding actor with the least
  work (workers.Embedder: the model loaded once per actor, one GPU each where the cluster has GPUs, else one per
  node using its cores; the same batching without padding as locally). Samples go from the decoding worker to the
  actor without passing through here; a vector (or the model's failure) per window comes back.
- The messages of each parcel are then fed, in their order, to the same pipeline.Pipeline a local run uses, which
  commits through the store as locally: one transaction per file, long recordings a chunk at a time, failures with
  their reason, resume from the windows an interrupted run committed (the decoding task skips those).

Exactly once: a decoding task retried after its worker died repeats its pieces, which Ray delivers once (generator
items are keyed by position); an actor that dies mid-batch is restarted and the batch retried, its result delivered
once; and the pipeline drops a window whose position is not the next one of its file and a file already finished,
so even a message said twice is committed once.

Files reach workers that cannot see them: by default the driver reads each file and puts its bytes in the object
store (in pieces), so workers never open a library path; with shared_paths every node mounts the library at the
same path and only paths travel. The model checkpoint is put in the object store once and read by every actor.
"""

import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from audiofind.audio import decode
from audiofind.errors import AudiofindError, DecodeError
from audiofind.library.pipeline import CHUNK_SECONDS, GATHER_BATCHES, Pipeline, Work, reason_of
from audiofind.library.workers import FAULT_ENV, Embedder, Source, decode_parcel, die_here, fault_point
from audiofind.model.encoder import Encoder
from audiofind.store import ModelBinding

log = logging.getLogger(__name__)

CONNECT_SECONDS = 10.0  # to open a TCP connection to the cluster's address before Ray tries (it retries for minutes)
READY_SECONDS = 45.0  # for the first actor to load the model: past that there is no room for one, and we say so
PARCEL_FILES = 32
PARCEL_BYTES = 8 << 20  # a parcel stops growing at this many bytes of files; a larger file is a parcel alone
PIECE_BYTES = 64 << 20  # bytes mode: a file's bytes go to the object store in pieces of at most this size
BYTES_IN_FLIGHT = 512 << 20  # bytes mode: files read but not yet done (one parcel always may, whatever its size)
CALLS_PER_ACTOR = 2  # one batch running and one waiting, so an actor never waits for the driver
DECODE_RETRIES = 3  # a decoding worker that dies is replaced (its parcel decoded again)
ACTOR_RESTARTS = 3  # an embedding actor that dies is restarted this often, and each batch retried this often
GENERATOR_AHEAD = 4  # objects (two pieces) a decoding task may produce before the driver takes them
TICK = 0.25  # seconds between looks at the stop flag while waiting for the cluster


class ClusterError(AudiofindError):
    """The Ray cluster cannot be reached, or cannot take the work; nothing was written to the index."""


def connect(address: str, shared_paths: bool = False, device: str = "auto") -> "Cluster":
    """Join the Ray cluster at address (what ray.init takes: auto, HOST:PORT, ray://HOST:10001) or start one on
    this machine (local, with all its CPUs and GPUs); a process already connected keeps its connection."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--ray needs Ray on this machine: pip install 'audiofind[ray]'.") from None
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ClusterError(f"--device {device} is not for a Ray cluster: use auto (its GPUs if it has any), cpu or cuda.")
    owned = not ray.is_initialized()
    if owned:
        if address not in ("local", "auto"):
            _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        except (OSError, RuntimeError, ValueError) as e:
            raise ClusterError(f"Cannot join the Ray cluster at {address}: {' '.join(str(e).split())}") from None
    elif address not in ("local", "auto", ray.get_runtime_context().gcs_address):
        raise ClusterError(f"This process is connected to the Ray cluster at {ray.get_runtime_context().gcs_address} "
                           f"already; it cannot join {address} too.")  # fmt: skip
    _cluster_messages_to_the_log()
    return Cluster(ray, address, shared_paths, device, owned)


def _cluster_messages_to_the_log() -> None:
    """Ray's driver prints the cluster's messages (a worker died, a task is retried) on stdout, where our results go
    (--json): they go to the log instead, which the command line shows on stderr."""
    from ray._private import worker  # no public switch for it (ray 2.9 to 2.60): wrap the one function that prints

    printing = getattr(worker, "print_to_stdstream", None)
    if printing is None or getattr(printing, "audiofind", False):
        return

    def to_log(data: dict, *args: Any, **kwargs: Any) -> None:
        if data.get("pid") == "raylet" and not data.get("is_err"):
            for line in data.get("lines", []):
                log.warning("Ray: %s", line)
        else:
            printing(data, *args, **kwargs)

    to_log.audiofind = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_log


def _check_reachable(address: str) -> None:
    """One line within seconds for an address nobody answers at, where Ray itself would keep retrying."""
    where = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = where.rpartition(":")
    if not host:
        host, port = where, "6379"  # the port `ray start --head` listens on
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise ClusterError(f"Cannot reach the Ray cluster at {address}: {why}.") from None


@dataclass(frozen=True)
class Plan:
    """How this cluster is used: the actors' device, and each actor's resources and torch threads."""

    device: str  # cpu or cuda
    actors: list[tuple[dict, int]]
    decoders: int  # decoding tasks that can run at once


class Cluster:
    """A connection to a Ray cluster and its pool of embedding actors; `run` embeds one sync's works (a Remote)."""

    def __init__(self, ray: Any, address: str, shared_paths: bool, device: str, owned: bool) -> None:
        self.ray, self.address, self.shared_paths, self.device, self.owned = ray, address, shared_paths, device, owned
        self.actors: list = []
        self.busy: dict = {}  # actor in the pool -> its batches sent and not returned
        self.starting: dict = {}  # the ready() ref of each actor not in the pool yet -> the actor
        self.piece = 1  # windows a decoding task gathers per piece
        self.plan: Plan | None = None
        self.checkpoint: list = []  # [ref of the model's safetensors bytes in the object store]
        # Workers get this process's fault variable (tests); otherwise they run in the cluster's own environment.
        self.env = {"env_vars": {FAULT_ENV: os.environ[FAULT_ENV]}} if os.environ.get(FAULT_ENV) else None

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def working(self) -> int:
        """How many actors have a batch now."""
        return sum(1 for n in self.busy.values() if n)

    def _plan(self) -> Plan:
        """One actor per GPU (one CPU each) where the cluster has GPUs and --device allows; else one per node, on all
        its cores but one, which decodes (a one-core node shares its core, as a local run does)."""
        ray = self.ray
        total = ray.cluster_resources()
        gpus, cpus = int(total.get("GPU", 0)), int(total.get("CPU", 0))
        if self.device.startswith("cuda") and not gpus:
            raise ClusterError(f"The Ray cluster at {self.address} has no GPU: no room for an embedding actor on --device {self.device}.")
        if gpus and self.device != "cpu":
            return Plan("cuda", [({"num_gpus": 1, "num_cpus": 1}, 0)] * gpus, max(1, cpus - gpus))
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actors, held = [], 0
        for node in ray.nodes():
            n = int(node["Resources"].get("CPU", 0)) if node.get("Alive") else 0
            if n:
                where = NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)  # elsewhere if the node goes
                actors.append(({"num_cpus": n - 1 if n > 1 else 0, "scheduling_strategy": where}, n))
                held += n - 1 if n > 1 else 0
        if not actors:
            raise ClusterError(f"The Ray cluster at {self.address} has no CPU: no room for an embedding actor.")
        return Plan("cpu", actors, max(1, cpus - held))

    def start(self, bound: ModelBinding | None, weights_name: str | None, precision: str | None,
              actors: int | None = None) -> Encoder:  # fmt: skip
        """Start the actors (all the cluster has room for, or at most `actors`) on the model an index built with
        `bound` takes (as sync.indexing_encoder chooses it) and wait for one to be ready; returns the encoder's
        identity for the driver (it loads no model here)."""
        import torch

        from audiofind.device import check_precision
        from audiofind.model import weights
        from audiofind.model.encoder import default_batch_sizes, load_encoder

        resolved = weights.resolve_for_index(bound.name if bound else None, weights_name)
        chosen = precision or (bound.precision if bound else "fp32")
        plan = self.plan = self._plan()
        if actors is not None:
            plan = self.plan = replace(plan, actors=plan.actors[:actors])
        device = torch.device(plan.device)
        check_precision(chosen, device)
        batch = default_batch_sizes(device)[0]
        encoder = replace(load_encoder(resolved, "cpu", ["audio"], lazy=True), device=device, precision=chosen,
                          batch_size=batch, loader=None)  # fmt: skip
        self.piece = max(batch * GATHER_BATCHES, round(CHUNK_SECONDS / decode.HOP_SECONDS))
        if self.actors:
            self.close_actors()
        # Once: every actor reads this one copy (and reads it again if it is restarted, so it is kept).
        self.checkpoint = [self.ray.put(np.memmap(resolved.path, np.uint8, mode="r"))]
        actor = self.ray.remote(Embedder)
        options = dict(max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS, runtime_env=self.env)
        self.actors = [actor.options(**options, **resources).remote(resolved.name, resolved.sha256, resolved.config,
                                                                    plan.device, chosen, threads)
                       for resources, threads in plan.actors]  # fmt: skip
        self._wait_ready()
        return encoder

    def _wait_ready(self) -> None:
        """Until one actor has loaded the model; the others join the pool as they are ready (see ready)."""
        self.starting = {a.ready.remote(self.checkpoint): a for a in self.actors}
        ready, _ = self.ray.wait(list(self.starting), num_returns=1, timeout=READY_SECONDS)
        if not ready:
            self.close_actors()
            needs = "1 GPU and 1 CPU" if self.plan and self.plan.device == "cuda" else "a CPU"
            raise ClusterError(f"No room on the Ray cluster at {self.address} for an embedding actor ({needs}) "
                               f"within {READY_SECONDS:.0f} s; free some, or add a node.")  # fmt: skip
        self.ready(ready)
        if not self.busy:  # the one that answered failed, in a way that says nothing about the model: retry once
            self.ready(self.ray.wait(list(self.starting), num_returns=1, timeout=READY_SECONDS)[0])
        if not self.busy:
            self.close_actors()
            raise ClusterError(f"No embedding actor could start on the Ray cluster at {self.address}.")
        log.info("embedding on the Ray cluster at %s: %d actor(s)", self.address, len(self.actors))

    def ready(self, refs: list) -> None:
        """Actors whose ready() answered join the pool; one whose model is wrong raises its error here."""
        for ref in refs:
            actor = self.starting.pop(ref)
            try:
                log.info("an embedding actor is ready on %s", self.ray.get(ref))
            except self.ray.exceptions.RayTaskError as e:
                if isinstance(e.cause, AudiofindError):  # damaged checkpoint, precision the device cannot do
                    self.close_actors()
                    raise e.cause from None
                log.warning("an embedding actor failed to start: %s", reason_of(e.cause or e))
                continue
            except self.ray.exceptions.RayActorError as e:
                log.warning("an embedding actor died while starting: %s", reason_of(e))
                continue
            self.busy[actor] = 0

    def run(self, pipeline: Pipeline, works: list[Work], progress: Callable[[float, float], None] | None) -> None:
        """Decode and embed works on the cluster, feeding pipeline (which commits); returns when all are done, or
        soon after the pipeline is stopped."""
        if not self.busy:
            raise RuntimeError("start the cluster's actors (Cluster.start) before running")
        _Run(self, pipeline, works, progress).run()

    def close_actors(self) -> None:
        """End the actors (their model goes with them)."""
        for a in self.actors:
            self.ray.kill(a)
        self.actors, self.busy, self.starting, self.checkpoint = [], {}, {}, []

    def close(self) -> None:
        """End the actors, and the connection if this process made it."""
        if self.ray.is_initialized():
            self.close_actors()
            if self.owned:
                self.ray.shutdown()


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


class _Run:
    """One sync's embedding on the cluster: parcels out, pieces to actors, results into the pipeline in order."""

    def __init__(self, cluster: Cluster, pipeline: Pipeline, works: list[Work],
                 progress: Callable[[float, float], None] | None) -> None:  # fmt: skip
        self.cluster, self.ray, self.pipeline, self.progress = cluster, cluster.ray, pipeline, progress
        decoders = cluster.plan.decoders if cluster.plan else 1
        self.max_parcels = 2 * decoders  # one decoding, one waiting, per decoder
        self.todo = deque(_parcels(works, self.max_parcels))
        self.parcels: list[_Parcel] = []
        self.waiting: deque[_Piece] = deque()  # pieces whose samples wait for an actor
        self.calls: dict = {}  # batch ref -> (actor, piece)
        self.decode = self.ray.remote(decode_parcel).options(
            num_cpus=1, max_retries=DECODE_RETRIES, runtime_env=cluster.env,
            _generator_backpressure_num_objects=GENERATOR_AHEAD)  # fmt: skip
        self.dying = fault_point("driver")

    def run(self) -> None:
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
                    why = "file not found" if isinstance(e, FileNotFoundError) else f"cannot read the file: {e.strerror or e}"
                    self.pipeline.start(work, _NO_INFO, skip)
                    self.pipeline.error(work, DecodeError(work.path, why))
                    continue
                parcel.works.append(work)
                parcel.sources.append(Source(work.path, skip, len(refs)))
                parcel.data += refs
            if parcel.works:
                parcel.gen = self.decode.remote(parcel.sources, self.pipeline.window, self.pipeline.hop,
                                                self.cluster.piece, *parcel.data)  # fmt: skip
                self.parcels.append(parcel)

    def _wait(self) -> None:
        """Until a decoding task has its next object, an actor a result or is ready (or a tick passes)."""
        room = len(self.waiting) < 2 * CALLS_PER_ACTOR * max(1, len(self.cluster.busy))
        refs = [p.gen for p in self.parcels if room and not p.exhausted] + list(self.calls) + list(self.cluster.starting)
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
                    self._drop(actor)
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

    def _drop(self, actor: object) -> None:
        self.cluster.busy.pop(actor, None)
        if not self.cluster.busy and not self.cluster.starting:
            raise ClusterError(f"Every embedding actor on the Ray cluster at {self.cluster.address} died; what was "
                               "committed is kept, and the next run goes on from there.")  # fmt: skip

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
                pipeline.end(work)
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
