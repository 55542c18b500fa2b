"""CLAP's numpy text tower against the torch one (full size on the fixture, tiny through a safetensors file), its
erf against math.erf, and a query embedded without torch."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from audiofind.errors import WeightsError
from audiofind.model.clap.bpe import load_tokenizer
from audiofind.model.clap.config import CLAP_TINY
from audiofind.model.clap.textnp import erf, gelu, load_text_tower, tower_from_tensors
from clapkit import REF, VOCAB, full_model, full_state_dict, tiny_model, tiny_state_dict

TEXT_PREFIXES = ("text_branch.", "text_projection.")


def text_tensors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if k.startswith(TEXT_PREFIXES)}


def test_full_size_equals_torch_and_reference() -> None:
    tower = tower_from_tensors({k: v.numpy() for k, v in text_tensors(full_state_dict()).items()})
    ids, mask = REF["text_input_ids"], REF["text_attention_mask"]
    got = tower.embed_text(ids, mask)
    with torch.inference_mode():
        want = full_model().embed_text(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert got.dtype == np.float32 and got.shape == (6, 512)
    assert np.abs(got - want).max() < 1e-5  # 2.1e-7 measured
    assert np.abs(got - REF["text_emb"]).max() < 1e-5
    # One text at a time, as a search runs it, gives the same vectors.
    one = np.concatenate([tower.embed_text(ids[i], mask[i]) for i in range(len(ids))])
    assert np.abs(one - got).max() < 1e-6


def test_erf_matches_math_erf() -> None:
    rng = np.random.RandomState(0)
    x = np.concatenate(
        [np.linspace(-7, 7, 140001), rng.randn(20000) * 3, rng.randn(1000) * 1e-3, [0.0, -0.0, 6.0, 1e-300]]
    )
    want = np.array([math.erf(v) for v in x])
    got = erf(x)
    assert np.abs(got - want).max() <= 2.3e-16  # 1.1e-16 measured
    small = np.abs(want) < 1e-2
    assert (np.abs(got - want)[small] / np.abs(want[small]).clip(1e-300)).max() < 1e-15  # relative, near 0
    assert list(erf(np.array([np.inf, -np.inf, 50.0]))) == [1.0, -1.0, 1.0] and np.isnan(erf(np.array([np.nan])))[0]
    assert erf(np.float32([0.5])).dtype == np.float64


def test_gelu_matches_torch() -> None:
    x = np.linspace(-10, 10, 100001, dtype=np.float32)
    got = gelu(x)
    assert got.dtype == np.float32
    assert np.abs(got - torch.nn.functional.gelu(torch.from_numpy(x)).numpy()).max() < 2e-6


def test_tiny_file_equals_torch(tmp_path: Path) -> None:
    save_file(text_tensors(tiny_state_dict()), tmp_path / "tiny.safetensors")
    tower = load_text_tower(tmp_path / "tiny.safetensors", CLAP_TINY.text.heads)
    ids, mask = load_tokenizer(VOCAB).encode(["a dog barks", "rain on a tin roof, then thunder", "wind"])
    with torch.inference_mode():
        want = tiny_model().embed_text(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert np.abs(tower.embed_text(ids, mask) - want).max() < 1e-6
    # CLAP's rule of one head per 64 channels would give 1 head to width 32: the given 2 must be used.
    assert np.abs(load_text_tower(tmp_path / "tiny.safetensors").embed_text(ids, mask) - want).max() > 1e-4


def test_misfit_files_are_refused_in_one_sentence(tmp_path: Path) -> None:
    state = text_tensors(tiny_state_dict())
    cases = {
        "missing": (
            {k: v for k, v in state.items() if k != "text_projection.2.bias"},
            "missing text_projection.2.bias",
        ),
        "no_layers": ({k: v for k, v in state.items() if ".encoder." not in k}, "missing text_branch.encoder.layer"),
        "half": ({**state, "text_projection.0.weight": state["text_projection.0.weight"].half()}, "not float32"),
        "shape": ({**state, "text_branch.encoder.layer.1.intermediate.dense.bias": torch.zeros(7)}, "wrong shape"),
    }
    for name, (tensors, needle) in cases.items():
        save_file(tensors, tmp_path / f"{name}.safetensors")
        with pytest.raises(WeightsError, match=needle) as e:
            load_text_tower(tmp_path / f"{name}.safetensors", 2)
        assert "\n" not in str(e.value)


def test_a_query_is_embedded_without_torch(tmp_path: Path) -> None:
    save_file(text_tensors(tiny_state_dict()), tmp_path / "tiny.safetensors")
    root = Path(__file__).parents[1]
    code = (
        "import sys; from pathlib import Path; "
        "from audiofind.model.clap.bpe import load_tokenizer; from audiofind.model.clap.textnp import load_text_tower; "
        f"ids, mask = load_tokenizer(Path({str(VOCAB)!r})).encode(['rain on a tin roof']); "
        f"v = load_text_tower(Path({str(tmp_path / 'tiny.safetensors')!r}), 2).embed_text(ids, mask); "
        "print(v.shape, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert done.stdout.split() == ["(1,", "32)", "False"]
