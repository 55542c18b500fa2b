"""CLIP's byte-level BPE tokenizer: captions and queries to (B, 77) token ids for the text tower."""

import functools
import gc
import gzip
import html
import importlib.resources
from typing import TYPE_CHECKING

import numpy as np
import regex

if TYPE_CHECKING:
    import torch

SOT: int = 49406  # <|startoftext|>
EOT: int = 49407  # <|endoftext|>; the text tower pools at its position (the largest id in a row)
CONTEXT_LENGTH = 77
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # 48894: CLIP uses only this many of the file's merges, the rest are ignored

_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
# Order matters: specials and contractions before letter runs; digits one at a time.
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
)
_WHITESPACE = regex.compile(r"\s+")


@functools.lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte encoder: every byte to a printable character, so BPE never sees spaces or control bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    remapped = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(remapped))]
    return dict(zip(printable + remapped, chars))


def fix_text(text: str) -> str:
    """ftfy.fix_text, without importing ftfy (a tenth of a cold search) for printable ASCII, which it never changes."""
    # ftfy changes only mojibake and other non-ASCII, HTML entities, control characters and line breaks.
    if text.isascii() and text.isprintable() and "&" not in text:
        return text
    import ftfy

    return ftfy.fix_text(text)


def clean(text: str) -> str:
    """Normalise a caption the way CLIP does: fix mojibake, unescape HTML twice, collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class Tokenizer:
    """CLIP's SimpleTokenizer; build it once through get_tokenizer(), it caches BPE results per word."""

    def __init__(self, merges: list[tuple[str, str]]) -> None:
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab += [c + "</w>" for c in vocab]
        vocab += ["".join(pair) for pair in merges]
        vocab += list(_SPECIALS)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks = {pair: rank for rank, pair in enumerate(merges)}
        # Specials bypass BPE; seeding the cache is how CLIP keeps them whole.
        self._cache: dict[str, tuple[str, ...]] = {s: (s,) for s in _SPECIALS}

    @functools.cached_property
    def decoder(self) -> dict[int, str]:
        """Id -> vocabulary symbol, built on first use: only decode needs it, never a query."""
        return {i: token for token, i in self.encoder.items()}

    def bpe(self, word: str) -> tuple[str, ...]:
        """Split one byte-encoded pre-token into vocabulary symbols, the last one ending in </w>."""
        if word in self._cache:
            return self._cache[word]
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, N_MERGES))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        result = tuple(symbols)
        self._cache[word] = result
        return result

    def encode(self, text: str) -> list[int]:
        """BPE ids of a caption after cleaning, without SOT/EOT and without truncation."""
        ids: list[int] = []
        for piece in _PATTERN.findall(clean(text)):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(word))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text back from ids, for debugging (as CLIP's decode): word ends become spaces, specials appear as text."""
        text = "".join(self.decoder[int(i)] for i in ids)
        # "</w>" and the specials are made of printable bytes, so they survive the byte decoding as text.
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")


def load_merges() -> list[tuple[str, str]]:
    """The first N_MERGES merge rules of the packaged vocabulary file (line 0 is a header)."""
    resource = importlib.resources.files("audiofind") / "assets" / VOCAB_FILE
    # The used merges are the first fifth of the file: decompress only up to them (halves building the tokenizer).
    with resource.open("rb") as raw, gzip.open(raw) as f:
        data = b""
        while data.count(b"\n") <= N_MERGES and (chunk := f.read(1 << 18)):
            data += chunk
    lines = data[: data.rindex(b"\n")].decode("utf-8").split("\n")  # whole lines only: no UTF-8 sequence is cut
    return [(first, second) for first, second in (line.split() for line in lines[1 : N_MERGES + 1])]


@functools.lru_cache
def get_tokenizer() -> Tokenizer:
    """The tokenizer built from the packaged vocabulary, loaded once per process."""
    # Its 100k table entries hold no reference cycles, yet allocating them sets off collections that walk the whole
    # heap: pausing the collector takes 40% off the build (100 ms -> 60 ms of CPU in a search process).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return Tokenizer(load_merges())
    finally:
        if enabled:
            gc.enable()


def tokenize_np(texts: str | list[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """Captions to a (B, context_length) int64 array: SOT, ids, EOT, zero padding; long ones truncated."""
    if isinstance(texts, str):
        texts = [texts]  # one caption, never its characters
    if context_length < 2:
        raise ValueError(f"context_length must leave room for SOT and EOT, got {context_length}.")
    tokenizer = get_tokenizer()
    result = np.zeros((len(texts), context_length), dtype=np.int64)
    for row, text in enumerate(texts):
        ids = [SOT, *tokenizer.encode(text), EOT]
        if len(ids) > context_length:
            # Newer CLIP's truncate=True: keep the start, end with EOT so pooling still finds it.
            ids = ids[:context_length]
            ids[-1] = EOT
        result[row, : len(ids)] = ids
    return result


def tokenize(texts: str | list[str], context_length: int = CONTEXT_LENGTH) -> "torch.Tensor":
    """tokenize_np as a torch int64 tensor, for the torch towers."""
    import torch  # deferred: a search's query is tokenized without torch (audiofind.textnp)

    return torch.from_numpy(tokenize_np(texts, context_length))
