"""Reading what a person typed: `-word` leaves files out, `"a phrase"` must appear, the rest are words.

The same reading serves every mode and every backend: the names side gets the parsed query (store.NameQuery), the
sound side the query's text without its syntax.
"""

import regex

from audiofind.audio.names import words
from audiofind.store.records import NameQuery

# Words that say nothing about a sound: a query of these alone has no content words.
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "in",
        "into",
        "is",
        "it",
        "its",
        "of",
        "off",
        "on",
        "onto",
        "or",
        "over",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "this",
        "through",
        "to",
        "under",
        "up",
        "very",
        "was",
        "with",
    ]
)
_TOKEN = regex.compile(r'(-?)"([^"]*)"?|(-?)(\S+)')  # "a phrase", -"a phrase", -word, word


def parse(query: str) -> NameQuery:
    """Read -word, "phrase" and plain words from a query; a lone '-' or empty quotes count for nothing."""
    q = NameQuery()
    for m in _TOKEN.finditer(query or ""):
        if m.group(2) is not None:
            neg, text, phrase = m.group(1), m.group(2).strip(), True
        else:
            neg, text, phrase = m.group(3), m.group(4), False
        if not words(text):
            continue
        (q.excluded if neg else q.phrases if phrase else q.words).append(text)
    return q


def sound_text(query: str, q: NameQuery) -> str:
    """What the sound side embeds: the query itself when it has no syntax, else its terms without it."""
    return query if not (q.phrases or q.excluded) else " ".join(q.terms)


def content_terms(q: NameQuery) -> list[str]:
    """The terms that must all be in a file's names for it to rank as named: the words that are not stop words
    (as typed: the names index stems them), and every phrase; a query of stop words alone has only those."""
    content = [w for w in q.words if words(w) and not set(words(w)) <= STOP_WORDS] + q.phrases
    return content or q.terms


def names_query(q: NameQuery) -> NameQuery:
    """What the names side searches: q without its stop words, so a file whose names hold only "a" or "on" is no
    match (a query of stop words alone keeps them: they are all it says)."""
    content = content_terms(q)
    return NameQuery([w for w in q.words if w in content], q.phrases, q.excluded)
