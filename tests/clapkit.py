"""CLAP models for tests: the fixture's synthetic weight recipe applied to the full-size or the tiny configuration.

tests/data/clap/ is a copy of ../shared/clap/ (the reference fixture): the two npz files, keys.tsv, vocab/ and the
recipe (refgen/weights_recipe.py), so the tests run where ../shared is absent.
"""

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from audiofind.model.clap.config import CLAP_TINY, CLAPConfig
from audiofind.model.clap.model import CLAP, from_state_dict

DATA = Path(__file__).parent / "data" / "clap"
VOCAB = DATA / "vocab"
REF = np.load(DATA / "clap_reference.npz")
FIXED = np.load(DATA / "fixed_buffers.npz")

# Loaded by path under its own name: tests/data/weights_recipe.py (AudioCLIP's) already owns the plain name.
_spec = importlib.util.spec_from_file_location("clap_weights_recipe", DATA / "weights_recipe.py")
weights_recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(weights_recipe)


@lru_cache(maxsize=1)
def full_state_dict() -> dict[str, torch.Tensor]:
    """The fixture's full reference state dict (417 keys, 159M values; ~4 s), built once per session.

    Shared: callers must not modify its tensors (from_state_dict shares them with the model it builds).
    """
    return weights_recipe.build_state_dict(
        weights_recipe.read_keys_tsv(str(DATA / "keys.tsv")), str(DATA / "fixed_buffers.npz")
    )


@lru_cache(maxsize=1)
def full_model() -> CLAP:
    """The full-size CLAP holding the fixture's weights, in eval mode (shared: do not modify)."""
    return from_state_dict(full_state_dict(), CLAPConfig())


def tiny_state_dict(cfg: CLAPConfig = CLAP_TINY) -> dict[str, torch.Tensor]:
    """Recipe weights for every inference key of a model of this configuration (a fresh dict each call)."""
    with torch.device("meta"):
        own = CLAP(cfg).state_dict()
    rows = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in own.items()]
    return weights_recipe.build_state_dict(rows, str(DATA / "fixed_buffers.npz"))


def tiny_model(cfg: CLAPConfig = CLAP_TINY) -> CLAP:
    """A tiny CLAP in eval mode with recipe weights."""
    return from_state_dict(tiny_state_dict(cfg), cfg)


def fixture_texts() -> list[str]:
    """The fixture's six captions as Python strings."""
    return [str(t) for t in REF["texts"]]


def fixture_clips() -> dict[str, np.ndarray]:
    """The fixture's three input clips by name: 48 kHz mono float32 of 0.7 s, 4 s and 10 s."""
    return {str(n): REF[f"audio_in_{n}"] for n in REF["clip_names"]}
