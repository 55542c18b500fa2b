"""Models for tests: the fixture's deterministic weight recipe applied to any configuration."""

import sys
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from audiofind.model.audioclip import AudioCLIP
from audiofind.model.config import TINY, AudioCLIPConfig
from audiofind.model.load import from_state_dict

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
import weights_recipe  # noqa: E402  (the fixture's own recipe, copied from ../shared/fixture)


@lru_cache(maxsize=2)
def _recipe(cfg: AudioCLIPConfig) -> dict[str, torch.Tensor]:
    if cfg == AudioCLIPConfig():
        return weights_recipe.build_state_dict(weights_recipe.read_keys_tsv(str(DATA / "audioclip-keys.tsv")))
    with torch.device("meta"):
        keys = [(k, tuple(v.shape)) for k, v in AudioCLIP(cfg).state_dict().items()]
    return weights_recipe.build_state_dict(keys)


def synthetic_state_dict(cfg: AudioCLIPConfig = TINY) -> dict[str, torch.Tensor]:
    """Recipe weights for every key of a model of this configuration (a fresh copy each call)."""
    return {k: v.clone() for k, v in _recipe(cfg).items()}


def synthetic_model(cfg: AudioCLIPConfig = TINY, towers: tuple[str, ...] = ("audio", "text")) -> torch.nn.Module:
    """A model in eval mode loaded with recipe weights."""
    return from_state_dict(synthetic_state_dict(cfg), cfg, towers)


def register_tiny(name: str = "tiny") -> str:
    """Save TINY recipe weights as a registered model in the current AUDIOFIND_HOME; returns its name."""
    from audiofind.model import weights

    weights.save_model(synthetic_state_dict(TINY), name, TINY.to_dict(), {"note": "synthetic test weights"})
    return name


def count_forwards(model: nn.Module) -> list[tuple[int, int]]:
    """(rows, samples) of every forward pass the audio tower runs from now on."""
    calls: list[tuple[int, int]] = []
    model.register_forward_hook(lambda _m, args, _out: calls.append((args[0].shape[0], args[0].shape[-1])))
    return calls
