"""The numpy text tower against the torch one: the fixture at full size, every Clotho evaluation caption, misfit files.

Equality is measured as max |numpy - torch| over an embedding's entries relative to that embedding's norm (entries
are up to ~3.5 and norms ~31 with the recipe weights, so 1e-6 of the norm is ~8x float32 rounding of one entry).
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from modelkit import DATA, synthetic_state_dict, weights_recipe
from safetensors.torch import save_file
from threadpoolctl import threadpool_limits

from audiofind.errors import WeightsError
from audiofind.eval.clotho import load_split
from audiofind.model import checkpoint
from audiofind.model.config import TINY, AudioCLIPConfig
from audiofind.model.load import from_state_dict
from audiofind.model.text import TextEncoder
from audiofind.model.textnp import TextTower, load_text_tower
from audiofind.model.tokenizer import tokenize_np

REF = np.load(DATA / "public_reference.npz")
TOLERANCE = 1e-6


def rel_to_norm(a: np.ndarray, b: np.ndarray) -> float:
    """Largest entry-wise difference of each pair of embeddings, relative to the norm of the torch one."""
    return float((np.abs(a - b).max(axis=-1) / np.linalg.norm(b, axis=-1)).max())


def fixture_rel(a: np.ndarray, b: np.ndarray) -> float:
    """The fixture's own tolerance measure (tests/test_model.py): on unit-normalised vectors."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[TextTower, TextEncoder]:
    """The fixture's full-size text tower (recipe weights), as a safetensors file for numpy and as torch."""
    keys = [
        (k, s)
        for k, s in weights_recipe.read_keys_tsv(str(DATA / "audioclip-keys.tsv"))
        if checkpoint.tower_or_none(k) == "text"
    ]
    state = weights_recipe.build_state_dict(keys)  # each tensor seeded by its own key: the same as in the full recipe
    path = tmp_path_factory.mktemp("textnp") / "text.safetensors"
    save_file(state, path)
    return load_text_tower(path), from_state_dict(state, AudioCLIPConfig(), ["text"])


def torch_embed(model: TextEncoder, tokens: np.ndarray, batch: int = 64) -> np.ndarray:
    """The torch tower on captions of similar length together, each batch cut to its longest (exact: causal mask)."""
    lengths = tokens.argmax(axis=-1) + 1
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(tokens), model.text_projection.shape[1]), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            out[rows] = model.encode_text(torch.from_numpy(tokens[rows, : int(lengths[rows].max())])).numpy()
    return out


def test_fixture_captions_at_full_size(full: tuple[TextTower, TextEncoder]) -> None:
    tower, model = full
    captions = [str(c) for c in REF["caption_texts"]]
    tokens = tokenize_np(captions)
    assert np.array_equal(tokens, REF["text_tokens"])
    got = tower.embed_text(captions)
    assert got.dtype == np.float32 and got.shape == (12, 1024)
    assert rel_to_norm(got, torch_embed(model, tokens)) < TOLERANCE
    assert fixture_rel(got, REF["text_emb_f64"]) < 1e-5  # the bound the torch tower meets (tests/test_model.py)
    # One at a time (as a search runs it) and in one padded batch give the same vectors.
    assert rel_to_norm(np.concatenate([tower.embed_text([c]) for c in captions]), got) < TOLERANCE
    assert rel_to_norm(tower.encode(tokens), got) < TOLERANCE


@pytest.mark.parametrize(
    "stride", [pytest.param(50, id="every-50th"), pytest.param(1, id="all", marks=pytest.mark.slow)]
)
def test_clotho_evaluation_captions_at_full_size(full: tuple[TextTower, TextEncoder], stride: int) -> None:
    tower, model = full
    captions = load_split(DATA / "clotho", need_audio=False).captions
    assert len(captions) == 5225
    captions = captions[::stride]
    threads = torch.get_num_threads()
    # One thread each: on a busy 2-core machine a second spinning thread makes both towers ~1.7x slower, not faster.
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            got = tower.embed_text(captions)
            want = torch_embed(model, tokenize_np(captions))
    finally:
        torch.set_num_threads(threads)
    assert rel_to_norm(got, want) < TOLERANCE


def test_heads_come_from_the_config(tmp_path: Path) -> None:
    # TINY has 2 heads of 16 channels; CLIP's rule (one head per 64 channels) would give 1: both must be honoured.
    state = {k: v for k, v in synthetic_state_dict(TINY).items() if checkpoint.tower_or_none(k) == "text"}
    save_file(state, tmp_path / "tiny.safetensors")
    model = from_state_dict(state, TINY, ["text"])
    tokens = tokenize_np(["a dog barks", "rain on a tin roof, then thunder"])
    want = torch_embed(model, tokens)
    assert rel_to_norm(load_text_tower(tmp_path / "tiny.safetensors", TINY.text.heads).encode(tokens), want) < TOLERANCE
    assert rel_to_norm(load_text_tower(tmp_path / "tiny.safetensors").encode(tokens), want) > 1e-3


def test_misfit_files_are_refused_in_one_sentence(tmp_path: Path) -> None:
    state = {k: v for k, v in synthetic_state_dict(TINY).items() if checkpoint.tower_or_none(k) == "text"}
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "ln_final.bias"}, "missing ln_final.bias"),
        "half": ({**state, "text_projection": state["text_projection"].half()}, "not float32"),
        "shape": ({**state, "transformer.resblocks.1.mlp.c_fc.bias": torch.zeros(7)}, "wrong shape"),
    }
    for name, (tensors, needle) in cases.items():
        save_file(tensors, tmp_path / f"{name}.safetensors")
        with pytest.raises(WeightsError, match=needle) as e:
            load_text_tower(tmp_path / f"{name}.safetensors", 2)
        assert "\n" not in str(e.value)
    (tmp_path / "text.safetensors").write_text("not a safetensors file")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_text_tower(tmp_path / "text.safetensors")


def test_embedding_a_query_imports_no_torch(tmp_path: Path) -> None:
    state = {k: v for k, v in synthetic_state_dict(TINY).items() if checkpoint.tower_or_none(k) == "text"}
    save_file(state, tmp_path / "tiny.safetensors")
    code = (
        "import sys; from pathlib import Path; from audiofind.model.textnp import load_text_tower; "
        f"v = load_text_tower(Path({str(tmp_path / 'tiny.safetensors')!r}), 2).embed_text(['rain on a tin roof']); "
        "print(v.shape, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["(1,", "32)", "False"]
