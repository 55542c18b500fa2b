"""CLAP models for tests: the fixture's synthetic weight recipe applied to the full-size or the tiny configuration.

tests/data/clap/ is a copy of ../shared/clap/ (the reference fixture): the two npz files, keys.tsv, vocab/ and the
recipe (refgen/weights_recipe.py), so the tests run where ../shared is absent.
"""

import importlib.util
import zipfile
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from audiofind.model.clap.config import CLAP_TINY, CLAPConfig
from audiofind.model.clap.model import CLAP, POSITION_IDS, computed_buffers, from_state_dict

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


# CLAP_TINY with a text tower of two 64-channel heads: a checkpoint in the published layout carries no sizes, so
# `weights import` reads them from the shapes, and RoBERTa's head count from its width (64 channels a head).
CLAP_CLI = replace(CLAP_TINY, text=replace(CLAP_TINY.text, width=128, heads=2, mlp_width=256))
TRAINING_ONLY = {  # what the published file holds beside the inference keys (shapes as small as they may be)
    "audio_branch.tscam_conv.weight": (527, 16, 2, 3), "audio_branch.tscam_conv.bias": (527,),
    "audio_branch.head.weight": (527, 128), "audio_branch.head.bias": (527,),
    "audio_transform.sequential.0.weight": (32, 32), "text_transform.sequential.0.weight": (32, 32),
}  # fmt: skip


def published_checkpoint(
    path: Path, cfg: CLAPConfig = CLAP_CLI, prefix: bool = True, position_ids: bool = True
) -> Path:
    """The recipe's weights for cfg saved as the published `630k-audioset-best.pt` is laid out: {"state_dict":
    {"module." + key: tensor}} with the computed buffers and training-only tensors, beside epoch and optimizer state."""
    state = tiny_state_dict(cfg)
    state |= computed_buffers(from_state_dict(state, cfg))
    state |= {k: torch.zeros(s) for k, s in TRAINING_ONLY.items()}
    if position_ids:
        state[POSITION_IDS] = torch.arange(cfg.text.max_positions)[None]
    junk = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
        "param_groups": [{"lr": 1e-4, "params": [0]}],
    }
    sd = {("module." if prefix else "") + k: v for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # numpy numbers in the training state, as the published file holds them, pickled under numpy 1's module path
    torch.save({"epoch": np.int64(45), "name": "synthetic", "state_dict": sd, "optimizer": junk,
                "val_loss": np.float64(0.25)}, path)  # fmt: skip
    return as_numpy_1(path)


def as_numpy_1(path: Path) -> Path:
    """Rewrite a torch zip checkpoint so its numpy numbers name numpy 1's module (numpy.core.multiarray.scalar)."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            out.writestr(info, data)
    tmp.replace(path)
    return path
