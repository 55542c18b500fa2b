"""The two model families side by side: seconds to embed one 10 s window with each, and a CLAP text model for the
cold-search benchmark. Random full-size weights run at the published weights' speed and need no download, so both
families are measured on any machine, interleaved in one process (bench.speed.side_by_side)."""

import json
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from audiofind.bench.speed import side_by_side
from audiofind.device import keep_freed_memory, resolve_device
from audiofind.model import checkpoint
from audiofind.model.clap.bpe import SPECIAL_TOKENS, bytes_to_unicode
from audiofind.model.clap.config import CLAPConfig
from audiofind.model.clap.encoder import AudioTower, ClapEncoder, TextTower
from audiofind.model.clap.model import inference_state_dict
from audiofind.model.config import AudioCLIPConfig
from audiofind.model.embedder import Embedder, default_batch_sizes
from audiofind.model.encoder import from_model
from audiofind.model.family import tokenizer_dir
from audiofind.model.load import build

WINDOW_SECONDS = 10
LABELS = {
    "window_audioclip_s": "AudioCLIP (ESResNeXt-fbsp): embed one 10 s window",
    "window_clap_s": "CLAP (HTSAT-tiny): embed one 10 s window",
}


def synthetic_audioclip(dev: torch.device, cfg: AudioCLIPConfig | None = None) -> Embedder:
    """AudioCLIP's audio tower at full size (or cfg's) with random weights, prepared as load_encoder prepares it."""
    cfg = cfg or AudioCLIPConfig()
    model = build(cfg, ["audio"]).to(dev)
    return from_model(
        model, cfg, dev, "synthetic-audioclip", "0" * 64, prepare=True, batch_size=default_batch_sizes(dev)[0]
    )


def synthetic_clap(dev: torch.device, cfg: CLAPConfig | None = None) -> Embedder:
    """CLAP's audio tower at full size (or cfg's) with random weights, as load_encoder loads it."""
    cfg = cfg or CLAPConfig()
    return ClapEncoder("synthetic-clap", "0" * 64, cfg, dev, _audio=AudioTower(cfg).to(dev).eval(),
                       batch_size=default_batch_sizes(dev)[0])  # fmt: skip


def noise(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Gaussian noise in the int16 range at `rate`, float32 (as decode.py gives audio)."""
    return (np.random.default_rng(seed).standard_normal(round(seconds * rate)) * 3000).astype(np.float32)


def window_speed(
    device: str = "auto", repeat: int = 3, audioclip: AudioCLIPConfig | None = None, clap: CLAPConfig | None = None
) -> dict[str, float]:
    """Fastest wall seconds to embed one 10 s window with each family's audio tower, interleaved, on the device
    (full size unless configurations are given: tests pass tiny ones)."""
    dev = resolve_device(device)
    if dev.type == "cpu":  # as load_encoder sets a CPU up for either family
        torch.set_flush_denormal(True)
        keep_freed_memory()
    encoders = {"audioclip": synthetic_audioclip(dev, audioclip), "clap": synthetic_clap(dev, clap)}
    calls: dict[str, Callable[[], object]] = {
        name: partial(enc.embed_audio, [noise(WINDOW_SECONDS, enc.sample_rate)]) for name, enc in encoders.items()
    }
    best = side_by_side(calls, dev, repeat)
    return {f"window_{name}_s": seconds for name, seconds in best.items()}


def write_synthetic_tokenizer(folder: Path, merges: int = 50_000, seed: int = 0) -> Path:
    """A byte-level BPE vocabulary of RoBERTa's size (50,265 entries, 50,000 merges) in RoBERTa's files: loading it
    costs what loading the real one costs. Letter pairs merge first, so a query splits into short pieces as text
    does; the rest join random tokens."""
    alphabet = list(bytes_to_unicode().values())
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pairs = [("Ġ", c) for c in letters] + [(a, b) for a in letters for b in letters]
    tokens = [*SPECIAL_TOKENS[:4], *alphabet] + [a + b for a, b in pairs]
    rng = random.Random(seed)
    seen = set(tokens)
    while len(pairs) < merges:
        a, b = rng.choice(tokens), rng.choice(tokens)
        if a in SPECIAL_TOKENS or b in SPECIAL_TOKENS or a + b in seen:
            continue
        pairs.append((a, b))
        tokens.append(a + b)
        seen.add(a + b)
    tokens += ["<|endoftext|>", *(f"madeupword{i:04d}" for i in range(3))]  # RoBERTa's fillers: 50,265 with <mask>
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(tokens)} | {"<mask>": len(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in pairs) + "\n", encoding="utf-8"
    )
    return folder


def write_synthetic_clap_text_model(out: Path, name: str, sha256: str, cfg: CLAPConfig | None = None) -> Path:
    """A CLAP text tower with random weights (full size unless cfg says otherwise) and a tokenizer of full size, as
    a local model at `out` (a safetensors file): a cold search costs with it what it costs with the real one."""
    cfg = cfg or CLAPConfig()
    tower = TextTower(cfg)
    state = inference_state_dict(tower.state_dict())
    write_synthetic_tokenizer(tokenizer_dir(out), min(50_000, cfg.text.vocab_size - 800))
    config = None if cfg == CLAPConfig() else cfg.to_dict()
    return checkpoint.write(state, out, name, sha256, "imported", config, family="clap")
