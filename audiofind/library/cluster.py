"""Indexing on a Ray cluster (`index --ray ADDRESS`, `watch --ray`): the cluster decodes and embeds, this process
decides and commits.

The driver (this process) walks, hashes, sorts out moves and copies and chooses what needs embedding exactly as a
local sync does (sync.py); only the embedding phase runs elsewhere, and Ray does only placement, retries, transport
and back-pressure:

- The files to embed (short first) are packed into parcels: a few dozen short files, or one long recording (see
  library/parcels.py, which runs one sync's worth). Each parcel is one decoding task on a CPU (workers.decode_parcel,
  a Ray generator running decoding.decode_ahead) that streams its messages back in pieces: a small header (start,
  window, end, error) and, as a separate object, the samples of its windows. Long recordings travel as windows, a
  piece of a few dozen at a time, never whole.
- The driver reads the headers and hands each piece's samples, by reference, to the embedding actor with the least
  work (workers.Embedder: the model loaded once per actor, one GPU each where the cluster has GPUs, else one per
  node using its cores; the same batching without padding as locally). Samples go from the decoding worker to the
  actor without passing through here; a vector (or the model's failure) per window comes back.
- The messages of each parcel are then fed, in their order, to the same pipeline.Pipeline a local run uses, which
  commits through the store as locally: one transaction per file, long recordings a chunk at a time, failures with
  their reason, resume from the windows an interrupted run committed (the decoding task skips those).

Exactly once: a decoding task retried after its worker died repeats its pieces, which Ray delivers once (generator
items are keyed by position); an actor that dies mid-batch is restarted and the batch retried, its result delivered
once; and the pipeline drops a window said before (by its position in the file) and a file already finished, so
even a message said twice is committed once, and fails a file whose window went missing rather than leave a hole.

Files reach workers that cannot see them: by default the driver reads each file and puts its bytes in the object
store (in pieces), so workers never open a library path; with shared_paths every node mounts the library at the
same path and only paths travel. The model checkpoint is put in the object store once and read by every actor.
"""

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from audiofind.audio import decode
from audiofind.errors import AudiofindError
from audiofind.library.decoding import Work
from audiofind.library.parcels import Dispatch
from audiofind.library.pipeline import CHUNK_SECONDS, GATHER_BATCHES, Pipeline, reason_of
from audiofind.library.workers import FAULT_ENV, Embedder
from audiofind.model.encoder import Encoder
from audiofind.store import ModelBinding

if TYPE_CHECKING:
    from audiofind.model.clap.encoder import ClapEncoder

log = logging.getLogger(__name__)

CONNECT_SECONDS = 10.0  # to open a TCP connection to the cluster's address before Ray tries (it retries for minutes)
READY_SECONDS = 45.0  # for the first actor to load the model: past that there is no room for one, and we say so
ACTOR_RESTARTS = 3  # an embedding actor that dies is restarted this often, and each batch retried this often


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
        raise ClusterError(
            f"--device {device} is not for a Ray cluster: use auto (its GPUs if it has any), cpu or cuda."
        )
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
            raise ClusterError(
                f"The Ray cluster at {self.address} has no GPU: no room for an embedding actor on --device {self.device}."
            )
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
              actors: int | None = None) -> "Encoder | ClapEncoder":  # fmt: skip
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

    def lost(self, actor: object) -> None:
        """An actor died past its restarts: it leaves the pool; with none left, the run stops here."""
        self.busy.pop(actor, None)
        if not self.busy and not self.starting:
            raise ClusterError(f"Every embedding actor on the Ray cluster at {self.address} died; what was "
                               "committed is kept, and the next run goes on from there.")  # fmt: skip

    @property
    def decoders(self) -> int:
        """Decoding tasks the cluster can run at once, beside its actors."""
        return self.plan.decoders if self.plan else 1

    def run(self, pipeline: Pipeline, works: list[Work], progress: Callable[[float, float], None] | None) -> None:
        """Decode and embed works on the cluster, feeding pipeline (which commits); returns when all are done, or
        soon after the pipeline is stopped."""
        if not self.busy:
            raise RuntimeError("start the cluster's actors (Cluster.start) before running")
        Dispatch(self, pipeline, works, progress).run()

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
