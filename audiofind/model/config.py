"""Model sizes as frozen dataclasses: defaults are the published AudioCLIP sizes, tests pass tiny ones."""

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class AudioConfig:
    n_fft: int = 2048  # the fbsp bank has n_fft // 2 + 1 = 1025 filters
    hop_length: int = 561
    win_length: int = 1654
    layers: tuple[int, ...] = (3, 4, 6, 3)  # ResNeXt-50 blocks per stage
    base_width: int = 64  # stem channels = stage-1 planes
    groups: int = 32
    width_per_group: int = 4  # 32x4d

    @property
    def n_bins(self) -> int:
        """Frequency rows kept: the filters that split evenly into the three bands (1023 of 1025)."""
        return (self.n_fft // 2 + 1) // 3 * 3

    @property
    def stage_channels(self) -> list[int]:
        """Output channels of each stage (x4 bottleneck expansion): 256, 512, 1024, 2048."""
        return [self.base_width * 2**i * 4 for i in range(len(self.layers))]


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    heads: int = 8
    layers: int = 12


@dataclass(frozen=True)
class AudioCLIPConfig:
    audio: AudioConfig = field(default_factory=AudioConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 1024

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, saved with every fine-tuned checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AudioCLIPConfig":
        """Inverse of to_dict (lists from JSON become tuples again)."""
        audio = dict(d.get("audio", {}))
        if "layers" in audio:
            audio["layers"] = tuple(audio["layers"])
        return cls(AudioConfig(**audio), TextConfig(**d.get("text", {})), d.get("embed_dim", 1024))


# Small enough to run in milliseconds, same code paths as the full model.
TINY = AudioCLIPConfig(
    audio=AudioConfig(
        n_fft=256, hop_length=100, win_length=200, layers=(1, 1, 1, 1), base_width=8, groups=2, width_per_group=16
    ),
    text=TextConfig(width=32, heads=2, layers=2),
    embed_dim=32,
)
