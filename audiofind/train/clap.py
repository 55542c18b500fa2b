"""CLAP's side of fine-tuning: the recipe and the loss of train/loss.py on CLAP's towers.

What the recipe means for CLAP: the same symmetric cross-entropy with label smoothing over in-batch similarities
scaled by the model's audio-text logit scale (exp of logit_scale_a, at most 100 as LAION-CLAP clamps it), the same
dropout on the pooled audio and text features before their projections, the same optimizer, schedule, batches and
top-epoch averaging. Two parts do not apply: the fbsp filter-norm regulariser and its gradient rescaling (AudioCLIP's
learned filter bank; CLAP's mel bank is fixed), and crops other than 10 s (CLAP's audio tower takes exactly one
10 s window: a longer clip is cropped at random, as the reference trains, a shorter one repeat-padded as it embeds).
"""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiofind.audio.decode import load_audio, load_crop, probe
from audiofind.model import weights
from audiofind.model.clap import frontend
from audiofind.model.clap.bpe import BPETokenizer, load_tokenizer
from audiofind.model.clap.config import CLAPConfig
from audiofind.model.clap.encoder import ClapEncoder, share_towers
from audiofind.model.clap.model import CLAP, from_state_dict
from audiofind.model.clap.query import encode_texts
from audiofind.train import batches, data
from audiofind.train.config import TrainConfig

MAX_LOGIT_SCALE = math.log(100.0)
INT16_SCALE = 32768.0  # decode.py's: back to [-1, 1]


def notes(cfg: TrainConfig) -> list[str]:
    """What of the recipe does not apply to CLAP, in sentences the command line prints."""
    out = ["The fbsp filter-norm regulariser is AudioCLIP's (CLAP's mel bank is fixed): --fbsp-weight does not apply."]
    if cfg.crop_seconds != frontend.WINDOW_SECONDS:
        out.append(f"CLAP's audio tower takes one {frontend.WINDOW_SECONDS} s window: crops are "
                   f"{frontend.WINDOW_SECONDS} s, not --crop-seconds {cfg.crop_seconds:g}.")  # fmt: skip
    return out


class ClapPairForward(nn.Module):
    """CLAP behind one forward(), as PairForward is AudioCLIP's: dropout on the pooled features, no regulariser."""

    def __init__(self, model: CLAP, dropout: float) -> None:
        super().__init__()
        self.model, self.dropout = model, dropout

    def forward(self, audio: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(B, 480000) windows, (B, 2, L) ids and attention mask -> audio (B, D), text (B, D), scale (), zero ()."""
        m = self.model
        pooled_audio = F.dropout(m.audio_branch(audio), self.dropout, self.training)  # (B, 768)
        pooled_text = F.dropout(m.text_branch(tokens[:, 0], tokens[:, 1]), self.dropout, self.training)  # (B, 768)
        scale = m.logit_scale_a.clamp(max=MAX_LOGIT_SCALE).exp()
        return m.audio_projection(pooled_audio), m.text_projection(pooled_text), scale, audio.new_zeros(())


def window_crop(path: Path, n: int, rng: np.random.Generator, rate: int = frontend.SAMPLE_RATE) -> np.ndarray:
    """The (480000,) window CLAP trains on: a random 10 s crop of a longer clip, a shorter one whole and repeat-padded
    as the reference pads it, both through the int16 round trip (n must be the window's 480000 samples)."""
    if round(probe(path).duration * rate) > n:
        x = load_crop(path, n, rng, rate)  # decoded up to the crop's end only
    else:
        x = load_audio(path, rate=rate)[:n]
    return frontend.prepare(x / np.float32(INT16_SCALE))


class ClapCollate:
    """Stack a batch for CLAP: audio (B, 480000), tokens (B, 2, L) ids and mask cut to the longest caption."""

    def __init__(self, tokenizer_dir: Path, context_length: int) -> None:
        self.tokenizer: BPETokenizer = load_tokenizer(tokenizer_dir, context_length)  # built once, before the workers

    def __call__(self, items: list[tuple[np.ndarray, str, list[str]]]) -> dict:
        ids, mask = encode_texts(self.tokenizer, [caption for _, caption, _ in items])
        n = int(mask.sum(axis=1).max())  # right-padded, and only <s> is pooled: later columns change nothing
        tokens = torch.from_numpy(np.stack([ids[:, :n], mask[:, :n]], axis=1))
        audio = torch.from_numpy(np.stack([x for x, _, _ in items]))
        return {"audio": audio, "tokens": tokens, "unreadable": [u for _, _, bad in items for u in bad]}


def pairs(clips: data.ClipSet, seed: int, tokenizer: Path, cfg: CLAPConfig) -> tuple[batches.PairDataset, ClapCollate]:
    """CLAP's training pairs (random 10 s windows at 48 kHz) and how a batch of them is stacked."""
    dataset = batches.PairDataset(clips, frontend.WINDOW_SECONDS, seed, frontend.SAMPLE_RATE, window_crop)
    return dataset, ClapCollate(tokenizer, cfg.text.context_length)


def start_model(resolved: weights.Resolved) -> tuple[CLAPConfig, CLAP]:
    """A resolved CLAP model's sizes and the whole model, ready to train (its parameters want gradients)."""
    cfg = CLAPConfig.from_dict(resolved.config) if resolved.config else CLAPConfig()
    state = weights.read_state_dict(resolved, ["audio", "text", "scale"])
    return cfg, whole_model(state, cfg.to_dict(), f"Model '{resolved.name}'")


def whole_model(state: dict[str, Tensor], cfg: dict, source: str) -> CLAP:
    """Both towers and the logit scales from a state dict, as the one CLAP module that trains."""
    return from_state_dict({k: v.clone() for k, v in state.items()}, CLAPConfig.from_dict(cfg), source)


def validation_encoder(model: CLAP, device: torch.device, tokenizer_dir: Path) -> ClapEncoder:
    """The model being trained, as the encoder bench and search would use (sharing its modules, in eval mode)."""
    model.eval()
    audio, text = share_towers(model)
    return ClapEncoder("validation", "", model.cfg, device, tokenizer_dir, _audio=audio, _text=text, batch_size=16)
