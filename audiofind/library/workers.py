"""What runs on a Ray cluster's workers for `index --ray` (library/cluster.py sends it there): a decoding task per
parcel of files, and the embedding actor that holds the model.

Plain Python, no Ray: the driver wraps these with `ray.remote`, so a worker imports this module and the decoding
code it calls. Decoding is decoding.decode_ahead's, embedding pipeline.embed_windows on an encoder made by
load_encoder: the very code of a local run, so a file fails with the same reason and a window gets the same vector.
"""

import os
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audiofind.audio.decode import SAMPLE_RATE, Window
from audiofind.audio.fingerprint import MAX_SAMPLES, Fingerprinter
from audiofind.library.decoding import Work, decode_ahead
from audiofind.library.pipeline import embed_windows, reason_of

# Faults for tests, injected where they would happen in the field: "who:n:marker" items separated by ";" make the
# n-th step of `who` (decode: piece yielded by a decoding task, actor: batch embedded, driver: file finished) kill
# its process, once: the marker file records that it happened. The driver hands the variable on to its workers.
FAULT_ENV = "AUDIOFIND_RAY_FAULT"


def fault_point(who: str) -> int | None:
    """The step at which `who` is to die, unless that already happened (or no fault is asked for)."""
    for item in os.environ.get(FAULT_ENV, "").split(";"):
        name, _, rest = item.partition(":")
        n, _, marker = rest.partition(":")
        if name == who and n.isdigit() and marker and not os.path.exists(marker):
            return int(n)
    return None


def die_here(who: str) -> None:
    """Record the fault of `who`, then end this process the way an OOM kill or `kill -9` does."""
    for item in os.environ.get(FAULT_ENV, "").split(";"):
        name, _, rest = item.partition(":")
        if name == who:
            Path(rest.partition(":")[2]).touch()
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Source:
    """One file of a parcel as it travels: its path, and in bytes mode how many pieces of its bytes follow (the
    worker writes them to a file of its own with the same extension, so FFmpeg guesses the format as it would)."""

    path: str
    skip: int  # leading windows an earlier run committed: not sent again
    pieces: int | None = None  # None: read the path itself (every node mounts the library at the same path)


def decode_parcel(
    sources: list[Source], window: float, hop: float, piece: int, *data: np.ndarray, rate: int = SAMPLE_RATE
) -> Iterator[list]:
    """A Ray generator: the parcel's messages in pieces, each two objects: a header (a list of ("start", i, info),
    ("window", i, k, start, end), ("end", i, fingerprint) and ("error", i, reason) for file i of the parcel, window k
    of its file),
    then the samples of its windows, a list of arrays, once `piece` windows are gathered (and at the end)."""
    dying = fault_point("decode")
    with tempfile.TemporaryDirectory(prefix="audiofind-parcel-") as tmp:
        works, at = [], 0
        for i, source in enumerate(sources):
            path = source.path
            if source.pieces is not None:
                path = str(Path(tmp) / f"{i}{Path(source.path).suffix}")
                with open(path, "wb") as f:
                    for part in data[at : at + source.pieces]:
                        f.write(part.data)
                at += source.pieces
            works.append(Work(path, "", 0, 0))
        which = {w.path: i for i, w in enumerate(works)}
        counts = [0] * len(works)
        printers = [Fingerprinter() for _ in works]  # each file's fingerprint, from every window, skipped ones too
        fed = [0] * len(works)
        header: list = []
        samples: list[np.ndarray] = []
        yielded = 0
        for kind, work, payload in decode_ahead(works, window, hop, None, rate=rate):  # at the model's rate
            i = which[work.path]
            if kind == "start":
                header.append(("start", i, payload))
            elif kind == "window":
                assert isinstance(payload, Window)
                k, counts[i] = counts[i], counts[i] + 1
                first = round(payload.start * SAMPLE_RATE)
                if (
                    rate == SAMPLE_RATE and fed[i] < MAX_SAMPLES and first + len(payload.samples) > fed[i]
                ):  # overlaps fed once
                    printers[i].feed(payload.samples[max(0, fed[i] - first) :])
                    fed[i] = first + len(payload.samples)
                if k >= sources[i].skip:
                    header.append(("window", i, k, payload.start, payload.end))
                    samples.append(payload.samples)
            elif kind == "end":
                # decode_ahead fingerprints a file itself where the model's rate is not the fingerprint's
                header.append(("end", i, payload if isinstance(payload, bytes) else printers[i].finish().to_bytes()))
            else:
                header.append(("error", i, reason_of(payload)))  # type: ignore[arg-type]
            if len(samples) >= piece or (kind in ("end", "error") and i == len(works) - 1):  # full, or the last
                yielded += 1
                if yielded == dying:
                    die_here("decode")
                yield header
                yield samples
                header, samples = [], []
        if header:  # never with one decoding thread: its last message is the last file's end or error
            yield header
            yield samples


class Embedder:
    """An embedding actor: the audio tower loaded once, from the checkpoint the driver put in the object store
    once, on this actor's device (its GPU where the cluster has GPUs), in the index's precision.

    The checkpoint comes with every call as a reference (in a list, so that Ray does not fetch it) and is read on
    the first: an actor that Ray restarts after a crash loads it again with the batch it retries.
    """

    def __init__(self, name: str, sha256: str, config: dict | None, device: str, precision: str, threads: int) -> None:
        self.model = (name, sha256, config, device, precision)
        self.threads = threads
        self.encoder: Any = None
        self.batches = 0
        self.dying = fault_point("actor")

    def _load(self, checkpoint: list) -> Any:
        # Imported here, not at the top: decoding workers import this module too, and need neither.
        import ray
        import torch

        from audiofind.model.checkpoint import read_metadata
        from audiofind.model.encoder import load_encoder
        from audiofind.model.family import family_of
        from audiofind.model.weights import Resolved

        if self.encoder is None:
            if self.threads:  # Ray starts workers with one thread; a CPU actor computes with its node's cores
                torch.set_num_threads(self.threads)
            name, sha256, config, device, precision = self.model
            # The safetensors file itself, not its tensors written again: the same bytes at the same offsets give
            # the same vectors bit for bit (tensors aligned otherwise may take other kernels' paths).
            with tempfile.TemporaryDirectory(prefix="audiofind-model-") as tmp:
                path = Path(tmp) / f"{name}.safetensors"
                path.write_bytes(ray.get(checkpoint[0]).data)
                family = family_of(read_metadata(path))  # the file says which model it is
                resolved = Resolved(name, path, sha256, config, None, family)
                self.encoder = load_encoder(resolved, device, ["audio"], precision=precision)
        return self.encoder

    def ready(self, checkpoint: list) -> str:
        """The device, once the model is loaded and gives finite vectors (WeightsError otherwise)."""
        from audiofind.library.sync import check_embeds

        check_embeds(self._load(checkpoint))
        return str(self.encoder.device)

    def embed(self, clips: list[np.ndarray], checkpoint: list) -> tuple[np.ndarray, dict[int, str]]:
        """(vectors (N, dim), {clip: reason}) for the clips that made the model raise (their rows are zeros)."""
        encoder = self._load(checkpoint)
        self.batches += 1
        if self.batches == self.dying:
            die_here("actor")
        vectors = np.zeros((len(clips), encoder.dim), np.float32)
        failures = {}
        for i, v in enumerate(embed_windows(encoder, clips)):
            if isinstance(v, Exception):
                failures[i] = reason_of(v)
            else:
                vectors[i] = v
        return vectors, failures
