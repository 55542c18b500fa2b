"""The store's behaviour through the protocol alone, on every backend (the `store` fixture: SQLite, PostgreSQL).

A behaviour that differs between backends is a failing test here. What only one backend has (SQLite's file lock,
PostgreSQL's claims across processes and its server errors) is tested in test_store.py and test_postgres.py.
"""

import os
import time
from pathlib import Path

import numpy as np
import pytest
from storekit import check_consistent, is_postgres, reopen, snapshot, where, workload

from audiofind.errors import SchemaMismatch, UsageError
from audiofind.store import AudioRow, FileRow, Filters, ModelBinding, NameQuery, Store, open_store
from audiofind.store import vectors as vec

D = 16
BINDING = ModelBinding("tiny", "ab" * 32, D, 5.0, 2.5)


@pytest.fixture
def index(store: Store) -> Store:
    store.bind_model(BINDING)
    return store


def add(ix: Store, path: Path, hash: str, vectors: np.ndarray | None = None, duration: float = 10.0, tags=None,
        root: Path | None = None) -> None:  # fmt: skip
    """Store path with content hash; new content gets one segment per vector row, 2.5 s apart."""
    spans = [(2.5 * i, 2.5 * i + 5.0) for i in range(len(vectors))] if vectors is not None else None
    audio = AudioRow(hash, duration, 44100, 2) if vectors is not None else None
    ix.add_file(FileRow(str(path), str(root or path.parent), 100, 1, hash, tags=tags or {}), audio, spans, vectors)


def counts(ix: Store) -> tuple[int, int, int]:
    s = ix.stats()
    return s.files, s.audio, s.segments


# The model binding.


def test_bind_check_and_refuse_another_model(index: Store, tmp_path: Path) -> None:
    assert index.model() == BINDING
    index.bind_model(BINDING)
    other = ModelBinding("finetuned", "cd" * 32, D, 5.0, 2.5)
    index.bind_model(other)  # still empty: rebinding is allowed
    assert index.model() == other
    index.bind_model(ModelBinding("wide", "ef" * 32, 2 * D, 5.0, 2.5))  # another width too
    index.bind_model(BINDING)
    add(index, tmp_path / "a.wav", "h1", np.ones((1, D)))
    index.touch_root(tmp_path)
    for call in (index.bind_model, index.check_model):
        with pytest.raises(SchemaMismatch) as e:
            call(other)
        assert str(e.value).startswith(
            "This index was built with model 'tiny' (sha256 abababababab...); you asked for 'finetuned'."
        )
        assert "Rebuild it with: audiofind index --rebuild -w finetuned --db" in str(e.value)
    index.check_model(ModelBinding("renamed", BINDING.sha256, D, 5.0, 2.5))
    index.bind_model(ModelBinding("renamed", BINDING.sha256, D, 5.0, 2.5))  # renaming is free
    assert index.model().name == "renamed"


def test_reset_forgets_content_and_model(index: Store, tmp_path: Path) -> None:
    add(index, tmp_path / "a.wav", "h1", np.ones((2, D)))
    index.record_failure(tmp_path / "b.wav", tmp_path, 1, 1, "broken")
    index.touch_root(tmp_path)
    index.reset()
    assert index.model() is None and counts(index) == (0, 0, 0) and index.roots() == []
    index.bind_model(ModelBinding("wide", "ef" * 32, 2 * D, 5.0, 2.5))
    add(index, tmp_path / "a.wav", "h1", np.ones((1, 2 * D)))
    assert index.search(np.ones(2 * D), 1)[0].path == str(tmp_path / "a.wav")


# Files, shared content and garbage collection.


def test_copies_share_content_and_orphans_are_collected(index: Store, tmp_path: Path) -> None:
    v = np.random.default_rng(0).normal(size=(3, D)) * 7  # unnormalised on purpose
    add(index, tmp_path / "a.wav", "h1", v, tags={"artist": "X"})
    assert index.has_audio("h1") and not index.has_audio("h2")
    add(index, tmp_path / "copy.wav", "h1")  # a copy: no audio, segments or vectors needed
    assert counts(index) == (2, 1, 3)
    row = index.get_file(tmp_path / "a.wav")
    assert row is not None and (row.hash, row.status, row.tags, row.size) == ("h1", "ok", {"artist": "X"}, 100)
    assert row.indexed_at is not None and index.get_file(tmp_path / "nope.wav") is None
    spans, stored = index.segment_vectors("h1")
    assert spans == [(0.0, 5.0), (2.5, 7.5), (5.0, 10.0)]
    np.testing.assert_allclose(stored, v / np.linalg.norm(v, axis=1, keepdims=True), rtol=1e-6)
    assert stored.dtype == np.float32
    assert index.remove_files([tmp_path / "a.wav", tmp_path / "never.wav"]) == 1
    assert index.has_audio("h1") and counts(index) == (1, 1, 3)  # the copy still needs them
    index.move_file(tmp_path / "copy.wav", tmp_path / "moved.wav", tmp_path, 100, 2)
    assert index.get_file(tmp_path / "copy.wav") is None and index.get_file(tmp_path / "moved.wav").hash == "h1"
    assert index.remove_files([tmp_path / "moved.wav"]) == 1
    assert counts(index) == (0, 0, 0)
    with pytest.raises(ValueError, match="not in the index"):
        index.move_file(tmp_path / "ghost.wav", tmp_path / "x.wav", tmp_path, 1, 1)


def test_changed_content_and_failures_drop_the_old_vectors(index: Store, tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    add(index, path, "old", np.ones((2, D)))
    add(index, path, "new", np.ones((1, D)))  # edited in place: new content, old one unreferenced
    assert not index.has_audio("old") and counts(index) == (1, 1, 1)
    index.record_failure(path, tmp_path, 5, 6, "Invalid data found when processing input.")
    row = index.get_file(path)
    assert (row.status, row.hash, row.error, row.size, row.mtime_ns) == ("failed", None, "Invalid data found when processing input.", 5, 6)  # fmt: skip
    assert counts(index) == (1, 0, 0)
    with pytest.raises(ValueError, match="needs its AudioRow"):
        add(index, tmp_path / "b.wav", "unknown")  # new content without vectors
    with pytest.raises(ValueError, match="shape"):
        add(index, tmp_path / "b.wav", "h", np.ones((1, D + 1)))
    assert index.get_file(tmp_path / "b.wav") is None  # refused writes leave nothing


def test_a_failed_write_is_undone_alone_inside_a_batch(index: Store, tmp_path: Path) -> None:
    add(index, tmp_path / "a.wav", "h1", np.ones((1, D)))
    add(index, tmp_path / "b.wav", "h2", np.ones((1, D)))
    with pytest.raises(ValueError, match="not in the index"):  # fails: nothing of it stays
        index.move_file(tmp_path / "ghost.wav", tmp_path / "b.wav", tmp_path, 1, 1)
    assert index.get_file(tmp_path / "b.wav").hash == "h2"
    with index.transaction():  # a batch: each write in it is a savepoint, undone on its own
        add(index, tmp_path / "c.wav", "h3", np.ones((1, D)))
        with pytest.raises(ValueError, match="not in the index"):
            index.move_file(tmp_path / "ghost.wav", tmp_path / "a.wav", tmp_path, 1, 1)
        with pytest.raises(ValueError, match="finite"):  # fails after its audio row was written
            add(index, tmp_path / "x.wav", "hx", np.full((1, D), np.nan))
        add(index, tmp_path / "d.wav", "h4", np.ones((1, D)))
    assert not index.has_audio("hx") and index.stats().audio == 4
    assert [Path(r.path).name for r in index.files_under([tmp_path])] == ["a.wav", "b.wav", "c.wav", "d.wav"]
    with pytest.raises(RuntimeError), index.transaction():  # the whole batch goes when it fails
        add(index, tmp_path / "e.wav", "h5", np.ones((1, D)))
        raise RuntimeError("stop")
    assert index.get_file(tmp_path / "e.wav") is None and not index.has_audio("h5")


def test_files_under_roots(index: Store, tmp_path: Path) -> None:
    for name in ("music/a.wav", "music/sub/b.wav", "musicals/c.wav", "sfx/d.wav"):
        add(index, tmp_path / name, name, np.ones((1, D)), root=tmp_path)
    rows = index.files_under([tmp_path / "music", tmp_path / "sfx" / "d.wav"])
    assert [Path(r.path).relative_to(tmp_path).as_posix() for r in rows] == [
        "music/a.wav",
        "music/sub/b.wav",
        "sfx/d.wav",
    ]
    assert len(index.files_under([tmp_path])) == 4 and len(index.files_under([tmp_path.parent])) == 4
    assert index.files_under([]) == [] and index.files_under([tmp_path / "mus"]) == []


def test_reading_sees_one_snapshot_while_a_writer_commits(index: Store, tmp_path: Path) -> None:
    add(index, tmp_path / "a.wav", "h1", np.eye(D)[[0]])
    with reopen(index) as reader:
        with reader.reading():
            before = reader.stats().files
            add(index, tmp_path / "b.wav", "h2", np.eye(D)[[1]])  # another connection commits meanwhile
            assert reader.stats().files == before == 1
            assert [Path(h.path).name for h in reader.search(np.eye(D)[1], 5)] == ["a.wav"]
        assert reader.stats().files == 2
        with index.transaction():  # written, not committed: a reader does not see it
            add(index, tmp_path / "c.wav", "h3", np.eye(D)[[2]])
            assert reader.stats().files == 2


# Long recordings: committed a chunk at a time, hidden until complete, resumed.


def test_partial_chunks_are_hidden_and_resumed(index: Store, tmp_path: Path) -> None:
    v = np.random.default_rng(1).normal(size=(7, D))
    spans = [(2.5 * i, 2.5 * i + 5.0) for i in range(7)]
    path = tmp_path / "long.wav"
    add(index, tmp_path / "short.wav", "s", np.ones((1, D)))
    index.add_segments("L", str(path), AudioRow("L", 10.0, 44100, 1), spans[:3], v[:3])
    index.add_segments("L", str(path), AudioRow("L", 17.5, 44100, 1), spans[3:5], v[3:5])
    assert index.partial_segments("L") == 5 and index.partial_duration("L") == 17.5 and not index.has_audio("L")
    assert [h.path for h in index.search(v[1], 10)] == [str(tmp_path / "short.wav")]  # hidden from search
    with reopen(index) as resumed:  # another run picks up where the first stopped
        assert resumed.partial_segments("L") == 5
        if is_postgres(index):
            index.close()  # the first writer is gone: its claim with it
        resumed.add_file(FileRow(str(path), str(tmp_path), 1, 1, "L"), AudioRow("L", 22.5, 44100, 1), spans[5:], v[5:])
        assert resumed.has_audio("L") and resumed.partial_segments("L") == 0
        got, stored = resumed.segment_vectors("L")
        assert got == spans and np.allclose(stored, vec.normalize(v), atol=1e-6)
        assert resumed.search(v[1], 1)[0].path == str(path)
        resumed.add_segments("M", str(tmp_path / "m.wav"), AudioRow("M", 5.0, 44100, 1), spans[:1], v[:1])
        assert resumed.drop_partials(keep=["M"]) == 0 and resumed.drop_partials(paths=[tmp_path / "other.wav"]) == 0
        assert resumed.drop_partials(paths=[tmp_path / "m.wav"]) == 1 and resumed.partial_segments("M") == 0
        resumed.add_segments("N", str(tmp_path / "n.wav"), AudioRow("N", 5.0, 44100, 1), spans[:1], v[:1])
        resumed.add_file(
            FileRow(str(tmp_path / "n.wav"), str(tmp_path), 1, 1, "N"), AudioRow("N", 7.5, 44100, 1), spans[1:2], v[1:2]
        )
        with reopen(resumed) as third:  # finished or dropped: nobody holds their claims any more
            assert third.claim("M") and third.claim("N")
        assert resumed.stats().segments == 10
        with pytest.raises(ValueError, match="complete already"):
            resumed.add_segments("L", str(path), AudioRow("L", 1.0, 44100, 1), spans[:1], v[:1])


# Search.


def library(ix: Store, root: Path) -> dict[str, np.ndarray]:
    """Four files with orthogonal-ish segment vectors and known tags and durations, plus one copy."""
    basis = np.eye(D)
    contents = {
        "a": (basis[[0, 1, 2]], 8.0, {"artist": ["Björk", "Sigur Rós"], "genre": "Ambient"}),
        "b": (basis[[3, 4]], 3.0, {"artist": "Dog"}),
        "c": (basis[[5]] + 0.5 * basis[[0]], 30.0, {}),
        "d": (basis[[6, 7]], 1.0, {"genre": "rock", "place": "Straße"}),
    }
    for name, (v, duration, tags) in contents.items():
        add(ix, root / "lib" / f"{name}.{'flac' if name == 'c' else 'wav'}", f"hash-{name}", v, duration, tags, root)
    add(ix, root / "other" / "a-copy.WAV", "hash-a", tags={"artist": "Björk"}, root=root)
    return {name: v for name, (v, _, _) in contents.items()}


def test_search_groups_by_file_with_best_segment_and_copies(index: Store, tmp_path: Path) -> None:
    library(index, tmp_path)
    q = np.eye(D)[1] + 0.1 * np.eye(D)[3]
    for exact in (None, True):
        hits = index.search(q, k=10, exact=exact)
        names = [Path(h.path).name for h in hits]
        assert names[:3] == ["a.wav", "a-copy.WAV", "b.wav"]  # copies tie and are ordered by path (lib/ < other/)
        assert len(names) == len(set(names)) == 5  # one hit per file, never one per segment
        a = hits[0]
        assert (a.start, a.end, a.duration, a.hash) == (2.5, 7.5, 8.0, "hash-a")
        assert a.score == pytest.approx(1 / np.sqrt(1.01), abs=1e-6) and hits[1].score == a.score
        assert a.tags == {"artist": ["Björk", "Sigur Rós"], "genre": "Ambient"} and list(a.tags) == ["artist", "genre"]
    assert [Path(h.path).name for h in index.search(q, k=2)] == ["a.wav", "a-copy.WAV"]  # k counts files


def test_ties_go_by_path_for_sound_and_to_the_first_indexed_for_names(index: Store, tmp_path: Path) -> None:
    add(index, tmp_path / "z" / "Door.wav", "h1", np.eye(D)[[0]])  # indexed first, last by path
    add(index, tmp_path / "a" / "Door.wav", "h1")  # a copy: the same score
    add(index, tmp_path / "m" / "Door.wav", "h2", np.eye(D)[[0]])  # another content, the same vector
    assert [h.path for h in index.search(np.eye(D)[0], 3)] == [str(tmp_path / d / "Door.wav") for d in "amz"]
    names = index.search_names(NameQuery(words=["door"]), 3)
    assert [h.path for h in names] == [str(tmp_path / d / "Door.wav") for d in "zam"] and len(
        {h.score for h in names}
    ) == 1


def test_search_with_several_queries_takes_the_best(index: Store, tmp_path: Path) -> None:
    vectors = library(index, tmp_path)
    self_match = index.search(vectors["d"][1], k=1)[0]
    assert Path(self_match.path).name == "d.wav" and self_match.score == pytest.approx(1.0, abs=1e-6)
    hits = index.search(np.stack([np.eye(D)[6], np.eye(D)[5]]), k=2)  # (Q, D): score = max over queries
    assert [Path(h.path).name for h in hits] == ["d.wav", "c.flac"]
    assert hits[1].score == pytest.approx(1 / np.sqrt(1.25), abs=1e-6)


@pytest.mark.parametrize(
    "filters, expected",
    [
        (Filters(under="lib"), ["a.wav", "b.wav", "c.flac", "d.wav"]),
        (Filters(under="other"), ["a-copy.WAV"]),
        (Filters(under="."), ["a-copy.WAV", "a.wav", "b.wav", "c.flac", "d.wav"]),
        (Filters(under="li"), []),
        (Filters(exts=frozenset({"WAV"})), ["a-copy.WAV", "a.wav", "b.wav", "d.wav"]),
        (Filters(exts=frozenset({".flac", "ogg"})), ["c.flac"]),
        (Filters(min_duration=3.0), ["a-copy.WAV", "a.wav", "b.wav", "c.flac"]),
        (Filters(max_duration=3.0), ["b.wav", "d.wav"]),
        (Filters(tags={"ARTIST": "björk"}), ["a-copy.WAV", "a.wav"]),  # a list value matches any element
        (Filters(tags={"artist": "SIGUR RÓS"}), ["a.wav"]),  # folded in Python, whatever the server's locale
        (Filters(tags={"genre": "rock", "artist": "dog"}), []),  # every tag must match
        (Filters(tags={"place": "STRASSE"}), ["d.wav"]),  # case-folded as Python folds, not lower-cased
        (Filters(tags={"artist": "bjö"}), []),  # values match whole, not as substrings
        (Filters(under="lib", exts=frozenset({"wav"}), max_duration=5.0), ["b.wav", "d.wav"]),
    ],
)
def test_search_filters(index: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, filters: Filters, expected: list[str]) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # relative folders are resolved like the paths
    library(index, tmp_path)
    for exact in (None, True):
        hits = index.search(np.ones(D), k=10, filters=filters, exact=exact)
        assert sorted(Path(h.path).name for h in hits) == sorted(expected)
    names = index.search_names(NameQuery(words=["a", "b", "c", "d", "copy"]), 10, filters)
    assert sorted(Path(h.path).name for h in names) == sorted(expected)


def test_a_tag_of_several_values_written_as_one_string_matches_each_of_them(index: Store, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    add(index, lib / "rain.wav", "h1", np.eye(D)[[0]], tags={"genre": "Ambience; Nature"})  # as many taggers write it
    add(index, lib / "door.wav", "h2", np.eye(D)[[1]], tags={"Genre": ["Foley", " Door ;Wood;"]})
    add(index, lib / "wind.wav", "h3", np.eye(D)[[2]], tags={"genre": "Ambiences", "comment": "ambience"})
    cases = {"ambience": ["rain.wav"], "NATURE": ["rain.wav"], "ambience; nature": ["rain.wav"], "wood": ["door.wav"],
             "door": ["door.wav"], "foley": ["door.wav"], "amb": [], "ambience;nature": [], "": []}  # fmt: skip
    for value, expected in cases.items():
        filters = Filters(tags={"genre": value})
        for exact in (None, True):
            assert sorted(Path(h.path).name for h in index.search(np.ones(D), 10, filters, exact=exact)) == expected
        found = index.search_names(NameQuery(words=["rain", "door", "wind"]), 10, filters)
        assert sorted(Path(h.path).name for h in found) == expected, value


def test_hits_carry_their_facts_and_filter_on_them(index: Store, tmp_path: Path) -> None:
    one = np.ones((1, D))
    lib, gone = tmp_path / "lib", tmp_path / "unplugged"  # gone: a root that is not there now
    lib.mkdir()
    index.add_file(FileRow(str(lib / "a.wav"), str(lib), 1, 1, "a"),
                   AudioRow("a", 1.0, 96000, 2, "wav", "pcm_s24le", 24), [(0.0, 1.0)], one)  # fmt: skip
    # a long recording: committed a chunk at a time, finished by add_file with what the decoder read
    index.add_segments("b", str(lib / "b.mp3"), AudioRow("b", 5.0, 44100, 1, "mp3", "mp3", None), [(0.0, 5.0)], one)
    index.add_file(FileRow(str(lib / "b.mp3"), str(lib), 1, 1, "b"),
                   AudioRow("b", 9.0, 44100, 1, "mp3", "mp3", None), [(4.0, 9.0)], one)  # fmt: skip
    index.add_file(FileRow(str(gone / "c.wav"), str(gone), 1, 1, "c"), AudioRow("c", 1.0, 48000, 1), [(0.0, 1.0)], one)
    facts = lambda h: (h.format, h.codec, h.sample_rate, h.bits, h.channels, h.available)
    expected = {"a.wav": ("wav", "pcm_s24le", 96000, 24, 2, True), "b.mp3": ("mp3", "mp3", 44100, None, 1, True),
                "c.wav": (None, None, 48000, None, 1, False)}  # fmt: skip
    for exact in (None, True):
        assert {Path(h.path).name: facts(h) for h in index.search(np.ones(D), 10, exact=exact)} == expected
    named = index.search_names(NameQuery(words=["a", "b", "c"]), 10)  # the names' hits carry them too
    assert {Path(h.path).name: facts(h) for h in named} == expected
    assert index.search(np.ones(D), 10)[0].duration in (1.0, 9.0)
    paths = frozenset({str(lib / "b.mp3"), str(gone / "c.wav"), str(lib / "never.wav")})
    for filters, names in [(Filters(min_rate=48000), {"a.wav", "c.wav"}), (Filters(min_rate=96001), set()),
                           (Filters(channels=1), {"b.mp3", "c.wav"}), (Filters(channels=2, min_rate=44100), {"a.wav"}),
                           (Filters(paths=paths), {"b.mp3", "c.wav"}), (Filters(paths=frozenset()), set()),
                           (Filters(paths=paths, channels=1, min_rate=48000), {"c.wav"})]:  # fmt: skip
        assert not filters.is_empty()
        for exact in (None, True):
            assert {Path(h.path).name for h in index.search(np.ones(D), 10, filters, exact=exact)} == names, filters
        assert {Path(h.path).name for h in index.search_names(NameQuery(words=["a", "b", "c"]), 10, filters)} == names
    gone.mkdir()  # plugged in again: available from the next search on
    assert all(h.available for h in index.search(np.ones(D), 10))


def test_fingerprints_are_stored_with_their_content_and_go_with_it(index: Store, tmp_path: Path) -> None:
    fp = bytes(range(256)) * 3
    audio = lambda h: AudioRow(h, 1.0, 44100, 1, "wav", "pcm_s16le", 16, fingerprint=fp + h.encode())
    index.add_file(
        FileRow(str(tmp_path / "a.wav"), str(tmp_path), 1, 1, "a"), audio("a"), [(0.0, 1.0)], np.ones((1, D))
    )
    index.add_file(FileRow(str(tmp_path / "b.wav"), str(tmp_path), 1, 1, "b"), AudioRow("b", 1.0, 44100, 1),
                   [(0.0, 1.0)], np.ones((1, D)))  # fmt: skip
    index.add_segments("L", str(tmp_path / "l.wav"), AudioRow("L", 1.0, 44100, 1), [(0.0, 1.0)], np.ones((1, D)))
    assert index.fingerprints(["a", "b", "L", "nope"]) == {"a": fp + b"a"}
    index.add_file(
        FileRow(str(tmp_path / "l.wav"), str(tmp_path), 1, 1, "L"), audio("L"), [(1.0, 2.0)], np.ones((1, D))
    )
    index.set_fingerprints({"b": b"\x00\xff" * 10, "gone": b"x"})  # a content no longer stored is skipped
    assert index.fingerprints(["a", "b", "L", "gone"]) == {"a": fp + b"a", "b": b"\x00\xff" * 10, "L": fp + b"L"}
    index.set_fingerprints({"b": b"new"})  # made again: replaced
    assert index.fingerprints(["b"]) == {"b": b"new"}
    add(index, tmp_path / "a-copy.wav", "a")
    index.remove_files([tmp_path / "a.wav"])
    assert index.fingerprints(["a"]) == {"a": fp + b"a"}  # its copy keeps the content
    index.remove_files([tmp_path / "a-copy.wav", tmp_path / "b.wav"])  # collected with their contents
    assert index.fingerprints(["a", "b", "L"]) == {"L": fp + b"L"}
    index.reset()
    assert index.fingerprints(["L"]) == {}


def test_empty_and_unbound_indexes_return_nothing(store: Store) -> None:
    assert store.search(np.ones(D)) == [] and store.search_names(NameQuery(words=["x"]), 5) == []
    store.bind_model(BINDING)
    assert store.search(np.ones(D)) == []
    with pytest.raises(ValueError, match="dimensions"):
        store.search(np.ones(D + 1))


def test_the_candidate_path_matches_exact_and_keeps_k_under_filters(store: Store, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from audiofind.store.postgres import rows
    from audiofind.store.postgres import search as pg_search
    from audiofind.store.sqlite import files as sqlite_files
    from audiofind.store.sqlite import search as sqlite_search

    monkeypatch.setattr(rows, "CENTRE_AFTER", 256)
    monkeypatch.setattr(sqlite_files, "CENTRE_AFTER", 256)
    monkeypatch.setattr(pg_search, "INDEX_AFTER", 1000)  # optimize builds the HNSW index on this small library
    monkeypatch.setattr(sqlite_search, "EXACT_MAX", 0)  # and SQLite takes its code path too
    monkeypatch.setattr(pg_search, "CANDIDATES", 1000)  # as many as SQLite re-scores: 2/3 of this small library
    data = vec.synthetic(1500, 256, queries=12, seed=1)
    store.bind_model(ModelBinding("tiny256", "ab" * 32, 256, 5.0, 2.5))
    with store.transaction():
        for f in range(int(data.file_of[-1]) + 1):
            add(
                store,
                tmp_path / f"d{f % 3}" / f"{f}.wav",
                f"h{f}",
                data.vectors[data.file_of == f],
                1.0 + f % 20,
                root=tmp_path,
            )
        far = -data.queries[0] + 0.05 * np.random.default_rng(3).normal(size=(6, 256))  # the farthest from query 0
        for f in range(6):
            add(store, tmp_path / "far" / f"{f}.wav", f"far{f}", far[[f]], root=tmp_path)
    store.optimize()
    only_far = Filters(under=str(tmp_path / "far"))
    farthest = [(h.path, h.score) for h in store.search(data.queries[0], 5, only_far, exact=True)]
    assert store.stats().quantised
    exact_all = {
        hash(q.tobytes()): [(h.path, h.score) for h in store.search(q, 10, exact=True)] for q in data.queries[:4]
    }
    if is_postgres(store):
        assert pg_search.indexed(store.db)  # type: ignore[attr-defined]
    for q in data.queries:
        exact = [(h.path, h.score) for h in store.search(q, 10, exact=True)]
        assert [(h.path, h.score) for h in store.search(q, 10)] == exact
    monkeypatch.setattr(pg_search, "CANDIDATES", 30)  # an exact search that must widen (and know when to stop)
    monkeypatch.setattr(pg_search, "CANDIDATES_PER_FILE", 0)
    for q in data.queries[:4]:
        assert [(h.path, h.score) for h in store.search(q, 10, exact=True)] == exact_all[hash(q.tobytes())]
    # Few candidates at a time: the search widens until it has k files, also under a tight filter.
    monkeypatch.setattr(pg_search, "CANDIDATES", 1)
    monkeypatch.setattr(pg_search, "CANDIDATES_PER_FILE", 0)
    monkeypatch.setattr(sqlite_search, "CANDIDATES", 1)
    monkeypatch.setattr(sqlite_search, "CANDIDATES_PER_FILE", 0)
    assert len(store.search(data.queries[0], 7, exact=False)) == 7
    tight = Filters(under=str(tmp_path / "d1"), max_duration=3.0)
    if is_postgres(store):  # through the HNSW index, as on a large index (the planner scans this small one)
        store.db.execute("SET enable_seqscan = off")  # type: ignore[attr-defined]
        store.db.execute("SET enable_bitmapscan = off")  # type: ignore[attr-defined]
        store.db.execute("SET enable_sort = off")  # type: ignore[attr-defined]
    hits = store.search(data.queries[0], 5, tight, exact=False)
    assert len(hits) == 5 and all(h.duration <= 3 and "/d1/" in h.path for h in hits)
    # Only the farthest files pass: the index scan goes on until it finds them (iterative index scans), never
    # giving way to an exact scan.
    monkeypatch.setattr(pg_search, "_nearest_exact", lambda *a: pytest.fail("the index search gave up"))
    assert [(h.path, h.score) for h in store.search(data.queries[0], 5, only_far, exact=False)] == farthest


# Names.


NAMES = {
    "Foley/Doors/Door_Creak_Slow_01.wav": {},
    "Foley/Doors/Old_Door_Creak_02.wav": {"title": "Barn door, creaking"},
    "Foley/Doors/Creak_Door_Hinge.wav": {},
    "Foley/UCS/DOORWood_Creak Slow Old Barn_JD_01.wav": {"keywords": ["wood", "old"]},
    "Drums/Kick808_Punchy.wav": {"genre": "Hip-Hop"},
    "Drums/Kick808_Long.wav": {},
    "Ambience/Creek_Water.wav": {"date": "1999"},
}


def named_library(ix: Store, root: Path) -> None:
    for i, (name, tags) in enumerate(NAMES.items()):
        add(ix, root / name, f"n{i}", np.eye(D)[[i]], 1.0 + i, tags, root)


@pytest.mark.parametrize(
    "query, expected",
    [
        (
            NameQuery(words=["door", "creak"]),
            [
                "Creak_Door_Hinge.wav",
                "Door_Creak_Slow_01.wav",
                "Old_Door_Creak_02.wav",
                "DOORWood_Creak Slow Old Barn_JD_01.wav",
            ],
        ),  # fmt: skip
        (NameQuery(words=["creaks"]), None),  # stemmed at both ends
        (NameQuery(phrases=["door creak"]), ["Door_Creak_Slow_01.wav", "Old_Door_Creak_02.wav"]),
        (NameQuery(phrases=["creak door"]), ["Creak_Door_Hinge.wav"]),
        (NameQuery(words=["door"], excluded=["creak"]), []),
        (NameQuery(words=["kick808"]), ["Kick808_Long.wav", "Kick808_Punchy.wav"]),
        (NameQuery(words=["barn"]), ["Old_Door_Creak_02.wav", "DOORWood_Creak Slow Old Barn_JD_01.wav"]),
        (NameQuery(words=["1999"]), []),  # dates say nothing about the sound
        (NameQuery(words=["foley"], excluded=["old", "slow"]), ["Creak_Door_Hinge.wav"]),
        (NameQuery(words=["hip"]), ["Kick808_Punchy.wav"]),
        (NameQuery(excluded=["door"]), []),
    ],
)
def test_names_search_with_phrases_and_excluded_words(index: Store, tmp_path: Path, query: NameQuery, expected) -> None:  # type: ignore[no-untyped-def]
    named_library(index, tmp_path)
    found = index.search_names(query, 20)
    if expected is None:  # same files as the unstemmed word
        expected = [Path(h.path).name for h in index.search_names(NameQuery(words=["creak"]), 20)]
        assert len(expected) == 4
    assert sorted(Path(h.path).name for h in found) == sorted(expected)
    assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)
    assert all(h.start == 0.0 and h.end == h.duration for h in found)


def test_names_follow_moves_changes_failures_and_reindex(index: Store, tmp_path: Path) -> None:
    named_library(index, tmp_path)
    text = lambda *w: {Path(h.path).name for h in index.search_names(NameQuery(words=list(w)), 20)}
    index.move_file(tmp_path / "Drums/Kick808_Long.wav", tmp_path / "Percussion/Boom.wav", tmp_path, 1, 1)
    assert text("percussion") == {"Boom.wav"} and text("long") == set()
    add(index, tmp_path / "Drums/Kick808_Punchy.wav", "n4", tags={"title": ["Gong"]}, root=tmp_path)  # retagged
    assert text("hip") == set() and text("gong") == {"Kick808_Punchy.wav"}
    index.record_failure(tmp_path / "Drums/Kick808_Punchy.wav", tmp_path, 1, 1, "unreadable")
    assert text("gong") == set() and text("kick") == set()
    assert index.reindex_names() == len(NAMES) - 1
    assert text("percussion") == {"Boom.wav"}
    held = index.names_holding(["door creak", "barn", "nothing"], [str(tmp_path / n) for n in list(NAMES)[:4]])
    assert [held[str(tmp_path / n)] for n in list(NAMES)[:4]] == [
        ["door creak", "barn"][:1],
        ["door creak", "barn"],
        [],
        ["barn"],
    ]


def test_a_files_format_is_among_its_words(index: Store, tmp_path: Path) -> None:
    one = np.ones((1, D))
    lib = tmp_path / "lib"
    text = lambda *w, excluded=(): {Path(h.path).name for h in index.search_names(NameQuery(list(w), excluded=list(excluded)), 20)}  # fmt: skip
    index.add_file(FileRow(str(lib / "a.aif"), str(lib), 1, 1, "a"), AudioRow("a", 1.0, 44100, 2, "aiff", "pcm_s16be", 16),
                   [(0.0, 1.0)], one)  # fmt: skip
    index.add_file(FileRow(str(lib / "Copies/a.aiff"), str(lib), 1, 1, "a"))  # a copy: its content's format
    index.add_file(FileRow(str(lib / "b.opus"), str(lib), 1, 1, "b"), AudioRow("b", 1.0, 48000, 1, "ogg", "opus"),
                   [(0.0, 1.0)], one)  # fmt: skip
    # a long recording: its format arrives with the last chunk, before the file points at it
    index.add_segments("c", str(lib / "c.m4a"), AudioRow("c", 5.0, 44100, 1), [(0.0, 5.0)], one)
    index.add_file(FileRow(str(lib / "c.m4a"), str(lib), 1, 1, "c"), AudioRow("c", 9.0, 44100, 1, "m4a", "alac", 16),
                   [(4.0, 9.0)], one)  # fmt: skip
    index.add_file(FileRow(str(lib / "d.wav"), str(lib), 1, 1, "d"), AudioRow("d", 1.0, 44100, 1), [(0.0, 1.0)], one)
    assert text("aiff") == {"a.aif", "a.aiff"} and text("aif") == {"a.aif"}  # the container, and the extension
    assert text("pcm") == {"a.aif", "a.aiff"} and text("alac") == {"c.m4a"} and text("opus", "ogg") == {"b.opus"}
    assert text("wav") == {"d.wav"}  # no facts recorded: its extension alone
    assert text("16", "s16be") == set()  # the codec's family only: a take numbered 16 is not every 16-bit file
    assert text("a", "b", "c", "d", excluded=["pcm"]) == {"b.opus", "c.m4a", "d.wav"}
    index.move_file(lib / "b.opus", lib / "Moved/e.opus", lib, 1, 1)
    assert text("ogg") == {"e.opus"}
    assert index.reindex_names() == 5 and text("pcm") == {"a.aif", "a.aiff"} and text("ogg") == {"e.opus"}
    held = index.names_holding(["aiff", "pcm", "ogg"], [str(lib / "a.aif"), str(lib / "Moved/e.opus")])
    assert held == {str(lib / "a.aif"): ["aiff", "pcm"], str(lib / "Moved/e.opus"): ["ogg"]}


# Roots, status, claims.


def test_stats(index: Store, tmp_path: Path) -> None:
    empty = index.stats()
    assert (empty.files, empty.segments, empty.audio_seconds, empty.last_update) == (0, 0, 0.0, None)
    library(index, tmp_path)
    index.record_failure(tmp_path / "lib" / "bad.wav", tmp_path, 0, 0, "The file is empty.")
    index.touch_root(tmp_path)
    s = index.stats()
    assert (s.files, s.ok, s.failed, s.audio, s.segments) == (6, 5, 1, 4, 8)
    assert s.audio_seconds == 8 + 3 + 30 + 1 + 8
    assert s.failures == [(str(tmp_path / "lib" / "bad.wav"), "The file is empty.")]
    assert [r.path for r in s.roots] == [str(tmp_path)] and s.roots[0].last_indexed_at is not None
    assert s.model == BINDING and s.schema_version >= 5 and not s.quantised
    assert s.path == index.location and s.size_bytes > 0
    assert s.last_update == pytest.approx(time.time(), abs=60)
    assert set(s.as_dict()) == {"path", "size_bytes", "schema_version", "model", "sha256", "precision", "roots",
                                "root_state", "files", "ok", "failed", "segments", "audio_hours", "last_update",
                                "failures", "warnings"}  # fmt: skip


def test_roots_are_named_counted_and_mounted_here(index: Store, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert index.mount_root(tmp_path / "a") == (
        f"{os.uname().nodename}:{tmp_path / 'a'}" if is_postgres(index) else str(tmp_path / "a")
    )
    add(index, tmp_path / "a" / "x.wav", "h1", np.ones((1, D)))
    add(index, tmp_path / "b" / "y.wav", "h2", np.ones((1, D)))
    index.record_failure(tmp_path / "b" / "z.wav", tmp_path / "b", 1, 1, "bad")
    for root in (tmp_path / "a", tmp_path / "b"):
        index.touch_root(root)
    found = index.roots()
    assert [(r.path, r.local, r.files) for r in found] == [
        (str(tmp_path / "a"), True, 1),
        (str(tmp_path / "b"), True, 2),
    ]
    assert all(r.name and r.last_indexed_at for r in found)
    if is_postgres(index):
        assert index.mount_root(tmp_path / "b", "sfx") == "sfx"  # renaming keeps its files
        assert [r.name for r in index.roots()] == [found[0].name, "sfx"] and index.roots()[1].files == 2
        assert index.mount_root(tmp_path / "b" / "inner") == "sfx"  # a folder inside a root is part of it
        with pytest.raises(UsageError, match="inside the root 'sfx'"):
            index.mount_root(tmp_path / "b" / "inner", "drums")
    else:
        with pytest.raises(UsageError, match="names its folders by their path"):
            index.mount_root(tmp_path / "b", "sfx")
    index.remove_files([tmp_path / "a" / "x.wav"])
    index.forget_root(tmp_path / "a")
    assert [r.path for r in index.roots()] == [str(tmp_path / "b")]


def test_a_moved_root_keeps_its_files_vectors_ids_and_names(index: Store, tmp_path: Path) -> None:
    old, new, other = tmp_path / "Old Library", tmp_path / "Moved Library", tmp_path / "shelf" / "other"
    for folder in (old, new, other):
        folder.mkdir(parents=True)
    for root in (old, other):
        index.mount_root(root)
    v = np.random.default_rng(1).normal(size=(2, D))
    add(index, old / "Doors" / "Wood_Creak.wav", "h1", v, root=old)
    add(index, old / "Doors" / "Creak copy.wav", "h1", root=old)
    index.record_failure(old / "bad.wav", old, 1, 1, "broken")
    long_audio = AudioRow("h3", 60.0, 44100, 2)
    index.add_segments("h3", str(old / "long.wav"), long_audio, [(0.0, 5.0)], np.ones((1, D)))  # unfinished
    add(index, other / "kick.wav", "h2", np.ones((1, D)), root=other)
    for root in (old, other):
        index.touch_root(root)
    before = snapshot(index)
    ids = index.file_ids([str(old / "Doors" / "Wood_Creak.wav"), str(old / "bad.wav")])
    indexed_at = index.get_file(old / "Doors" / "Wood_Creak.wav").indexed_at
    refused = {
        tmp_path / "nowhere": (new, "not an indexed folder"),
        old: (old, "already where the index has it"),
        other: (old / "Doors", "inside the indexed folder"),
    }
    for source, (target, why) in refused.items():
        with pytest.raises(UsageError, match=why):
            index.move_root(source, target)
    cases = ((other / "sub", "inside the indexed folder"), (tmp_path / "shelf", "holds the indexed folder"),
             (tmp_path, "overlap"), (old / "Doors", "overlap"))  # fmt: skip
    for target, why in cases:
        with pytest.raises(UsageError, match=why):
            index.move_root(old, target)
    assert snapshot(index) == before  # refused: nothing changed

    assert index.move_root(old, new) == 3
    assert [(r.path, r.files, r.available) for r in index.roots()] == [(str(new), 3, True), (str(other), 1, True)]
    assert index.files_under([old]) == [] and index.get_file(old / "bad.wav") is None
    moved = index.get_file(new / "Doors" / "Wood_Creak.wav")
    assert moved is not None and (moved.hash, moved.root, moved.indexed_at) == ("h1", str(new), indexed_at)
    assert index.get_file(new / "bad.wav").status == "failed"
    assert list(index.file_ids([str(new / "Doors" / "Wood_Creak.wav"), str(new / "bad.wav")]).values()) == [
        (ids[str(old / "Doors" / "Wood_Creak.wav")][0], str(new)),
        (ids[str(old / "bad.wav")][0], str(new)),
    ]  # the same rows: ids and history kept
    after = snapshot(index)
    assert after["contents"] == before["contents"] and counts(index) == (4, 3, 4)  # nothing embedded or dropped
    assert index.search(v[:1], 3)[0].path in {
        str(new / "Doors" / "Wood_Creak.wav"),
        str(new / "Doors" / "Creak copy.wav"),
    }
    named = index.search_names(NameQuery(words=["creak"]), 5)
    assert sorted(h.path for h in named) == [
        str(new / "Doors" / "Creak copy.wav"),
        str(new / "Doors" / "Wood_Creak.wav"),
    ]
    holds = index.names_holding(["doors", "library"], [str(new / "Doors" / "Wood_Creak.wav")])
    assert holds == {str(new / "Doors" / "Wood_Creak.wav"): ["doors"]}  # folder words are those below the root
    assert index.drop_partials(paths=[new / "long.wav"]) == 1  # the unfinished recording moved too
    check_consistent(index)
    with pytest.raises(UsageError, match="not an indexed folder"):
        index.move_root(old, tmp_path / "again")  # it is not there any more


def test_a_root_cannot_move_onto_indexed_files(index: Store, tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    add(index, old / "a.wav", "h1", np.ones((1, D)), root=old)
    add(index, new / "b.wav", "h2", np.ones((1, D)), root=new)  # stored, though new was never touched as a root
    index.touch_root(old)
    before = snapshot(index)
    with pytest.raises(UsageError, match="already holds indexed files|inside the indexed folder"):
        index.move_root(old, new)
    assert snapshot(index) == before


def test_roots_say_whether_they_are_there_now(index: Store, tmp_path: Path) -> None:
    here, gone = tmp_path / "here", tmp_path / "gone"
    for root in (here, gone):
        root.mkdir()
        index.mount_root(root)
        add(index, root / "a.wav", f"h-{root.name}", np.ones((1, D)), root=root)
        index.touch_root(root)
    gone.rmdir()  # unplugged
    assert [(r.path, r.available, r.state) for r in index.roots()] == [
        (str(gone), False, "missing"),
        (str(here), True, "available"),
    ]
    assert index.stats().as_dict()["root_state"] == {str(gone): "missing", str(here): "available"}


def test_claims_let_one_writer_embed_a_content(index: Store) -> None:
    assert index.claim("h1") and index.claim("h1")  # a writer's own claim holds
    with reopen(index) as other:
        assert other.claim("h1") is (not is_postgres(index))  # one writer at a time on SQLite: always its own
        index.release("h1")
        index.release("never-claimed")
        assert other.claim("h1")
        other.release("h1")


# Whole indexes: staging and dump/load.


def test_a_staged_rebuild_replaces_the_index_at_once(index: Store, tmp_path: Path) -> None:
    add(index, tmp_path / "old.wav", "h1", np.ones((1, D)))
    index.touch_root(tmp_path)
    staged = index.staging()
    assert staged.model() is None and staged.stats().files == 0
    staged.bind_model(ModelBinding("new", "cd" * 32, D, 5.0, 2.5))
    add(staged, tmp_path / "new.wav", "h2", np.ones((1, D)))
    staged.close()
    index.discard_staging()  # thrown away: the next staging starts empty
    staged = index.staging()
    assert staged.stats().files == 0
    staged.bind_model(ModelBinding("new", "cd" * 32, D, 5.0, 2.5))
    add(staged, tmp_path / "new.wav", "h2", np.ones((1, D)))
    staged.close()
    staged = index.staging()  # an interrupted rebuild is continued
    assert staged.stats().files == 1
    with reopen(index) as reader:
        assert reader.model() == BINDING and [Path(h.path).name for h in reader.search(np.ones(D), 5)] == ["old.wav"]
        reader.close()
        index.replace_with(staged)
    with open_store(where(index)) as swapped:
        assert swapped.model().name == "new" and [Path(r.path).name for r in swapped.files_under([tmp_path])] == [
            "new.wav"
        ]
        assert swapped.staging().stats().files == 0


def test_dump_and_load_copy_an_index_bit_for_bit(store: Store, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from audiofind.store.postgres import rows
    from audiofind.store.sqlite import files as sqlite_files

    monkeypatch.setattr(rows, "CENTRE_AFTER", 12)
    monkeypatch.setattr(sqlite_files, "CENTRE_AFTER", 12)
    workload(store, tmp_path / "lib")
    before = snapshot(store)
    with open_store(tmp_path / "copy.db", create=True) as copy:  # into SQLite (from either backend)
        for portion in store.dump(batch=3):
            copy.load(portion)
        after = snapshot(copy)
        check_consistent(copy)
        assert copy.search(np.ones(16), 20, exact=True) == store.search(np.ones(16), 20, exact=True)
        formats = NameQuery(words=["flac", "mp3"])  # words of the files' formats (their names say .wav)
        assert copy.search_names(formats, 20) == store.search_names(formats, 20) != []
    assert after["contents"] == before["contents"] and after["centre"] == before["centre"] is not None
    assert {p: f[2:] for p, f in after["files"].items()} == {p: f[2:] for p, f in before["files"].items()}
