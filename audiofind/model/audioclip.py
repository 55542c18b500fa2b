"""AudioCLIP without its image tower: the audio and text towers and the audio-text logit scale."""

import math

import torch
from torch import Tensor, nn

from audiofind.model.audio import AudioEncoder
from audiofind.model.config import AudioCLIPConfig
from audiofind.model.text import TextEncoder

# Keys of a published checkpoint that a loaded model may lack: unused buffers the converter drops.
OPTIONAL_KEYS = ("audio.fbsp.bias",)
OPTIONAL_SUFFIXES = (".num_batches_tracked",)


class AudioCLIP(TextEncoder):
    """State-dict keys equal the published checkpoint's (audio.*, CLIP text keys at the top, logit_scale_at).

    It extends TextEncoder because the reference keeps the text tower at the model's top level.
    """

    def __init__(self, cfg: AudioCLIPConfig) -> None:
        super().__init__(cfg.text, cfg.embed_dim)
        self.cfg = cfg
        self.audio = AudioEncoder(cfg.audio, cfg.embed_dim)
        self.logit_scale_at = nn.Parameter(torch.tensor(math.log(100.0)))

    def encode_audio(self, x: Tensor) -> Tensor:
        """(B, C, N) or (B, N) int16-range samples at 44.1 kHz -> (B, embed_dim), unnormalised."""
        return self.audio(x)

    def logit_scale(self) -> Tensor:
        """exp(logit_scale_at) clamped to [1, 100], as the reference uses it."""
        return self.logit_scale_at.exp().clamp(1.0, 100.0)


def is_optional_key(key: str) -> bool:
    """True for the unused keys a checkpoint may omit."""
    return key in OPTIONAL_KEYS or key.endswith(OPTIONAL_SUFFIXES)
