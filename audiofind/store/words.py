"""The names index seen from Python: a file's words, their stems, phrases and BM25, as SQLite's FTS5 computes them.

Each ok file has three columns of words (its folders below its root, its name, its text tags), each the
" ".join(audio.names.words(...)) of its texts. SQLite indexes them with FTS5's `porter unicode61` tokenizer and
ranks with FTS5's bm25(); a backend without FTS5 (PostgreSQL) stems here with that very tokenizer, borrowed from
APSW (already a dependency: the stems are the same code, not a second Porter stemmer), and scores here with the
same BM25 formula, so both backends find the same files and rank them the same.
"""

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePath
from typing import cast

import apsw

from audiofind.audio.formats import extension
from audiofind.audio.names import words

# The tags that say what a sound is or where it comes from; dates, track numbers, encoders and copyright do not.
TEXT_TAGS = ("title", "description", "comment", "genre", "artist", "album", "albumartist", "composer", "keywords",
             "originator")  # fmt: skip
# Three columns, so a phrase never runs from a folder into the name or from the name into a tag.
COLUMNS = ("folders", "name", "tags")
TOKENIZER = ("porter", ["unicode61", "remove_diacritics", "2"])  # what FTS5 is told; stems() uses the same
K1, B = 1.2, 0.75  # FTS5's bm25() constants


def file_words(
    path: str, root: str, tags: str | dict | None, part: int, container: str | None = None, codec: str | None = None
) -> str:
    """One column of a file's words: 0 its folders below root (top down), 1 its name, its extension and its format
    (container, codec: the content's facts, None where unknown), 2 its text tags (a dict or its JSON)."""
    try:
        parts = PurePath(path).relative_to(root).parts or (PurePath(path).name,)  # () when root is the file
    except ValueError:
        parts = (PurePath(path).name,)
    if part == 0:
        texts = list(parts[:-1])
    elif part == 1:
        # The extension and the format are words too: -mp3 leaves MP3s out, aiff finds an .aif, opus an .ogg. The
        # name goes without its extension, so one outside the default list (--ext tta) is not a word twice.
        ext = extension(parts[-1])
        texts = [parts[-1][: -len(ext) - 1] if ext else parts[-1], *format_names(ext, container, codec)]
    else:
        if isinstance(tags, str | None):
            try:
                tags = json.loads(tags or "{}")
            except ValueError:
                tags = {}
        texts = []
        for key in TEXT_TAGS:
            value = tags.get(key) if isinstance(tags, dict) else None
            texts += [value] if isinstance(value, str) else [str(v) for v in value or []]
    return " ".join(w for text in texts for w in words(text))


def format_names(ext: str, container: str | None, codec: str | None) -> list[str]:
    """A file's extension, then what its format is called where that says more: the container (`aiff` for an
    .aif) and the codec's family (`pcm` for pcm_s24le, `opus`, `aac`), each name once."""
    family = codec.split("_", 1)[0] if codec else None  # pcm_s16le, pcm_f32le -> pcm; adpcm_ima_wav -> adpcm
    names: list[str] = []
    for name in (ext, container, family):
        if name and name not in names:
            names.append(name)
    return names


@lru_cache(maxsize=1)
def _tokenizer() -> apsw.FTS5Tokenizer:
    # An in-memory database only lends its tokenizer; it holds nothing.
    return apsw.Connection(":memory:").fts5_tokenizer(*TOKENIZER)


@lru_cache(maxsize=65536)
def stems(text: str, query: bool = False) -> tuple[str, ...]:
    """The tokens FTS5 stores (or, with query, looks up) for text: `door creaks` -> ('door', 'creak')."""
    if not text:
        return ()
    flags = apsw.FTS5_TOKENIZE_QUERY if query else apsw.FTS5_TOKENIZE_DOCUMENT
    found = _tokenizer()(text.encode("utf-8"), flags, None, include_offsets=False, include_colocated=False)
    return tuple(cast(list[str], found))


def phrase(term: str) -> tuple[str, ...]:
    """A typed term as FTS5 matches it: the phrase of the stems of its name-words (`Kick808s` is kick 808)."""
    return stems(" ".join(words(term)), query=True)


@dataclass(frozen=True)
class Doc:
    """One file's stemmed columns, as the names index holds them."""

    columns: tuple[tuple[str, ...], ...]  # (folders, name, tags) stems

    @classmethod
    def of(cls, texts: tuple[str, str, str] | list[str]) -> "Doc":
        """From the three columns of words (file_words)."""
        return cls(tuple(stems(t) for t in texts))

    @property
    def size(self) -> int:
        """Tokens in all columns (FTS5's column size of the row)."""
        return sum(len(c) for c in self.columns)

    def count(self, p: tuple[str, ...]) -> int:
        """Instances of phrase p, within one column each (FTS5's xInst count for the row)."""
        n = len(p)
        if not n:
            return 0
        return sum(1 for c in self.columns for i in range(len(c) - n + 1) if c[i : i + n] == p)

    def holds(self, p: tuple[str, ...]) -> bool:
        """Whether phrase p appears (an empty phrase appears nowhere)."""
        return self.count(p) > 0


def idf(rows: int, hits: int) -> float:
    """FTS5's inverse document frequency of a phrase found in hits of rows documents."""
    value = math.log((rows - hits + 0.5) / (hits + 0.5))
    return value if value > 0.0 else 1e-6


def bm25(doc: Doc, phrases: list[tuple[str, ...]], idfs: list[float], avgdl: float) -> float:
    """FTS5's bm25() of doc for these phrases, as a relevance (higher is better): the negation of what FTS5 returns,
    computed in the same order with the same doubles."""
    d = float(doc.size)
    score = 0.0
    for p, weight in zip(phrases, idfs):
        freq = float(doc.count(p))
        score += weight * ((freq * (K1 + 1.0)) / (freq + K1 * (1 - B + B * d / avgdl)))
    return score
