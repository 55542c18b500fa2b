"""Words from the names people give sounds: the one splitter for library captions and the full-text index.

`DOORWood_Creak Slow Old Barn_JD_01.wav` is the words door wood creak slow old barn jd 01: CamelCase and the
upper-case category ids of the Universal Category System (UCS) are split where the case changes, letters from
digits (`Kick808` is kick 808), and at every other character that is neither (underscores, hyphens, dots,
spaces). A format's name that mixes letters and digits stays one word (`Kick_MP3` is kick mp3, `.m4a` is m4a),
so the letter of `m4a` is never the word "a". Case and accents are folded, so `Café` and `CAFE` are one word. A
full-text index stores " ".join(words).
"""

import unicodedata
from pathlib import Path

import regex

from audiofind.audio import formats

# An upper-case run before a capitalised word (DOOR|Wood), a capitalised or lower-case word, an upper-case run,
# a run of digits. Letters without case (CJK, Arabic) count as lower case, so they stay whole words.
_WORD = regex.compile(
    r"[\p{Lu}\p{Lt}]+(?=[\p{Lu}\p{Lt}][\p{Ll}\p{Lm}\p{Lo}])|[\p{Lu}\p{Lt}]?[\p{Ll}\p{Lm}\p{Lo}]+"
    r"|[\p{Lu}\p{Lt}]+|\p{Nd}+"
)
_RUN = regex.compile(r"[\p{L}\p{Nd}]+")  # letters and digits between separators: _WORD never spans two
# Words of a name that say which recording, not what it sounds like (take 3, tk2, v2 -> v 2, final, alt).
TAKE_MARKERS = frozenset({"take", "tk", "ver", "version", "final", "alt", "copy"})
MIN_WORDS = 2  # a caption with fewer real words says too little to learn from or to score


def fold(text: str) -> str:
    """Text without accents (NFKD, combining marks dropped), case kept for the splitter."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(name: str) -> list[str]:
    """The words of a file name, folder name or tag, lower case and accent-free; an audio extension is dropped."""
    stem, dot, ext = name.rpartition(".")
    if dot and ext.lower() in formats.AUDIO_EXTS:
        name = stem
    found = []
    for run in _RUN.findall(fold(name)):
        whole = run.casefold()
        found += [whole] if whole in formats.FORMAT_WORDS else [w.casefold() for w in _WORD.findall(run)]
    return found


def real_words(found: list[str]) -> list[str]:
    """The words that describe a sound: not numbers, not single letters, not take markers."""
    return [w for w in found if not w.isdigit() and len(w) > 1 and w not in TAKE_MARKERS]


def is_thin(found: list[str]) -> bool:
    """Whether these words say too little about a sound: fewer than MIN_WORDS real words."""
    return len(real_words(found)) < MIN_WORDS


CAPTION_TAGS = ("title", "description", "comment")  # the tags that describe a sound, not who made it or where


def caption_words(path: str, root: str, tags: dict[str, str | list[str]]) -> list[str]:
    """A library file's words, each once: its name, its folders below root (nearest first), then its describing tags."""
    try:
        parts = Path(path).relative_to(root).parts or (Path(path).name,)  # () when the root is the file itself
    except ValueError:
        parts = (Path(path).name,)
    texts = [parts[-1], *reversed(parts[:-1])]
    for key in CAPTION_TAGS:
        value = tags.get(key)
        texts += [value] if isinstance(value, str) else list(value or [])
    return list(dict.fromkeys(w for text in texts for w in words(text)))
