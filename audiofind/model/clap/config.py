"""LAION-CLAP sizes as frozen dataclasses: defaults are the published HTSAT-tiny + RoBERTa-base, tests pass tiny ones."""

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class HTSATConfig:
    n_mels: int = 64  # mel bins; the front end's STFT and 10 s window are fixed (frontend.py)
    spec_size: int = 256  # the Swin sees a spec_size x spec_size image
    patch_size: int = 4  # patches are patch_size x patch_size, with the same stride
    embed_dim: int = 96  # channels of the first stage, doubled by each patch merging
    depths: tuple[int, ...] = (2, 2, 6, 2)
    heads: tuple[int, ...] = (4, 8, 16, 32)
    window: int = 8  # attention windows are window x window tokens; shifted blocks move them by window // 2
    mlp_ratio: int = 4

    @property
    def freq_ratio(self) -> int:
        """Frequency groups the time axis is folded into: 256 // 64 = 4."""
        return self.spec_size // self.n_mels

    @property
    def n_time(self) -> int:
        """Frames the log-mel is resized to before folding: 256 * 4 = 1024."""
        return self.spec_size * self.freq_ratio

    @property
    def grid(self) -> int:
        """Patches per side of the first stage: 256 // 4 = 64."""
        return self.spec_size // self.patch_size

    @property
    def width(self) -> int:
        """Channels of the last stage, the size of the pooled embedding: 96 * 2**3 = 768."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)


@dataclass(frozen=True)
class RobertaConfig:
    vocab_size: int = 50265
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072
    max_positions: int = 514  # 512 tokens after the pad_id + 1 offset of RoBERTa's position ids
    type_vocab_size: int = 1
    pad_id: int = 1
    eps: float = 1e-5  # every LayerNorm
    context_length: int = 77  # the tokenizer pads and truncates to this


@dataclass(frozen=True)
class CLAPConfig:
    audio: HTSATConfig = field(default_factory=HTSATConfig)
    text: RobertaConfig = field(default_factory=RobertaConfig)
    embed_dim: int = 512

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, saved with every checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLAPConfig":
        """Inverse of to_dict (lists from JSON become tuples again)."""
        audio = dict(d.get("audio", {}))
        for name in ("depths", "heads"):
            if name in audio:
                audio[name] = tuple(audio[name])
        return cls(HTSATConfig(**audio), RobertaConfig(**d.get("text", {})), d.get("embed_dim", 512))


# Runs in well under a second and takes the same code paths: 16 mels fold 8 times into a 128 x 128 image, 32 x 32
# patches; stages 0-2 have shifted windows and patch merging, stage 3 (4 x 4 = one window) shifts nothing.
CLAP_TINY = CLAPConfig(
    audio=HTSATConfig(n_mels=16, spec_size=128, embed_dim=16, depths=(2, 2, 2, 2), heads=(1, 2, 2, 4), window=4),
    text=RobertaConfig(width=32, layers=2, heads=2, mlp_width=64, max_positions=80),
    embed_dim=32,
)
