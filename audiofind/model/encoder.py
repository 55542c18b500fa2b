"""Embedding audio and text with a loaded model: batching, devices and determinism in one place."""

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from audiofind.audio import decode
from audiofind.device import check_precision, keep_freed_memory, precision_scope, resolve_device
from audiofind.model import weights
from audiofind.model.audio import AudioEncoder
from audiofind.model.audioclip import AudioCLIP
from audiofind.model.config import AudioCLIPConfig
from audiofind.model.embedder import TEXT_BATCH, default_batch_sizes, exact_batches
from audiofind.model.inference import prepare_for_inference, prepare_text_for_inference, to_bfloat16
from audiofind.model.load import from_state_dict
from audiofind.model.text import TextEncoder
from audiofind.model.tokenizer import tokenize

if TYPE_CHECKING:
    from audiofind.model.clap.encoder import ClapEncoder

__all__ = [
    "Encoder",
    "TEXT_BATCH",
    "default_batch_sizes",
    "exact_batches",
    "from_model",
    "load_encoder",
    "load_for_index",
]

log = logging.getLogger(__name__)

# A vector never depends on what else was pending. Audio is computed at its own length, never padded: clips of
# equal length (the 10 s windows of long recordings, clips that happen to share a length) share a forward pass, at
# most `batch_size` of them, and every row gets the same bits whatever the batch size (tests/test_encoder.py).
# Captions of equal length share a forward pass too where the text tower is packed for the CPU (see embed_text).
TEXT_BUCKET = 8


@dataclass
class Encoder:
    """A model ready to embed. Towers not given are loaded by `loader` on first use, so knowing the model's
    identity (name, sha256, dim) costs nothing: an unchanged library re-indexes without loading it.

    batch_size: clips of equal length per forward pass (1: one at a time); text_batch_size: captions per forward
    pass (see embed_text); precision: fp32, tf32 or bf16 (bf16 on CUDA by autocast, on a CPU with AVX-512-BF16 or AMX
    by a bfloat16 copy of the prepared audio tower; see device.check_precision).
    """

    name: str
    sha256: str
    config: AudioCLIPConfig
    device: torch.device
    _audio: AudioEncoder | None = None
    _text: TextEncoder | None = None
    loader: Callable[[str], nn.Module] | None = None
    batch_size: int = 1
    text_batch_size: int = 1
    precision: str = "fp32"
    _bf16: AudioEncoder | None = None  # the CPU's bfloat16 copy of the audio tower, made on first use
    family: ClassVar[str] = "audioclip"

    @property
    def audio(self) -> AudioEncoder | None:
        """The audio tower, loaded on first use."""
        if self._audio is None and self.loader is not None:
            tower = self.loader("audio")
            assert isinstance(tower, AudioEncoder), f"the loader gave a {type(tower).__name__} for the audio tower"
            self._audio = tower
        return self._audio

    @property
    def text(self) -> TextEncoder | None:
        """The text tower, loaded on first use."""
        if self._text is None and self.loader is not None:
            tower = self.loader("text")
            assert isinstance(tower, TextEncoder), f"the loader gave a {type(tower).__name__} for the text tower"
            self._text = tower
        return self._text

    @property
    def audio_batch(self) -> int:
        """How many equal-length windows one forward pass takes (callers gather this many before calling)."""
        return self.batch_size

    @property
    def dim(self) -> int:
        """Embedding size (1024 for the published models)."""
        return self.config.embed_dim

    @property
    def sample_rate(self) -> int:
        """The rate audio is decoded at for this model: 44100."""
        return decode.SAMPLE_RATE

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> (B, dim) float32, unnormalised as the reference returns them."""
        if self.text is None:
            raise RuntimeError("this encoder was loaded without its text tower")
        tokens = tokenize(list(texts), self.config.text.context_length)
        cut = (tokens.argmax(dim=-1) + 1).tolist()  # up to and including the end-of-text token
        size = self.text_batch_size
        # A tower packed for the CPU gives every row the same bits in any batch, so captions of equal length share a
        # forward pass as they are. Elsewhere a row's bits depend on the row count: lengths go in steps of
        # TEXT_BUCKET and every batch is padded to one fixed size (copies of its first caption; text is cheap).
        pad = size > 1 and not getattr(self.text, "packed", False)
        if pad:
            cut = [min(tokens.shape[1], -(-n // TEXT_BUCKET) * TEXT_BUCKET) for n in cut]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode(), precision_scope(self.precision, self.device):  # bf16 is for the ResNeXt only
            for idx in exact_batches(cut, size):
                batch = tokens[idx, : cut[idx[0]]]
                if pad:
                    batch = torch.cat([batch, batch[:1].expand(size - len(idx), -1)])
                out[idx] = self.text.encode_text(batch.to(self.device))[: len(idx)].float().cpu().numpy()
        return out

    def embed_audio(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Mono int16-range float32 sample arrays at 44.1 kHz -> (B, dim) float32, unnormalised."""
        tower = self.audio
        if tower is None:
            raise RuntimeError("this encoder was loaded without its audio tower")
        if self.precision == "bf16" and self.device.type == "cpu":
            if self._bf16 is None:
                self._bf16 = to_bfloat16(tower)
            tower = self._bf16
        out = np.zeros((len(clips), self.dim), dtype=np.float32)
        with torch.inference_mode(), precision_scope(self.precision, self.device, autocast=True):
            for idx in exact_batches([len(c) for c in clips], self.batch_size):
                x = torch.from_numpy(np.stack([np.asarray(clips[i], dtype=np.float32) for i in idx]))
                emb = tower(x.to(self.device)[:, None, :])
                out[idx] = emb.float().cpu().numpy()
        return out

    def embed_files(self, paths: Iterable[Path], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Whole files -> (N, dim); a file that cannot be decoded raises DecodeError naming it."""
        paths = list(paths)
        out = np.zeros((len(paths), self.dim), dtype=np.float32)
        for i, path in enumerate(paths):
            out[i] = self.embed_audio([decode.load_audio(Path(path))])[0]
            if progress:
                progress(i + 1, len(paths))
        return out


def load_encoder(
    weights_name: "str | None | weights.Resolved" = None,
    device: str = "auto",
    towers: Iterable[str] = ("audio", "text"),
    lazy: bool = False,
    precision: str = "fp32",
    batch_size: int | None = None,
) -> "Encoder | ClapEncoder":
    """Resolve weights by name or path and load the requested towers for inference on the device (on first use if
    lazy), prepared by model/inference.py (batch norm folded, oneDNN on CPU). batch_size None: the device's default.
    The weights' family decides the encoder: a CLAP model gives a ClapEncoder (model/clap/encoder.py)."""
    dev = resolve_device(device)
    check_precision(precision, dev)
    if dev.type == "cpu":
        # Near-silent input drives activations into denormal floats, which x86 CPUs handle up to 30x slower;
        # flushing them to zero changes embeddings by nothing measurable (values below 1e-38).
        torch.set_flush_denormal(True)
        keep_freed_memory()
    resolved = weights_name if isinstance(weights_name, weights.Resolved) else weights.resolve(weights_name)
    if resolved.family == "clap":
        from audiofind.model.clap.encoder import load_clap_encoder

        return load_clap_encoder(resolved, dev, towers, lazy, precision, batch_size)
    cfg = AudioCLIPConfig.from_dict(resolved.config) if resolved.config else AudioCLIPConfig()

    def load(tower: str) -> nn.Module:
        state = weights.read_state_dict(resolved, [tower])
        model = from_state_dict(state, cfg, [tower], source=f"Model '{resolved.name}'").to(dev)
        if isinstance(model, AudioEncoder):  # the audio tower alone
            model = prepare_for_inference(model)
        elif isinstance(model, TextEncoder):  # the text tower alone
            model = prepare_text_for_inference(model)
        log.info("loaded the %s tower of %s on %s", tower, resolved.name, dev)
        return model

    audio_batch, text_batch = default_batch_sizes(dev)
    enc = Encoder(
        resolved.name,
        resolved.sha256,
        cfg,
        dev,
        loader=load,
        batch_size=batch_size or audio_batch,
        text_batch_size=text_batch,
        precision=precision,
    )
    if not lazy:
        for tower in towers:
            getattr(enc, tower)
    return enc


def load_for_index(
    index_model: str | None, weights_name: str | None, device: str, towers: Iterable[str], precision: str = "fp32"
) -> "Encoder | ClapEncoder":
    """The encoder of weights.resolve_for_index's choice; loads lazily."""
    resolved = weights.resolve_for_index(index_model, weights_name)
    return load_encoder(resolved, device, towers, lazy=True, precision=precision)


def from_model(
    model: nn.Module,
    cfg: AudioCLIPConfig,
    device: torch.device,
    name: str,
    sha256: str,
    prepare: bool = False,
    **options: Any,
) -> Encoder:
    """Wrap an already-built module (AudioCLIP, AudioEncoder or TextEncoder) as an Encoder. It is used as it is (a
    model in training keeps its batch norm) unless prepare=True makes its towers inference-only as load_encoder
    does. options are Encoder fields (batch_size, precision)."""
    model.eval()
    audio = model.audio if isinstance(model, AudioCLIP) else model if isinstance(model, AudioEncoder) else None
    text = model if isinstance(model, TextEncoder) else None
    if prepare and audio is not None:
        audio = prepare_for_inference(audio)
    if prepare and text is not None:
        text = prepare_text_for_inference(text)
    return Encoder(name=name, sha256=sha256, config=cfg, device=device, _audio=audio, _text=text, **options)
