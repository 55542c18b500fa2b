"""RoBERTa's byte-level BPE tokenizer (GPT-2's algorithm), numpy only: captions to (B, 77) ids and attention masks.

It reproduces what the reference runs, Hugging Face's RobertaTokenizer called with padding="max_length",
truncation=True, max_length=77: no lower-casing or other normalisation, no prefix space, <s> ... </s> then <pad>.
The special tokens are recognised inside a text, as Hugging Face's added tokens are ("a <pad> b" holds id 1).
"""

import itertools
import json
from pathlib import Path

import numpy as np
import regex

CONTEXT_LENGTH = 77
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
# GPT-2's pre-tokeniser: contractions, then runs of letters, digits or other symbols (each with one leading space),
# then whitespace; a run of spaces before a word leaves its last space to the word.
PRETOKENIZE = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
SPECIAL_SPLIT = regex.compile("(" + "|".join(regex.escape(t) for t in SPECIAL_TOKENS) + ")")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte encoder: every byte to a printable character, so BPE never sees spaces or control bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    remapped = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(remapped))]
    return dict(zip(printable + remapped, chars))


def merge_word(symbols: tuple[str, ...], ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """Apply merges to one pre-token, lowest rank first, each merge to every left-to-right occurrence of its pair."""
    while len(symbols) > 1:
        pairs = set(itertools.pairwise(symbols))
        best = min(pairs, key=lambda p: ranks.get(p, len(ranks)))
        if best not in ranks:
            break
        merged: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = tuple(merged)
    return symbols


class BPETokenizer:
    """Build it with load_tokenizer(folder); it caches the ids of each pre-token it has seen."""

    def __init__(
        self, vocab: dict[str, int], merges: list[tuple[str, str]], context_length: int = CONTEXT_LENGTH
    ) -> None:
        if missing := [t for t in SPECIAL_TOKENS if t not in vocab]:
            raise ValueError(f"the vocabulary lacks {', '.join(missing)}")
        self.vocab = vocab
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.context_length = context_length
        self.byte_encoder = bytes_to_unicode()
        self.bos, self.pad, self.eos, self.unk = (vocab[t] for t in ("<s>", "<pad>", "</s>", "<unk>"))
        self.cache: dict[str, list[int]] = {}

    def word_ids(self, word: str) -> list[int]:
        """Ids of one pre-token; a piece missing from the vocabulary (never, with a complete one) becomes <unk>."""
        if word not in self.cache:
            symbols = tuple(self.byte_encoder[b] for b in word.encode("utf-8"))
            self.cache[word] = [self.vocab.get(s, self.unk) for s in merge_word(symbols, self.ranks)]
        return self.cache[word]

    def text_ids(self, text: str) -> list[int]:
        """Ids of a text without <s> and </s>, untruncated; special tokens written in it are kept as such."""
        ids: list[int] = []
        for i, part in enumerate(SPECIAL_SPLIT.split(text)):
            if i % 2:  # the split's captured separators: a special token
                ids.append(self.vocab[part])
            else:
                ids += [t for word in PRETOKENIZE.findall(part) for t in self.word_ids(word)]
        return ids

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> ids (B, 77) int64 and attention mask (B, 77) int64: <s>, at most 75 tokens, </s>, <pad>s.

        An empty or blank text raises ValueError: it has no content to embed.
        """
        ids = np.full((len(texts), self.context_length), self.pad, dtype=np.int64)
        mask = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"text {row} is {'empty' if not text else 'blank'}: there is nothing to embed")
            tokens = [self.bos, *self.text_ids(text)[: self.context_length - 2], self.eos]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return ids, mask


def load_tokenizer(folder: Path, context_length: int = CONTEXT_LENGTH) -> BPETokenizer:
    """The tokenizer of a folder holding RoBERTa's vocab.json and merges.txt (the '#version' line is skipped)."""
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    split = [line.split(" ") for line in lines if line and not line.startswith("#version")]
    if bad := [m for m in split if len(m) != 2]:
        raise ValueError(f"{folder / 'merges.txt'} has a line that is not one pair: {' '.join(bad[0])!r}")
    merges = [(first, second) for first, second in split]
    return BPETokenizer(vocab, merges, context_length)
