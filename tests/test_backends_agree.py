"""The same library in SQLite and in PostgreSQL answers every search the same: the same files in the same order,
scores within 1e-6 (sound) and equal (names, BM25 as FTS5 computes it), with and without filters: through the store
on a synthetic library, and through `audiofind index` and `search --json` (--like, hybrid and sound, filtered)."""

import json
from pathlib import Path

import audiogen as ag
import numpy as np
import pytest
from typer.testing import CliRunner

from audiofind.cli import app
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
        name = "_".join(words) + f"_{f:03d}." + rng.choice(["wav", "flac", "WAV", "m4a"])
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
        facts = {"wav": ("wav", "pcm_s24le", 24), "flac": ("flac", "flac", 16), "m4a": ("m4a", "aac", None)}[ext]
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
    # a format's name is one word (m4a, not m 4 a)
    NameQuery(words=["m4a", "door"]), NameQuery(words=["a", "4"]), NameQuery(phrases=["m4a aac"], excluded=["kick"]),
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


def test_a_format_name_is_one_word_on_both_backends(pair) -> None:  # type: ignore[no-untyped-def]
    lite, pg, _, root = pair
    m4a = {r.path for r in lite.files_under([root]) if r.path.endswith(".m4a")}
    for ix in (lite, pg):
        assert {h.path for h in ix.search_names(NameQuery(words=["m4a"]), 1000)} == m4a and m4a
        assert not any(h.path.endswith(".m4a") for h in ix.search_names(NameQuery(words=["a", "4", "m"]), 1000))


# The same through the command line: a folder indexed by `audiofind index` into each backend, then `search --json`
# with --like and with filters, hybrid and sound alone.

SOUNDS = {  # path under the library -> (signal, tags for a FLAC)
    "Doors/Door_Creak_Slow.flac": (lambda: ag.chirp(200, 900, 3.0), {"genre": "Foley", "artist": "Björk"}),
    "Doors/Door_Creak_Fast.wav": (lambda: ag.chirp(300, 1200, 1.2), None),
    "Doors/Old_Barn_Door.flac": (lambda: ag.square(110, 2.4), {"genre": "Foley"}),
    "Doors/Gate_Slam_Metal.wav": (lambda: ag.noise(0.8, seed=4), None),
    "Rain/Rain_On_Roof.flac": (lambda: ag.noise(4.0, seed=1, amp=0.3), {"genre": "Ambience"}),
    "Rain/Rain_Door_Window.wav": (lambda: ag.noise(2.0, seed=2, amp=0.4), None),
    "Rain/Creek_Water.flac": (lambda: ag.noise(1.6, seed=3, amp=0.2), {"genre": "Ambience; Nature", "artist": "Dog"}),
    # Three 10 s windows, noise then a low tone: each of its windows is the nearest to some files (--like with several)
    "Rain/Storm_Long.wav": (lambda: np.concatenate([ag.noise(8.0, seed=11, amp=0.3), ag.sine(90, 9.0)], axis=1), None),
    "Drums/Kick808_Door.wav": (lambda: ag.sine(60, 1.0), None),
    "Drums/Snare_Crack.flac": (lambda: ag.square(180, 0.6), {"genre": "Drums"}),  # written at 48 kHz
    "Drums/Tom_Low.wav": (lambda: ag.sine(90, 2.2, channels=2), None),
}


@pytest.fixture
def indexed(pg_url: str, tmp_path: Path) -> tuple[Path, list[str]]:
    """The library, indexed by `audiofind index` into an SQLite file and into PostgreSQL: (library, both --db)."""
    import mutagen.flac
    from modelkit import register_tiny

    lib = tmp_path / "Library"
    for name, (signal, tags) in SOUNDS.items():
        path = lib / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ag.write_audio(path, signal(), sr=48000 if "Snare" in name else ag.SAMPLE_RATE)
        if tags:
            flac = mutagen.flac.FLAC(path)
            flac.update(tags)
            flac.save()
    (lib / "Copies").mkdir()
    for name in ("Doors/Door_Creak_Fast.wav", "Rain/Creek_Water.flac"):  # copies: the same vectors, other names
        (lib / "Copies" / Path(name).name.replace("_", "_Copy_", 1)).write_bytes((lib / name).read_bytes())
    register_tiny()
    dbs = [str(tmp_path / "index.db"), pg_url]
    for db in dbs:
        cli("index", lib, "--db", db, "-w", "tiny")
    return lib, dbs


def cli(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return result.stdout


K = 10  # hits asked for: more than any filter below leaves, so a file let through wrongly shows (13 files in all)


def agree(dbs: list[str], *args: object) -> list[dict]:
    """`search ARGS --json` on each backend: the same hits in the same order, fields equal, scores within 1e-6."""
    lite, pg = (json.loads(cli("search", *args, "--json", "-w", "tiny", "-k", str(K), "--db", db)) for db in dbs)
    assert [h["path"] for h in lite] == [h["path"] for h in pg], args
    without_score = lambda hits: [{k: v for k, v in h.items() if k != "score"} for h in hits]
    assert without_score(lite) == without_score(pg), args
    assert np.allclose([h["score"] for h in lite], [h["score"] for h in pg], atol=1e-6, rtol=0), args
    return lite


def test_like_searches_agree_through_the_command_line(indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lib, dbs = indexed
    outside = ag.write_audio(tmp_path / "outside.wav", ag.chirp(2500, 150, 12.0))  # not indexed: embedded to search
    for like in (
        lib / "Doors/Door_Creak_Slow.flac",
        lib / "Rain/Creek_Water.flac",
        lib / "Rain/Storm_Long.wav",
        outside,
    ):
        everything = agree(dbs, "--like", like)
        assert len(everything) == K, like
        for filters in (["--ext", "flac"], ["--min-duration", "1.5"], ["--under", lib / "Rain"],
                        ["--tag", "genre=ambience"], ["--under", lib / "Doors", "--ext", "wav", "--max-duration", "2"],
                        ["--channels", "2"], ["--channels", "1", "--under", lib / "Drums"]):  # fmt: skip
            found = agree(dbs, "--like", like, *filters)
            assert 0 < len(found) < K, (like, filters)  # agreement on all the filter left, and not on nothing


QUERIES = ["door creak", "rain -roof", '"door creak" slow', "kick"]  # words, an excluded word, a phrase


def test_filtered_hybrid_searches_agree_through_the_command_line(indexed) -> None:  # type: ignore[no-untyped-def]
    lib, dbs = indexed
    filters = [["--ext", "flac"], ["--ext", "wav", "--ext", "flac", "--min-duration", "1.5"], ["--under", lib / "Doors"],
               ["--tag", "genre=foley"], ["--tag", "artist=björk", "--ext", "flac"], ["--under", lib / "Rain", "--max-duration", "3"],
               ["--min-rate", "48000"], ["--channels", "1", "--under", lib / "Drums"]]  # fmt: skip
    # a tag of several values written as one string (`Ambience; Nature`) matches each of them
    for value in ("nature", "AMBIENCE"):
        found = {Path(h["path"]).name for h in agree(dbs, "water", "--mode", "hybrid", "--tag", f"genre={value}")}
        assert "Creek_Water.flac" in found and "Door_Creak_Slow.flac" not in found, value
    search = lambda *f: [agree(dbs, q, "--mode", mode, *f) for q in QUERIES for mode in ("hybrid", "audio")]
    unfiltered = search()
    for f in filters:
        found = search(*f)
        assert any(found) and found != unfiltered, f  # agreement on what the filter left, and it left less
        assert all(len(hits) < K for hits in found[1::2]), f  # sound alone ranks all the filter left (or a phrase's)
