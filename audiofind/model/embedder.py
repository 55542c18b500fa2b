"""What the library asks of a model, whichever its family: the Embedder protocol, and the batching rules both
families' encoders share (model/encoder.py for AudioCLIP, model/clap/encoder.py for CLAP)."""

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

GPU_AUDIO_BATCH = 8
TEXT_BATCH = 64


class Embedder(Protocol):
    """A model ready to embed: what indexing, watching, search by example, embed and bench use of it.

    Audio goes in as decode.py gives it, mono float32 in the int16 range at `sample_rate` (44100 for AudioCLIP,
    48000 for CLAP); callers gather `audio_batch` equal-length windows before calling embed_audio.
    """

    name: str
    sha256: str
    device: torch.device
    precision: str

    @property
    def dim(self) -> int:
        """Embedding size."""
        ...

    @property
    def audio_batch(self) -> int:
        """How many equal-length windows one forward pass takes."""
        ...

    @property
    def sample_rate(self) -> int:
        """The rate audio is decoded at for this model."""
        ...

    def embed_audio(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Clips -> (B, dim) float32."""
        ...

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> (B, dim) float32."""
        ...

    def embed_files(self, paths: Iterable[Path], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Whole files -> (N, dim); a file that cannot be decoded raises DecodeError naming it."""
        ...


def exact_batches(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Item indices grouped by equal length, in batches of at most `size`: ceil(n / size) per group, no padding."""
    by_length: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_length.setdefault(n, []).append(i)
    return [idx[s : s + size] for idx in by_length.values() for s in range(0, len(idx), size)]


def default_batch_sizes(device: torch.device) -> tuple[int, int]:
    """(audio, text) batch sizes worth having on this device. Audio batches pay on a GPU, not on a CPU (a 10 s
    window already fills the cores); captions share the reading of the text weights, their cost on a CPU, where
    the packed tower batches them unpadded (without oneDNN it would pad, so one at a time)."""
    if device.type == "cuda":
        return GPU_AUDIO_BATCH, TEXT_BATCH
    return 1, TEXT_BATCH if device.type == "cpu" and torch.backends.mkldnn.is_available() else 1
