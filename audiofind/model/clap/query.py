"""A CLAP model's text side without torch, for a search's one query: our BPE tokenizer and the numpy RoBERTa tower
over the memory-mapped weights (textnp.py), as audiofind/model/textnp.py is for AudioCLIP."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiofind.errors import UsageError
from audiofind.model.clap.bpe import BPETokenizer, load_tokenizer
from audiofind.model.clap.textnp import RobertaTower, load_text_tower


@dataclass(frozen=True)
class ClapTextModel:
    """Captions to CLAP text vectors in numpy; load it with load_text_model."""

    tokenizer: BPETokenizer
    tower: RobertaTower

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self.tower.dim

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> (B, dim) float32 unit vectors, equal to ClapEncoder.embed_text within 1e-5."""
        return self.tower.embed_text(*encode_texts(self.tokenizer, texts))


def encode_texts(tokenizer: BPETokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """tokenizer.encode, with an empty or blank caption refused as a UsageError (as an empty query always was)."""
    try:
        return tokenizer.encode(list(texts))
    except ValueError as e:
        raise UsageError(f"Cannot embed that caption: {e}.") from None


def load_text_model(
    weights_file: Path, tokenizer: Path, heads: int | None = None, context_length: int = 77
) -> ClapTextModel:
    """The text side of a CLAP safetensors file and its tokenizer folder (vocab.json, merges.txt)."""
    return ClapTextModel(load_tokenizer(tokenizer, context_length), load_text_tower(weights_file, heads))
