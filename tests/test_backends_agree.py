"""The same library in SQLite and in PostgreSQL answers every search the same: the same files in the same order,
scores within 1e-6 (sound) and equal (names, BM25 as FTS5 computes it), with and without filters."""

from pathlib import Path

import numpy as np
import pytest

from audiofind.store import AudioRow, FileRow, Filters, ModelBinding, NameQuery, Store, open_store
from audiofind.store import vectors as vec

pytestmark = pytest.mark.postgres

D = 32
VOCAB = ["door", "doors", "creak", "creaking", "creaks", "slow", "old", "barn", "wood", "wooden", "kick", "808",
         "snare", "rain", "roof", "wind", "howl", "metal", "gate", "slam", "hinge", "water", "creek", "café", "Björk",
         "UCS", "DOORWood", "Kick808", "take", "2"]  # fmt: skip


RATES = [44100, 48000, 96000]


def build(ix: Store, root: Path, seed: int = 0) -> list[np.ndarray]:
    """A library with copies, shared words, tags, folders and durations, written in one fixed order."""
    rng = np.random.default_rng(seed)
    data = vec.synthetic(700, D, queries=10, seed=seed)
    ix.bind_model(ModelBinding("tiny", "ab" * 32, D, 5.0, 2.5))
    n_files = int(data.file_of[-1]) + 1
    for f in range(n_files):
        words = rng.choice(VOCAB, size=rng.integers(1, 5))
        folder = rng.choice(["Foley/Doors", "Foley/UCS", "Drums", "Ambience", "Ambience/Rain"])
        name = "_".join(words) + f"_{f:03d}." + rng.choice(["wav", "flac", "WAV"])
        tags: dict = {}
        if f % 3 == 0:
            tags["title"] = " ".join(rng.choice(VOCAB, size=3))
        if f % 4 == 0:
            tags["artist"] = ["Björk", "Sigur Rós"] if f % 8 == 0 else "Dog"
        if f % 5 == 0:
            tags["keywords"] = list(rng.choice(VOCAB, size=2))
        v = data.vectors[data.file_of == f]
        spans = [(2.5 * i, 2.5 * i + 5.0) for i in range(len(v))]
        h = f"{f:064x}"
        row = FileRow(str(root / folder / name), str(root), 100 + f, f, h, tags=tags)
        ext = name.rsplit(".", 1)[1].lower()
        facts = ("wav", "pcm_s24le", 24) if ext == "wav" else ("flac", "flac", 16)
        ix.add_file(row, AudioRow(h, 2.5 * len(v) + 2.5, RATES[f % 3], 1 + f % 2, *facts), spans, v)
        if f % 7 == 0:  # a copy elsewhere: the same vectors, its own name
            ix.add_file(FileRow(str(root / "Copies" / f"copy_{name}"), str(root), 1, 1, h))
    ix.touch_root(root)
    return list(data.queries)


@pytest.fixture
def pair(pg_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    root = tmp_path / "Library"
    with open_store(tmp_path / "index.db", create=True) as lite, open_store(pg_url, create=True) as pg:
        queries = build(lite, root)
        build(pg, root)
        yield lite, pg, queries, root


def test_both_freeze_the_same_code_centre_and_codes(pg_url: str, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from audiofind.store.postgres import rows
    from audiofind.store.sqlite import files

    monkeypatch.setattr(rows, "CENTRE_AFTER", 300)
    monkeypatch.setattr(files, "CENTRE_AFTER", 300)
    with open_store(tmp_path / "index.db", create=True) as lite, open_store(pg_url, create=True) as pg:
        for ix in (lite, pg):
            build(ix, tmp_path / "Library")
        centres = [next(iter(ix.dump())).centre for ix in (lite, pg)]
        assert centres[0] is not None and centres[0].tobytes() == centres[1].tobytes()
        codes_lite = sorted((h, s, bytes(c)) for h, s, c in lite.conn.execute("SELECT hash, start, code FROM segments"))
        found = pg.db.execute("SELECT hash, start, code FROM segments").fetchall()
        codes_pg = sorted((h, s, int(str(c), 2).to_bytes(D // 8, "big") + bytes(-(D // 8) % 8)) for h, s, c in found)
        assert codes_lite == codes_pg


def same_hits(a: list, b: list, tol: float) -> None:
    assert [h.path for h in a] == [h.path for h in b]
    facts = lambda h: (h.start, h.end, h.duration, h.hash, h.tags, h.format, h.codec, h.sample_rate, h.bits,
                       h.channels, h.available)  # fmt: skip
    assert [facts(h) for h in a] == [facts(h) for h in b]
    assert np.allclose([h.score for h in a], [h.score for h in b], atol=tol, rtol=0)


def some_paths(ix: Store, root: Path) -> frozenset[str]:
    """Every third file of the library, and a path the index does not hold (a hybrid search's phrase holders)."""
    return frozenset([r.path for r in ix.files_under([root])][::3] + [str(root / "not" / "there.wav")])


def test_sound_searches_agree(pair) -> None:  # type: ignore[no-untyped-def]
    lite, pg, queries, root = pair
    filters = [None, Filters(under=str(root / "Ambience")), Filters(exts=frozenset({"wav"})), Filters(min_duration=10.0),
               Filters(tags={"artist": "björk"}), Filters(under=str(root / "Copies"), max_duration=12.0),
               Filters(min_rate=48000), Filters(channels=2, min_rate=96000), Filters(paths=some_paths(lite, root)),
               Filters(paths=some_paths(lite, root), channels=1)]  # fmt: skip
    for f in filters:
        for q in [*queries[:6], np.stack(queries[6:9])]:  # single queries and one (3, D) set
            for exact in (None, True):
                found = lite.search(q, 15, f, exact=exact)
                assert found, (f, exact)
                same_hits(found, pg.search(q, 15, f, exact=exact), 1e-6)


NAME_QUERIES = [
    NameQuery(words=["door"]), NameQuery(words=["door", "creak"]), NameQuery(words=["creaks", "808"]),
    NameQuery(words=["kick808"]), NameQuery(phrases=["door creak"]), NameQuery(words=["wood"], phrases=["old barn"]),
    NameQuery(words=["rain", "roof", "water"], excluded=["creek"]), NameQuery(words=["björk", "cafe"]),
    NameQuery(words=["doors", "doorwood"]), NameQuery(words=["ambience"]), NameQuery(words=["take", "2"]),
    NameQuery(words=["copy"]), NameQuery(words=["slow", "slow"]), NameQuery(phrases=["gate slam"], excluded=["metal"]),
    # words of the files' formats (pcm_s24le in a .wav), beside their names
    NameQuery(words=["pcm", "door"]), NameQuery(words=["door", "creak"], excluded=["pcm"]), NameQuery(phrases=["wav pcm"]),
]  # fmt: skip


@pytest.mark.parametrize("filters", [None, Filters(under="Library/Drums"), Filters(exts=frozenset({"flac"})),
                                     Filters(min_rate=48000, channels=1), "paths"])  # fmt: skip
def test_name_searches_agree(pair, filters, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    lite, pg, _, root = pair
    monkeypatch.chdir(root.parent)
    if filters == "paths":
        filters = Filters(paths=some_paths(lite, root))
    rng = np.random.default_rng(7)
    fuzz = [NameQuery(words=list(rng.choice(VOCAB, rng.integers(1, 4))), phrases=[" ".join(rng.choice(VOCAB, 2))] if i % 3 == 0 else [],
                      excluded=[str(rng.choice(VOCAB))] if i % 4 == 0 else []) for i in range(40)]  # fmt: skip
    matched = 0
    for q in NAME_QUERIES + fuzz:
        found = lite.search_names(q, 25, filters)
        matched += bool(found)
        same_hits(found, pg.search_names(q, 25, filters), 1e-12)
        paths = [h.path for h in found]
        assert lite.names_holding(q.terms, paths) == pg.names_holding(q.terms, paths)
    assert matched > 20  # the queries find things: agreement on empty lists proves little
