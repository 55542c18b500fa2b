"""Embedding audio and text with a loaded model: batching, devices and determinism in one place."""

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from audiofind import decode, weights
from audiofind.device import resolve_device
from audiofind.errors import UnknownModelError, WeightsNotFound
from audiofind.model import AudioCLIP, AudioCLIPConfig, AudioEncoder, TextEncoder
from audiofind.model.load import from_state_dict
from audiofind.tokenizer import tokenize

log = logging.getLogger(__name__)

# Every item gets a tensor shape that depends on the item alone, so its embedding is bitwise the same whatever
# else is in the batch: on CPU one item per forward (batching gains nothing there), on CUDA fixed-size batches
# padded with dummy items, captions cut to a multiple of TEXT_BUCKET tokens.
GPU_AUDIO_BATCH = 8
GPU_TEXT_BATCH = 64
TEXT_BUCKET = 8


@dataclass
class Encoder:
    """A model ready to embed. Towers not given are loaded by `loader` on first use, so knowing the model's
    identity (name, sha256, dim) costs nothing: an unchanged library re-indexes without loading it."""

    name: str
    sha256: str
    config: AudioCLIPConfig
    device: torch.device
    _audio: AudioEncoder | None = None
    _text: TextEncoder | None = None
    loader: Callable[[str], nn.Module] | None = None

    @property
    def audio(self) -> AudioEncoder | None:
        """The audio tower, loaded on first use."""
        if self._audio is None and self.loader is not None:
            self._audio = self.loader("audio")  # type: ignore[assignment]
        return self._audio

    @property
    def text(self) -> TextEncoder | None:
        """The text tower, loaded on first use."""
        if self._text is None and self.loader is not None:
            self._text = self.loader("text")  # type: ignore[assignment]
        return self._text

    @property
    def audio_batch(self) -> int:
        """How many equal-length clips one forward pass takes on this device (callers batch this many)."""
        return 1 if self.device.type == "cpu" else GPU_AUDIO_BATCH

    @property
    def dim(self) -> int:
        """Embedding size (1024 for the published models)."""
        return self.config.embed_dim

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> (B, dim) float32, unnormalised as the reference returns them."""
        if self.text is None:
            raise RuntimeError("this encoder was loaded without its text tower")
        tokens = tokenize(list(texts), self.config.text.context_length)
        lengths = (tokens.argmax(dim=-1) + 1).tolist()  # up to and including the end-of-text token
        if self.device.type == "cpu":
            groups = [([i], lengths[i]) for i in range(len(texts))]
        else:
            ctx = tokens.shape[1]
            cut = [min(ctx, -(-n // TEXT_BUCKET) * TEXT_BUCKET) for n in lengths]
            groups = _fixed_batches(cut, GPU_TEXT_BATCH)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for idx, n in groups:
                batch = tokens[idx, :n]
                if self.device.type != "cpu" and len(idx) < GPU_TEXT_BATCH:
                    batch = torch.cat([batch, batch[:1].expand(GPU_TEXT_BATCH - len(idx), -1)])
                emb = self.text.encode_text(batch.to(self.device))
                out[idx] = emb[: len(idx)].float().cpu().numpy()
        return out

    def embed_audio(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Mono int16-range float32 sample arrays at 44.1 kHz -> (B, dim) float32, unnormalised."""
        if self.audio is None:
            raise RuntimeError("this encoder was loaded without its audio tower")
        if self.device.type == "cpu":
            groups = [([i], len(c)) for i, c in enumerate(clips)]
        else:
            groups = _fixed_batches([len(c) for c in clips], GPU_AUDIO_BATCH)
        out = np.zeros((len(clips), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for idx, n in groups:
                x = torch.from_numpy(np.stack([np.asarray(clips[i], dtype=np.float32) for i in idx]))
                if self.device.type != "cpu" and len(idx) < GPU_AUDIO_BATCH:
                    x = torch.cat([x, x.new_zeros(GPU_AUDIO_BATCH - len(idx), n)])
                emb = self.audio(x.to(self.device)[:, None, :])
                out[idx] = emb[: len(idx)].float().cpu().numpy()
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


def _fixed_batches(lengths: list[int], size: int) -> list[tuple[list[int], int]]:
    """Group item indices by equal length into batches of at most `size` (padded to `size` by the caller)."""
    by_length: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_length.setdefault(n, []).append(i)
    return [(idx[s : s + size], n) for n, idx in by_length.items() for s in range(0, len(idx), size)]


def load_encoder(weights_name: str | None = None, device: str = "auto", towers: Iterable[str] = ("audio", "text"), lazy: bool = False) -> Encoder:
    """Resolve weights by name or path and load the requested towers on the device (on first use if lazy)."""
    dev = resolve_device(device)
    if dev.type == "cpu":
        # Near-silent input drives activations into denormal floats, which x86 CPUs handle up to 30x slower;
        # flushing them to zero changes embeddings by nothing measurable (values below 1e-38).
        torch.set_flush_denormal(True)
    resolved = weights.resolve(weights_name)
    cfg = AudioCLIPConfig.from_dict(resolved.config) if resolved.config else AudioCLIPConfig()

    def load(tower: str) -> nn.Module:
        state = weights.read_state_dict(resolved, [tower])
        model = from_state_dict(state, cfg, [tower], source=f"Model '{resolved.name}'").to(dev)
        if tower == "audio":
            model = model.to(memory_format=torch.channels_last)  # NHWC convolutions: ~20% faster on CPU (oneDNN)
        log.info("loaded the %s tower of %s on %s", tower, resolved.name, dev)
        return model

    enc = Encoder(resolved.name, resolved.sha256, cfg, dev, loader=load)
    if not lazy:
        for tower in towers:
            getattr(enc, tower)
    return enc


def load_for_index(index_model: str | None, weights_name: str | None, device: str, towers: Iterable[str]) -> Encoder:
    """--weights if given, else the model that built the index, else the default; loads lazily."""
    if weights_name or not index_model:
        return load_encoder(weights_name, device, towers, lazy=True)
    try:
        return load_encoder(index_model, device, towers, lazy=True)
    except UnknownModelError:
        raise WeightsNotFound(
            f"This index was built with model '{index_model}', which is not installed any more; import it again with "
            f"'audiofind weights import PATH --name {index_model}', or rebuild the index with another model."
        ) from None


def from_model(model: nn.Module, cfg: AudioCLIPConfig, device: torch.device, name: str, sha256: str) -> Encoder:
    """Wrap an already-built module (AudioCLIP, AudioEncoder or TextEncoder) as an Encoder."""
    model.eval()
    audio = model.audio if isinstance(model, AudioCLIP) else model if isinstance(model, AudioEncoder) else None
    text = model if isinstance(model, TextEncoder) else None
    return Encoder(name=name, sha256=sha256, config=cfg, device=device, _audio=audio, _text=text)
