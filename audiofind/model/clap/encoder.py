"""Embedding audio and text with a loaded CLAP model: the Embedder that index, search, embed and bench use.

Audio arrives as for AudioCLIP, mono float32 in the int16 range, but at 48 kHz. Each clip is cut as the index cuts a
file, 10 s windows every 5 s (the last ending at the clip's end; a clip of 10 s or less is one window), and each
window goes through the reference's front end: divided by 32768 (exact: a power of two) back to [-1, 1], the int16
round trip, repeat-padding to 10 s (frontend.prepare). A clip's vector is its window's unit vector when it has one
window, else the unit mean of its windows' unit vectors, as duplicates computes a whole file's vector from its
segments: so `embed` of a file and its whole-file vector in the index agree.
"""

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiofind.audio import decode
from audiofind.device import precision_scope
from audiofind.errors import UsageError, WeightsError
from audiofind.model import weights
from audiofind.model.clap import frontend
from audiofind.model.clap.bpe import BPETokenizer, load_tokenizer
from audiofind.model.clap.config import CLAPConfig
from audiofind.model.clap.htsat import HTSAT
from audiofind.model.clap.model import CLAP, projection
from audiofind.model.clap.query import encode_texts
from audiofind.model.clap.roberta import Roberta
from audiofind.model.embedder import default_batch_sizes, exact_batches
from audiofind.model.family import check_tokenizer, tokenizer_dir

log = logging.getLogger(__name__)

INT16_SCALE = 32768.0  # decode.py's scale: [-1, 1] floats times this


class AudioTower(nn.Module):
    """HTSAT and its projection, keys as CLAP's: (B, 480000) windows from frontend.prepare -> (B, D) unit vectors."""

    def __init__(self, cfg: CLAPConfig) -> None:
        super().__init__()
        self.audio_branch = HTSAT(cfg.audio)
        self.audio_projection = projection(cfg.audio.width, cfg.embed_dim)

    def forward(self, windows: Tensor) -> Tensor:
        return F.normalize(self.audio_projection(self.audio_branch(windows)), dim=-1)


class TextTower(nn.Module):
    """RoBERTa and its projection, keys as CLAP's: (B, L) ids and attention mask -> (B, D) unit vectors."""

    def __init__(self, cfg: CLAPConfig) -> None:
        super().__init__()
        self.text_branch = Roberta(cfg.text)
        self.text_projection = projection(cfg.text.width, cfg.embed_dim)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return F.normalize(self.text_projection(self.text_branch(ids, mask)), dim=-1)


def share_towers(model: CLAP) -> tuple[AudioTower, TextTower]:
    """The towers of a whole CLAP as AudioTower and TextTower, sharing its modules (fine-tuning validates with them)."""
    audio, text = AudioTower.__new__(AudioTower), TextTower.__new__(TextTower)
    nn.Module.__init__(audio)
    nn.Module.__init__(text)
    audio.audio_branch, audio.audio_projection = model.audio_branch, model.audio_projection
    text.text_branch, text.text_projection = model.text_branch, model.text_projection
    return audio, text


def clip_windows(
    clip: np.ndarray, window: float = decode.WINDOW_SECONDS, hop: float = decode.HOP_SECONDS
) -> list[np.ndarray]:
    """A clip (int16-range float32 at 48 kHz) -> the (480000,) windows CLAP embeds, cut as the index cuts a file."""
    x = np.asarray(clip, dtype=np.float32) / np.float32(INT16_SCALE)
    bounds = decode.window_bounds(len(x), window, hop, frontend.SAMPLE_RATE)
    if not bounds:
        raise ValueError("an empty clip has nothing to embed")
    return [frontend.prepare(x[start:end]) for start, end in bounds]


def unit_mean(vectors: np.ndarray) -> np.ndarray:
    """(W, D) unit vectors -> (D,): the one vector itself, else the unit mean of all."""
    if len(vectors) == 1:
        return vectors[0]
    mean = vectors.mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


@dataclass
class ClapEncoder:
    """A CLAP model ready to embed (the Embedder protocol). Towers not given are loaded by `loader` on first use.

    batch_size: windows per forward pass (1 on CPU: each row then has the same bits whatever else is pending);
    text_batch_size: captions of equal length per forward pass; precision: fp32, or tf32 on CUDA.
    """

    name: str
    sha256: str
    config: CLAPConfig
    device: torch.device
    tokenizer_dir: Path | None = None
    _audio: AudioTower | None = None
    _text: TextTower | None = None
    loader: Callable[[str], nn.Module] | None = None
    batch_size: int = 1
    text_batch_size: int = 1
    precision: str = "fp32"
    family: ClassVar[str] = "clap"
    _tokenizer: BPETokenizer | None = None

    @property
    def audio(self) -> AudioTower | None:
        """The audio tower, loaded on first use."""
        if self._audio is None and self.loader is not None:
            tower = self.loader("audio")
            assert isinstance(tower, AudioTower), f"the loader gave a {type(tower).__name__} for the audio tower"
            self._audio = tower
        return self._audio

    @property
    def text(self) -> TextTower | None:
        """The text tower, loaded on first use."""
        if self._text is None and self.loader is not None:
            tower = self.loader("text")
            assert isinstance(tower, TextTower), f"the loader gave a {type(tower).__name__} for the text tower"
            self._text = tower
        return self._text

    @property
    def dim(self) -> int:
        """Embedding size (512 for the published model)."""
        return self.config.embed_dim

    @property
    def audio_batch(self) -> int:
        """How many windows one forward pass takes."""
        return self.batch_size

    @property
    def sample_rate(self) -> int:
        """The rate audio is decoded at for CLAP: 48000."""
        return frontend.SAMPLE_RATE

    def tokenizer(self) -> BPETokenizer:
        """RoBERTa's tokenizer from the model's tokenizer folder, read on first use."""
        if self._tokenizer is None:
            if self.tokenizer_dir is None:
                raise WeightsError(f"The CLAP model '{self.name}' was loaded without its tokenizer folder.")
            folder = check_tokenizer(self.tokenizer_dir, " Import the model again with --tokenizer DIR.")
            self._tokenizer = load_tokenizer(folder, self.config.text.context_length)
        return self._tokenizer

    def embed_audio(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """Mono int16-range float32 clips at 48 kHz -> (B, dim) float32 unit vectors (see the module's docstring)."""
        if self.audio is None:
            raise RuntimeError("this encoder was loaded without its audio tower")
        windows = [clip_windows(c) for c in clips]
        flat = [w for ws in windows for w in ws]
        out = np.zeros((len(flat), self.dim), dtype=np.float32)
        with torch.inference_mode(), precision_scope(self.precision, self.device):
            for start in range(0, len(flat), self.batch_size):
                x = torch.from_numpy(np.stack(flat[start : start + self.batch_size])).to(self.device)
                out[start : start + len(x)] = self.audio(x).float().cpu().numpy()
        ends = np.cumsum([len(ws) for ws in windows])
        return np.stack([unit_mean(out[end - len(ws) : end]) for ws, end in zip(windows, ends)]) if clips else out

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> (B, dim) float32 unit vectors; captions of equal token count share a forward pass."""
        if self.text is None:
            raise RuntimeError("this encoder was loaded without its text tower")
        ids, mask = encode_texts(self.tokenizer(), texts)
        lengths = mask.sum(axis=1).tolist()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode(), precision_scope(self.precision, self.device):
            for idx in exact_batches(lengths, self.text_batch_size):
                n = lengths[idx[0]]
                batch = [torch.from_numpy(a[idx, :n]).to(self.device) for a in (ids, mask)]
                out[idx] = self.text(*batch).float().cpu().numpy()
        return out

    def embed_files(self, paths: Iterable[Path], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Whole files -> (N, dim) whole-file vectors; a file that cannot be decoded raises DecodeError naming it."""
        paths = list(paths)
        out = np.zeros((len(paths), self.dim), dtype=np.float32)
        for i, path in enumerate(paths):
            out[i] = self.embed_audio([decode.load_audio(Path(path), rate=self.sample_rate)])[0]
            if progress:
                progress(i + 1, len(paths))
        return out


def _summary(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_tower(state: dict[str, Tensor], cfg: CLAPConfig, tower: str, source: str) -> nn.Module:
    """One tower (AudioTower or TextTower) holding the state dict's tensors, without a random initialisation; keys
    that do not fit raise a one-line WeightsError."""
    with torch.device("meta"):  # the computed buffers are built from numpy, so they are real even here
        module: nn.Module = AudioTower(cfg) if tower == "audio" else TextTower(cfg)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    misfit = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own
              if k in state and (state[k].shape != own[k].shape or state[k].dtype != own[k].dtype)]  # fmt: skip
    found = (("missing", missing, 3), ("wrong shape or dtype", misfit, 2))
    if problems := [f"{what} {_summary(keys, n)}" for what, keys, n in found if keys]:
        raise WeightsError(f"{source} does not fit the CLAP model: " + "; ".join(problems) + ".")
    module.load_state_dict({k: state[k] for k in own}, strict=True, assign=True)
    return module.eval()


def load_clap_encoder(
    resolved: weights.Resolved,
    dev: torch.device,
    towers: Iterable[str] = ("audio", "text"),
    lazy: bool = False,
    precision: str = "fp32",
    batch_size: int | None = None,
) -> ClapEncoder:
    """The encoder of a resolved CLAP model on the device (load_encoder's CLAP half; it has set the device up)."""
    if precision == "bf16":
        raise UsageError("--precision bf16 is for AudioCLIP's ResNeXt; a CLAP model runs in fp32 (or tf32 on CUDA).")
    cfg = CLAPConfig.from_dict(resolved.config) if resolved.config else CLAPConfig()
    towers = list(towers)

    def load(tower: str) -> nn.Module:
        state = weights.read_state_dict(resolved, [tower])
        module = load_tower(state, cfg, tower, f"Model '{resolved.name}'").to(dev)
        log.info("loaded the %s tower of %s on %s", tower, resolved.name, dev)
        return module

    audio_batch, text_batch = default_batch_sizes(dev)
    enc = ClapEncoder(
        resolved.name,
        resolved.sha256,
        cfg,
        dev,
        tokenizer_dir(resolved.path),
        loader=load,
        batch_size=batch_size or audio_batch,
        text_batch_size=text_batch,
        precision=precision,
    )
    if not lazy:
        for tower in towers:
            getattr(enc, tower)
        if "text" in towers:
            enc.tokenizer()  # a missing tokenizer folder is told now, not at the first caption
    return enc
