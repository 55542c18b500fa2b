"""Search by sound and by name together: the audio ranking, the BM25 ranking of names and tags, and their fusion.

`audio` is the embedding search alone; `text` ranks by file names, folders and tags (BM25 over the full-text
index) and never loads a model; `hybrid` fuses both per file with reciprocal rank fusion to the same depth: a file
scores sum(1 / (RRF_K + rank)) over the rankings that hold it, so a file both find rises, and a file only one finds
still appears. Fusing ranks, not scores, needs no calibration between cosines and BM25. Then the names have the
last word: files whose folders, name or tags hold every content word of the query come before files only the sound
found, as people who name their libraries expect (BaseHead and Soundminer rank by names alone, CLAP tools by sound
alone). The score shown is the fused one scaled so that first place in both rankings is 1.0.

Stop words ("a", "on", "the") are the sound side's alone when a query has other words: the names side never ranks a
file, nor calls it named, for holding them.

The syntax means the same in every mode: a "quoted phrase" must appear in a file's names or tags, a -word must not.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from audiofind.errors import UsageError
from audiofind.search.embedding import QueryModel, search_like, search_text
from audiofind.search.query import content_terms, names_query, parse, sound_text
from audiofind.store import Filters, Hit, NameQuery, Store

MODES = ("hybrid", "audio", "text")
LIMITLESS = 1 << 31  # every file that holds a phrase
RRF_K = 60  # the constant of Cormack et al. (2009): damps the head so one ranking's first place cannot win alone
DEPTH = 100  # files taken from each ranking before fusing (k, when more are asked)
TOP = 2.0 / (RRF_K + 1)  # the fused score of a file first in both rankings: shown as 1.0
NOT_WEIGHT = 0.5  # --not: the query vector minus this times the unit vector of the other description


@dataclass(frozen=True)
class Why:
    """Why a file was found: its place and score in the audio ranking, its place by names, the terms it holds."""

    audio_rank: int | None
    audio_score: float | None
    text_rank: int | None
    terms: list[str]
    all_terms: bool = False  # its names or tags hold every content word of the query (stop words aside)

    def text(self) -> str:
        """Why, for people: "named" (every word), the words its names hold, and its place by sound."""
        parts = ["named" if self.all_terms else ", ".join(self.terms)] if self.terms else []
        return " · ".join([*parts, *([f"sound #{self.audio_rank}"] if self.audio_rank else [])])


@dataclass(frozen=True)
class Found:
    """A search result: the hit (score is the mode's: cosine, -BM25 or the fused score) and why."""

    hit: Hit
    why: Why

    def as_dict(self) -> dict:
        """The object `search --json` prints: the hit's fields and "why"."""
        return asdict(self.hit) | {"why": asdict(self.why)}


def rank_query(
    index: Store,
    query: str,
    k: int = 20,
    filters: Filters | None = None,
    mode: str = "hybrid",
    encoder: QueryModel | Callable[[], QueryModel] | None = None,
    not_: str | None = None,
) -> list[Found]:
    """The k files best matching query in this mode, best first; encoder (or a function giving it) only if needed."""
    if mode not in MODES:
        raise UsageError(f"The mode must be one of {', '.join(MODES)}, got {mode!r}.")
    q = parse(query)
    if not q.terms:
        raise UsageError("The query is empty; describe the sound you are looking for, or use --like FILE.")
    if not_ is not None and not not_.strip():
        raise UsageError("--not needs a description of the sound to move away from.")
    depth = max(k, DEPTH)
    if q.phrases:  # a phrase is a requirement in every mode: the sound side chooses among the files that hold it
        holders = index.search_names(NameQuery(phrases=q.phrases, excluded=q.excluded), LIMITLESS, filters)
        if not holders:
            return []
        filters = replace(filters or Filters(), paths=frozenset(h.path for h in holders))
    audio: list[Hit] = []
    if mode != "text":
        audio = _audio_without(index, _resolve(encoder), sound_text(query, q), not_, depth if mode == "hybrid" else k,
                               filters, q.excluded)  # fmt: skip
    names = index.search_names(names_query(q), depth, filters)  # stop words aside, unless they are all it has
    a_rank = {h.path: (i, h) for i, h in enumerate(audio, 1)}
    t_rank = {h.path: (i, h) for i, h in enumerate(names, 1)}
    if mode == "audio":
        ranked = audio
    elif mode == "text":
        ranked = names
    else:
        ranked = fuse(audio, names)
    content = content_terms(q)
    held = index.names_holding(content, [h.path for h in ranked])
    complete = {path for path, terms in held.items() if content and set(content) <= set(terms)}
    if mode == "hybrid":  # names first: every content word held beats any sound-only match; stable within each
        ranked = sorted(ranked, key=lambda h: h.path not in complete)
    found = []
    for h in ranked[:k]:
        ar, ah = a_rank.get(h.path, (None, None))
        tr = t_rank[h.path][0] if h.path in t_rank else None
        why = Why(ar, ah.score if ah else None, tr, held.get(h.path, []), h.path in complete)
        found.append(Found(replace(h, score=h.score / TOP) if mode == "hybrid" else h, why))
    return found


def like_file(
    index: Store, encoder: QueryModel, path: Path, k: int = 20, filters: Filters | None = None
) -> list[Found]:
    """Files that sound like FILE (`search --like`), with why."""
    hits = search_like(index, encoder, path, k, filters)
    return [Found(h, Why(i, h.score, None, [], False)) for i, h in enumerate(hits, 1)]


def _resolve(encoder: QueryModel | Callable[[], QueryModel] | None) -> QueryModel:
    if encoder is None:
        raise UsageError("Searching by sound needs a model; give one, or search names alone with --mode text.")
    return encoder if isinstance(encoder, QueryModel) else encoder()


def _audio_without(index: Store, encoder: QueryModel, query: str, not_: str | None, k: int, filters: Filters | None,
                   excluded: list[str]) -> list[Hit]:  # fmt: skip
    """The k best files by sound whose names hold none of the excluded words: asks for more while they fall short."""
    n = 2 * k if excluded else k
    while True:
        hits = _audio(index, encoder, query, not_, n, filters)
        held = index.names_holding(excluded, [h.path for h in hits]) if excluded else {}
        kept = [h for h in hits if not held.get(h.path)]
        if len(kept) >= k or len(hits) < n:  # enough, or nothing more to find
            return kept[:k]
        n *= 4


def _audio(
    index: Store, encoder: QueryModel, query: str, not_: str | None, n: int, filters: Filters | None
) -> list[Hit]:
    from audiofind.store import vectors as vec

    if not_ is None:
        return search_text(index, encoder, query, n, filters)
    wanted, other = vec.normalize(encoder.embed_text([query, not_]))
    return index.search((wanted - NOT_WEIGHT * other)[None], n, filters)


def fuse(audio: list[Hit], names: list[Hit]) -> list[Hit]:
    """Reciprocal rank fusion of two rankings, best first; the audio hit (best segment and its time range) is kept
    where there is one, with the fused score."""
    a_rank = {h.path: (i, h) for i, h in enumerate(audio, 1)}
    t_rank = {h.path: (i, h) for i, h in enumerate(names, 1)}
    fused = []
    for path in a_rank.keys() | t_rank.keys():
        ranks = [x[0] for x in (a_rank.get(path), t_rank.get(path)) if x is not None]
        score = sum(1.0 / (RRF_K + r) for r in ranks)
        hit = replace(a_rank[path][1] if path in a_rank else t_rank[path][1], score=score)
        # Ties (one ranking's place against the other's) go to the names, then the sound, then the path.
        key = (
            -score,
            t_rank[path][0] if path in t_rank else 1 << 30,
            a_rank[path][0] if path in a_rank else 1 << 30,
            path,
        )
        fused.append((key, hit))
    return [hit for _, hit in sorted(fused, key=lambda x: x[0])]
