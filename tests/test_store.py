"""The index store: schema and migrations, model binding, files and shared content, search, locking, crash safety."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import apsw
import numpy as np
import pytest

from audiofind.bench.synthetic_search import bench_search
from audiofind.errors import IndexBusy, IndexNotFound, SchemaMismatch, StorageError, UsageError
from audiofind.store import AudioRow, FileRow, Filters, ModelBinding
from audiofind.store import vectors as vec
from audiofind.store.sqlite import connection as store
from audiofind.store.sqlite import files as index_module
from audiofind.store.sqlite import migrations
from audiofind.store.sqlite import search as nearest
from audiofind.store.sqlite.store import SqliteStore

D = 16
BINDING = ModelBinding("tiny", "ab" * 32, D, 5.0, 2.5)
TABLES = {
    migrations.TABLE,
    "meta",
    "audio",
    "segments",
    "files",
    "roots",
    "partial",
    "codes_cache",
    "fingerprints",
    "file_words",
    "file_words_config",
    "file_words_content",
    "file_words_data",
    "file_words_docsize",
    "file_words_idx",
}


def user_tables(conn: apsw.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return {name for (name,) in rows}


@pytest.fixture
def index(tmp_path: Path):
    with SqliteStore.open(tmp_path / "index.db") as ix:
        ix.bind_model(BINDING)
        yield ix


def add(
    ix: SqliteStore, path: Path, hash: str, vectors: np.ndarray | None = None, duration: float = 10.0, tags=None
) -> None:
    """Store path with content hash; new content gets one segment per vector row, 2.5 s apart."""
    spans = [(2.5 * i, 2.5 * i + 5.0) for i in range(len(vectors))] if vectors is not None else None
    audio = AudioRow(hash, duration, 44100, 2) if vectors is not None else None
    row = FileRow(str(path), str(path.parent), 100, 1, hash, tags=tags or {})
    ix.add_file(row, audio, spans, vectors)


def count(ix: SqliteStore, table: str) -> int:
    return ix.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# Schema and migrations.


def test_blank_database_gets_exactly_the_schema(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path / "new" / "index.db") as ix:
        assert user_tables(ix.conn) == TABLES
        assert migrations.applied(ix.conn) == migrations.names() == [m.__name__ for m in migrations.MIGRATIONS]
        assert migrations.version(ix.conn) == len(migrations.MIGRATIONS) and migrations.pending(ix.conn) == []
        assert ix.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        ix.bind_model(BINDING)  # the vector table arrives with the model, sized by it
        assert "vectors" in user_tables(ix.conn)
        assert f"float[{D}]" in ix.conn.execute("SELECT sql FROM sqlite_master WHERE name = 'vectors'").fetchone()[0]


def test_migrations_are_idempotent_and_upgrade_an_old_database(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    conn = store.connect(db)
    assert migrations.pending(conn) == migrations.names()
    assert user_tables(conn) == set()  # pending() never writes
    with migrations.write_transaction(conn):  # an "old" database: only the first migration applied
        conn.execute(f"CREATE TABLE {migrations.TABLE} (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        migrations.MIGRATIONS[0](conn)
        conn.execute(f"INSERT INTO {migrations.TABLE} VALUES (?, 'then')", (migrations.names()[0],))
    assert migrations.pending(conn) == migrations.names()[1:]
    assert migrations.migrate(conn) == migrations.names()[1:]
    assert migrations.migrate(conn) == []
    conn.close()
    SqliteStore.open(db).close()
    with SqliteStore.open(db) as ix:
        assert migrations.applied(ix.conn) == migrations.names() and user_tables(ix.conn) == TABLES


def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def m999_broken(conn: apsw.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise apsw.SQLError("boom")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m999_broken])
    with pytest.raises(StorageError, match="boom"):
        SqliteStore.open(tmp_path / "index.db")
    conn = store.connect(tmp_path / "index.db")
    assert "half_done" not in user_tables(conn)
    assert migrations.pending(conn) == ["m999_broken"]
    with pytest.raises(ValueError, match="twice"):
        migrations.migration(m999_broken)


def test_a_database_from_a_newer_audiofind_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    with SqliteStore.open(db) as ix:
        ix.conn.execute(f"INSERT INTO {migrations.TABLE} VALUES ('m042_from_the_future', 'later')")
    with pytest.raises(SchemaMismatch) as e:
        SqliteStore.open(db)
    assert "newer audiofind" in str(e.value) and "m042_from_the_future" in str(e.value) and "\n" not in str(e.value)


def test_missing_foreign_and_broken_databases_are_refused(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFound, match="No index at"):
        SqliteStore.open(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    (tmp_path / "text.db").write_text("not a database at all " * 100)
    with pytest.raises(IndexNotFound, match="not an SQLite database"):
        SqliteStore.open(tmp_path / "text.db")
    other = apsw.Connection(str(tmp_path / "other.db"))
    other.execute("CREATE TABLE photos (x)")
    other.close()
    with pytest.raises(IndexNotFound, match="not an audiofind index"):
        SqliteStore.open(tmp_path / "other.db")


# The model binding.


def test_bind_check_and_refuse_another_model(index: SqliteStore, tmp_path: Path) -> None:
    assert index.model() == BINDING
    index.bind_model(BINDING)  # the same model again: nothing changes
    other = ModelBinding("finetuned", "cd" * 32, D, 5.0, 2.5)
    index.bind_model(other)  # still empty: rebinding is allowed
    assert index.model() == other
    index.bind_model(BINDING)
    add(index, tmp_path / "a.wav", "h1", np.ones((1, D)))
    index.touch_root(tmp_path)
    for call in (index.bind_model, index.check_model):
        with pytest.raises(SchemaMismatch) as e:
            call(other)
        message = str(e.value)
        assert message.startswith(
            "This index was built with model 'tiny' (sha256 abababababab...); you asked for 'finetuned'."
        )
        assert f"Rebuild it with: audiofind index --rebuild -w finetuned --db {index.path} {tmp_path}" in message
    with pytest.raises(SchemaMismatch, match="5 s windows every 2.5 s; you asked for 10 s windows every 5 s"):
        index.check_model(ModelBinding("tiny", BINDING.sha256, D, 10.0, 5.0))
    index.check_model(ModelBinding("renamed", BINDING.sha256, D, 5.0, 2.5))  # the same weights under another name
    assert index.model() == BINDING


def test_reset_forgets_content_and_model(index: SqliteStore, tmp_path: Path) -> None:
    add(index, tmp_path / "a.wav", "h1", np.ones((2, D)))
    index.record_failure(tmp_path / "b.wav", tmp_path, 1, 1, "broken")
    index.touch_root(tmp_path)
    index.reset()
    assert index.model() is None and "vectors" not in user_tables(index.conn)
    assert [count(index, t) for t in ("files", "audio", "segments", "roots", "meta")] == [0] * 5
    index.bind_model(ModelBinding("wide", "ef" * 32, 2 * D, 5.0, 2.5))
    add(index, tmp_path / "a.wav", "h1", np.ones((1, 2 * D)))
    assert index.search(np.ones(2 * D), 1)[0].path == str(tmp_path / "a.wav")


# Files, shared content and garbage collection.


def test_copies_share_content_and_orphans_are_collected(index: SqliteStore, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, D)) * 7  # unnormalised on purpose
    add(index, tmp_path / "a.wav", "h1", v, tags={"artist": "X"})
    assert index.has_audio("h1") and not index.has_audio("h2")
    add(index, tmp_path / "copy.wav", "h1")  # a copy: no audio, segments or vectors needed
    assert (count(index, "files"), count(index, "audio"), count(index, "segments"), count(index, "vectors")) == (
        2,
        1,
        3,
        3,
    )
    row = index.get_file(tmp_path / "a.wav")
    assert row is not None and (row.hash, row.status, row.tags, row.size) == ("h1", "ok", {"artist": "X"}, 100)
    assert row.indexed_at is not None and index.get_file(tmp_path / "nope.wav") is None
    spans, stored = index.segment_vectors("h1")
    assert spans == [(0.0, 5.0), (2.5, 7.5), (5.0, 10.0)]
    np.testing.assert_allclose(stored, v / np.linalg.norm(v, axis=1, keepdims=True), rtol=1e-6)

    assert index.remove_files([tmp_path / "a.wav", tmp_path / "never.wav"]) == 1
    assert index.has_audio("h1") and count(index, "vectors") == 3  # the copy still needs them
    index.move_file(tmp_path / "copy.wav", tmp_path / "moved.wav", tmp_path, 100, 2)
    assert index.get_file(tmp_path / "copy.wav") is None and index.get_file(tmp_path / "moved.wav").hash == "h1"
    assert index.remove_files([tmp_path / "moved.wav"]) == 1
    assert (count(index, "files"), count(index, "audio"), count(index, "segments"), count(index, "vectors")) == (
        0,
        0,
        0,
        0,
    )
    with pytest.raises(ValueError, match="not in the index"):
        index.move_file(tmp_path / "ghost.wav", tmp_path / "x.wav", tmp_path, 1, 1)


def test_changed_content_and_failures_drop_the_old_vectors(index: SqliteStore, tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    add(index, path, "old", np.ones((2, D)))
    add(index, path, "new", np.ones((1, D)))  # edited in place: new content, old one unreferenced
    assert not index.has_audio("old") and count(index, "segments") == 1 == count(index, "vectors")
    index.record_failure(path, tmp_path, 5, 6, "Invalid data found when processing input.")
    row = index.get_file(path)
    assert (row.status, row.hash, row.error, row.size, row.mtime_ns) == ("failed", None, "Invalid data found when processing input.", 5, 6)  # fmt: skip
    assert count(index, "audio") == 0 == count(index, "vectors")
    with pytest.raises(ValueError, match="needs its AudioRow"):
        add(index, tmp_path / "b.wav", "unknown")  # new content without vectors
    with pytest.raises(ValueError, match="shape"):
        add(index, tmp_path / "b.wav", "h", np.ones((1, D + 1)))
    assert index.get_file(tmp_path / "b.wav") is None  # refused writes leave nothing


def test_a_failed_write_is_undone_alone_and_sqlite_errors_become_storage_errors(
    index: SqliteStore, tmp_path: Path
) -> None:
    add(index, tmp_path / "a.wav", "h1", np.ones((1, D)))
    add(index, tmp_path / "b.wav", "h2", np.ones((1, D)))
    with pytest.raises(ValueError, match="not in the index"):  # fails after replacing b.wav: all of it undone
        index.move_file(tmp_path / "ghost.wav", tmp_path / "b.wav", tmp_path, 1, 1)
    assert not index.conn.in_transaction and index.get_file(tmp_path / "b.wav").hash == "h2"
    with index.transaction():  # a batch: each write in it is a savepoint, undone on its own
        add(index, tmp_path / "c.wav", "h3", np.ones((1, D)))
        with pytest.raises(ValueError, match="not in the index"):
            index.move_file(tmp_path / "ghost.wav", tmp_path / "a.wav", tmp_path, 1, 1)
        add(index, tmp_path / "d.wav", "h4", np.ones((1, D)))
    assert [Path(r.path).name for r in index.files_under([tmp_path])] == ["a.wav", "b.wav", "c.wav", "d.wav"]
    with pytest.raises(
        StorageError, match=r"\(ConstraintError: CHECK constraint failed.*; everything indexed so far is kept\.$"
    ):
        with index.transaction():
            index.remove_files([tmp_path / "d.wav"])
            index.conn.execute("UPDATE files SET status = 'odd'")
    assert not index.conn.in_transaction and index.get_file(tmp_path / "d.wav") is not None


def test_files_under_roots(index: SqliteStore, tmp_path: Path) -> None:
    for name in ("music/a.wav", "music/sub/b.wav", "musicals/c.wav", "sfx/d.wav"):
        add(index, tmp_path / name, name, np.ones((1, D)))
    rows = index.files_under([tmp_path / "music", tmp_path / "sfx" / "d.wav"])
    assert [Path(r.path).relative_to(tmp_path).as_posix() for r in rows] == [
        "music/a.wav",
        "music/sub/b.wav",
        "sfx/d.wav",
    ]
    assert index.files_under([]) == []


# Search.


def library(ix: SqliteStore, root: Path) -> dict[str, np.ndarray]:
    """Four files with orthogonal-ish segment vectors and known tags and durations, plus one copy."""
    basis = np.eye(D)
    contents = {
        "a": (basis[[0, 1, 2]], 8.0, {"artist": ["Björk", "Sigur Rós"], "genre": "Ambient"}),
        "b": (basis[[3, 4]], 3.0, {"artist": "Dog"}),
        "c": (basis[[5]] + 0.5 * basis[[0]], 30.0, {}),
        "d": (basis[[6, 7]], 1.0, {"genre": "rock"}),
    }
    for name, (v, duration, tags) in contents.items():
        ext = "flac" if name == "c" else "wav"
        add(ix, root / "lib" / f"{name}.{ext}", f"hash-{name}", v, duration, tags)
    add(ix, root / "other" / "a-copy.WAV", "hash-a", tags={"artist": "Björk"})
    return {name: v for name, (v, _, _) in contents.items()}


def test_search_groups_by_file_with_best_segment_and_copies(index: SqliteStore, tmp_path: Path) -> None:
    library(index, tmp_path)
    q = np.eye(D)[1] + 0.1 * np.eye(D)[3]
    hits = index.search(q, k=10)
    names = [Path(h.path).name for h in hits]
    assert names[:3] == ["a.wav", "a-copy.WAV", "b.wav"]  # copies tie and are ordered by path (lib/ < other/)
    assert len(names) == len(set(names)) == 5  # one hit per file, never one per segment
    a = hits[0]
    assert (a.start, a.end, a.duration, a.hash) == (2.5, 7.5, 8.0, "hash-a")  # the best segment is the second
    assert a.score == pytest.approx(1 / np.sqrt(1.01), abs=1e-6) and hits[1].score == a.score
    assert a.tags == {"artist": ["Björk", "Sigur Rós"], "genre": "Ambient"}
    assert [Path(h.path).name for h in index.search(q, k=2)] == ["a.wav", "a-copy.WAV"]  # k counts files


def test_search_with_several_queries_takes_the_best(index: SqliteStore, tmp_path: Path) -> None:
    vectors = library(index, tmp_path)
    self_match = index.search(vectors["d"][1], k=1)[0]
    assert Path(self_match.path).name == "d.wav" and self_match.score == pytest.approx(1.0, abs=1e-6)
    assert self_match.start == 2.5
    hits = index.search(np.stack([np.eye(D)[6], np.eye(D)[5]]), k=2)  # (Q, D): score = max over queries
    assert [Path(h.path).name for h in hits] == ["d.wav", "c.flac"]
    assert hits[1].score == pytest.approx(1 / np.sqrt(1.25), abs=1e-6)


@pytest.mark.parametrize(
    "filters, expected",
    [
        (Filters(under="lib"), ["a.wav", "b.wav", "c.flac", "d.wav"]),
        (Filters(under="other"), ["a-copy.WAV"]),
        (Filters(exts=frozenset({"WAV"})), ["a-copy.WAV", "a.wav", "b.wav", "d.wav"]),
        (Filters(exts=frozenset({".flac", "ogg"})), ["c.flac"]),
        (Filters(min_duration=3.0), ["a-copy.WAV", "a.wav", "b.wav", "c.flac"]),
        (Filters(max_duration=3.0), ["b.wav", "d.wav"]),
        (Filters(min_duration=2.0, max_duration=10.0), ["a-copy.WAV", "a.wav", "b.wav"]),
        (Filters(tags={"ARTIST": "björk"}), ["a-copy.WAV", "a.wav"]),  # a list value matches any element
        (Filters(tags={"artist": "sigur rós"}), ["a.wav"]),  # the copy has its own tags
        (Filters(tags={"genre": "ROCK"}), ["d.wav"]),
        (Filters(tags={"genre": "rock", "artist": "dog"}), []),  # every tag must match
        (Filters(tags={"artist": "bjö"}), []),  # values match whole, not as substrings
        (Filters(under="lib", exts=frozenset({"wav"}), max_duration=5.0), ["b.wav", "d.wav"]),
    ],
)
def test_search_filters(index: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, filters: Filters, expected: list[str]) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # relative folders are resolved like the paths
    library(index, tmp_path)
    hits = index.search(np.ones(D), k=10, filters=filters)
    assert sorted(Path(h.path).name for h in hits) == sorted(expected)


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_under_matches_the_folder_as_given_and_as_resolved(index: SqliteStore, tmp_path: Path) -> None:
    tmp = tmp_path.resolve()
    (tmp / "disk" / "a" / "rain").mkdir(parents=True)
    (tmp / "disk" / "b").mkdir()
    (tmp / "elsewhere").mkdir()
    (tmp / "a").symlink_to(tmp / "disk" / "a")  # root a is indexed through this link
    (tmp / "b").symlink_to(tmp / "disk" / "b")  # root disk/b by its real path, searched through this link
    (tmp / "disk" / "b" / "foley").symlink_to(tmp / "elsewhere")  # a linked folder inside root disk/b
    for i, path in enumerate(
        [tmp / "a" / "rain" / "r.wav", tmp / "disk" / "b" / "b.wav", tmp / "disk" / "b" / "foley" / "f.wav"]
    ):
        add(index, path, f"h{i}", np.eye(D)[[i]])
    index.touch_root(tmp / "a")
    index.touch_root(tmp / "disk" / "b")
    found = lambda under: sorted(Path(h.path).name for h in index.search(np.ones(D), 10, Filters(under=under)))
    assert found(tmp / "a") == found(tmp / "a" / "rain") == ["r.wav"]  # as given: stored as walked
    assert (
        found(tmp / "disk" / "a") == found(tmp / "disk" / "a" / "rain") == ["r.wav"]
    )  # the real folder of a linked root
    assert found(tmp / "b") == ["b.wav", "f.wav"]  # as resolved
    assert found(tmp / "disk" / "b" / "foley") == ["f.wav"]  # as given, though it resolves outside every root
    assert found(tmp / "disk") == ["b.wav", "f.wav", "r.wav"]  # a folder holding the real folder of a linked root
    assert found(tmp / "disk" / "b" / "fol") == [] and found(tmp / "elsewhere" / "x") == []


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_search_under_through_a_symlink_in_the_cli(tmp_path: Path) -> None:
    import audiogen
    from modelkit import register_tiny
    from typer.testing import CliRunner

    from audiofind.cli import app

    tmp, tiny = tmp_path.resolve(), register_tiny()
    (tmp / "disk" / "lib" / "rain").mkdir(parents=True)
    (tmp / "elsewhere").mkdir()
    (tmp / "lib").symlink_to(tmp / "disk" / "lib")
    (tmp / "disk" / "lib" / "foley").symlink_to(tmp / "elsewhere")
    audiogen.write_audio(tmp / "disk" / "lib" / "rain" / "r.wav", audiogen.noise(0.5))
    audiogen.write_audio(tmp / "elsewhere" / "f.wav", audiogen.sine(440, 0.5))
    db = tmp / "index.db"

    def run(*args: object) -> list[str]:
        result = CliRunner().invoke(app, [str(a) for a in (*args, "--db", db)])
        assert result.exit_code == 0, result.output
        return result.stdout.splitlines()

    run("index", tmp / "lib", "-w", tiny)  # through the link: paths are stored as walked
    assert run("search", "x", "--paths", "--under", tmp / "lib" / "foley", "-w", tiny) == [
        str(tmp / "lib" / "foley" / "f.wav")
    ]
    assert run("search", "x", "--paths", "--under", tmp / "disk" / "lib" / "rain", "-w", tiny) == [
        str(tmp / "lib" / "rain" / "r.wav")
    ]


def test_empty_and_unbound_indexes_return_nothing(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path / "index.db") as ix:
        assert ix.search(np.ones(D)) == []
        ix.bind_model(BINDING)
        assert ix.search(np.ones(D)) == []
        with pytest.raises(ValueError, match="dimensions"):
            ix.search(np.ones(D + 1))


def test_quantised_search_matches_exact(index: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = vec.synthetic(1500, 64, queries=20, seed=1)
    index.reset()
    index.bind_model(ModelBinding("tiny64", "ab" * 32, 64, 5.0, 2.5))
    with index.transaction():
        for f in range(int(data.file_of[-1]) + 1):
            add(index, tmp_path / f"{f}.wav", f"h{f}", data.vectors[data.file_of == f])
    assert index.stats().quantised  # over CENTRE_AFTER segments: the centre is frozen and every segment coded
    assert count(index, "segments WHERE code IS NULL") == 0
    monkeypatch.setattr(nearest, "EXACT_MAX", 0)  # force the code path on this small index
    for q in data.queries:
        exact = [h.path for h in index.search(q, 10, exact=True)]
        assert [h.path for h in index.search(q, 10)] == exact
    # With a single candidate per query the search must widen until it has k files.
    monkeypatch.setattr(nearest, "CANDIDATES", 1)
    monkeypatch.setattr(nearest, "CANDIDATES_PER_FILE", 0)
    assert len(index.search(data.queries[0], 7, exact=False)) == 7
    hits = index.search(data.queries[0], 5, Filters(under=tmp_path, max_duration=10.0), exact=False)
    assert len(hits) == 5 and all(h.duration <= 10 for h in hits)


def test_quantised_search_rescores_only_the_hamming_candidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = vec.synthetic(4000, 256, queries=20, seed=2)
    with SqliteStore.open(tmp_path / "big.db") as ix:
        ix.bind_model(ModelBinding("tiny256", "ab" * 32, 256, 5.0, 2.5))
        with ix.transaction():
            for f in range(int(data.file_of[-1]) + 1):
                add(ix, tmp_path / f"{f}.wav", f"h{f}", data.vectors[data.file_of == f])
        assert ix.stats().quantised
        monkeypatch.setattr(nearest, "EXACT_MAX", 100)
        monkeypatch.setattr(nearest, "CANDIDATES", 300)
        monkeypatch.setattr(nearest, "CANDIDATES_PER_FILE", 30)
        scored: list[int] = []
        score = nearest.score_segments

        def counting(conn, ids, q, dim):  # type: ignore[no-untyped-def]
            scored.append(len(ids))
            return score(conn, ids, q, dim)

        monkeypatch.setattr(nearest, "score_segments", counting)
        for q in data.queries:
            exact = [(h.path, h.score) for h in ix.search(q, 10, exact=True)]
            assert scored == [4000]  # exact: every segment
            scored.clear()
            assert [(h.path, h.score) for h in ix.search(q, 10)] == exact
            assert sum(scored) <= 300  # the nearest codes only, not all 4000 segments
            scored.clear()


def test_quantised_recall_at_10_on_a_large_synthetic_index(tmp_path: Path) -> None:
    result = bench_search(tmp_path / "bench.db", segments=20_000, dim=1024, queries=40, timing=False)
    assert result.recall_at_10 >= 0.99, result
    with SqliteStore.open(tmp_path / "bench.db") as ix:
        assert ix.stats().segments == 20_000 and ix.stats().quantised
    with pytest.raises(UsageError, match="already exists"):  # never overwrites an index
        bench_search(tmp_path / "bench.db", segments=10, dim=8)


# Concurrency and crash safety.


def test_writer_lock_refuses_a_second_writer(index: SqliteStore, tmp_path: Path) -> None:
    with SqliteStore.open(index.path) as other:
        with index.writer_lock():
            with pytest.raises(IndexBusy) as e:
                with other.writer_lock():
                    pass
            assert str(e.value) == (
                f"Another audiofind process is already writing to {index.path}; wait for it to finish or use another --db."
            )
        with other.writer_lock():  # released on exit
            pass


def test_writer_lock_dies_with_its_process(index: SqliteStore) -> None:
    code = f"""
        import sys, time
        from audiofind.store.sqlite.store import SqliteStore
        with SqliteStore.open({str(index.path)!r}) as ix, ix.writer_lock():
            print("locked", flush=True)
            time.sleep(60)
    """
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(IndexBusy):
            with index.writer_lock():
                pass
    finally:
        child.kill()
        child.wait()
    with index.writer_lock():
        pass


def test_readers_work_while_a_writer_writes(index: SqliteStore, tmp_path: Path) -> None:
    add(index, tmp_path / "a.wav", "h1", np.eye(D)[[0]])
    with SqliteStore.open(index.path) as reader, index.transaction():
        add(index, tmp_path / "b.wav", "h2", np.eye(D)[[1]])  # written, not committed
        assert [Path(h.path).name for h in reader.search(np.eye(D)[1], 5)] == ["a.wav"]
        assert reader.stats().files == 1


def test_a_writer_blocked_too_long_gets_index_busy(index: SqliteStore, tmp_path: Path) -> None:
    with SqliteStore.open(index.path) as other:
        other.conn.setbusytimeout(50)
        with index.transaction():  # holds the write lock, as a writer that ignored writer_lock() would
            add(index, tmp_path / "a.wav", "h1", np.ones((1, D)))
            with pytest.raises(IndexBusy, match="Another process is writing to"):
                add(other, tmp_path / "b.wav", "h2", np.ones((1, D)))
        add(other, tmp_path / "b.wav", "h2", np.ones((1, D)))
        assert other.stats().files == 2


CRASH_CHILD = """
import sys, time
import numpy as np
from audiofind.store import AudioRow, FileRow, ModelBinding
from audiofind.store.sqlite.store import SqliteStore
db, mode, root = sys.argv[1:4]
rng = np.random.default_rng(0)
with SqliteStore.open(db) as ix:
    ix.bind_model(ModelBinding("tiny", "ab" * 32, 16, 5.0, 2.5))

    def add(i):
        n = 1 + i % 5
        spans = [(float(j), j + 1.0) for j in range(n)]
        ix.add_file(FileRow(f"{root}/{i}.wav", root, n, i, f"h{i}"), AudioRow(f"h{i}", float(n), 44100, 1), spans, rng.normal(size=(n, 16)))

    i = 0
    if mode == "batch":
        for i in range(300):  # crosses CENTRE_AFTER, so codes are written too
            add(i)
        with ix.transaction():  # a batch that never commits
            for i in range(300, 320):
                add(i)
            print("mid", flush=True)
            time.sleep(60)
    while True:  # killed at an arbitrary moment
        add(i)
        if i == 20:
            print("mid", flush=True)
        i += 1
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("mode", ["batch", "loop"])
def test_sigkill_leaves_a_sound_database_of_complete_files(tmp_path: Path, mode: str) -> None:
    db, root = tmp_path / "index.db", tmp_path / "lib"
    argv = [sys.executable, "-c", CRASH_CHILD, str(db), mode, str(root)]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "mid"
        if mode == "loop":
            time.sleep(0.3)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    with SqliteStore.open(db) as ix:
        assert ix.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = ix.files_under([root])
        n = len(rows)
        assert n >= 21 and (n == 300 if mode == "batch" else True)
        assert {r.path for r in rows} == {str(root / f"{i}.wav") for i in range(n)}  # a prefix of the loop: no gaps
        for r in rows:
            i = int(Path(r.path).stem)
            spans, vectors = ix.segment_vectors(r.hash)
            assert len(spans) == 1 + i % 5 and vectors.shape == (1 + i % 5, 16)
        assert count(ix, "segments") == count(ix, "vectors") == sum(1 + i % 5 for i in range(n))
        ix.add_file(
            FileRow(str(root / "after.wav"), str(root), 1, 1, "new"),
            AudioRow("new", 1.0, 44100, 1),
            [(0.0, 1.0)],
            np.ones((1, 16)),
        )


def test_stats(index: SqliteStore, tmp_path: Path) -> None:
    empty = index.stats()
    assert (empty.files, empty.segments, empty.audio_seconds, empty.last_update) == (0, 0, 0.0, None)
    library(index, tmp_path)
    index.record_failure(tmp_path / "lib" / "bad.wav", tmp_path / "lib", 0, 0, "The file is empty.")
    index.touch_root(tmp_path / "lib")
    s = index.stats()
    assert (s.files, s.ok, s.failed, s.audio, s.segments) == (6, 5, 1, 4, 8)
    assert s.audio_seconds == 8 + 3 + 30 + 1 + 8  # the copy counts: it is in the library twice
    assert s.audio_hours == pytest.approx(50 / 3600)
    assert s.failures == [(str(tmp_path / "lib" / "bad.wav"), "The file is empty.")]
    assert [r.path for r in s.roots] == [str(tmp_path / "lib")] and s.roots[0].last_indexed_at is not None
    assert s.model == BINDING and s.schema_version == len(migrations.MIGRATIONS) and not s.quantised
    assert s.path == index.location == str(index.path) and s.size_bytes > 0
    assert s.last_update == pytest.approx(time.time(), abs=60)
    json.dumps(s.failures)  # plain values, ready for --json


def test_an_index_records_its_precision_and_refuses_another(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path / "p.db") as ix:
        ix.bind_model(BINDING)
        assert ix.model().precision == "fp32"
        ix.add_file(FileRow("/x/a.wav", "/x", 1, 1, "h" * 64), AudioRow("h" * 64, 1.0, 44100, 1), [(0.0, 1.0)],
                    np.ones((1, BINDING.dim), np.float32))  # fmt: skip
        bf16 = dataclasses.replace(BINDING, precision="bf16")
        with pytest.raises(SchemaMismatch, match="--precision bf16"):
            ix.check_model(bf16)
    with SqliteStore.open(tmp_path / "p.db") as ix:  # an index from before precision was recorded reads as fp32
        ix.conn.execute("DELETE FROM meta WHERE key = 'precision'")
        assert ix.model() == BINDING


def test_results_show_list_tags_joined_and_hide_writer_tags() -> None:
    from audiofind.audio.tags import shown_tags
    from audiofind.search.filters import read_filters

    assert shown_tags({"artist": ["A", "B"], "encoder": "Lavf60", "genre": "rain"}) == {
        "artist": "A; B",
        "genre": "rain",
    }
    f = read_filters(None, ["WAV, .flac"], 1.0, 2.0, ["Genre=Rain"])
    assert f.exts == frozenset({"wav", "flac"}) and f.tags == {"genre": "Rain"}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        read_filters(tags=["genre"])


def test_saved_codes_are_used_only_while_they_describe_the_segments(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(index_module, "CENTRE_AFTER", 8)
    db = tmp_path / "c.db"
    data = vec.synthetic(40, D, queries=3, seed=1)
    with SqliteStore.open(db) as ix:
        ix.bind_model(BINDING)
        for f in range(int(data.file_of.max()) + 1):
            rows = data.vectors[data.file_of == f]
            h = f"{f:064x}"
            ix.add_file(FileRow(f"/x/{f}.wav", "/x", 1, 1, h), AudioRow(h, 1.0, 44100, 1),
                        [(float(i), i + 1.0) for i in range(len(rows))], rows)  # fmt: skip
        ix.optimize()
        expected = ix.search(data.queries, k=5, exact=False)
    built = []
    real = vec.Codes.from_rows
    monkeypatch.setattr(vec.Codes, "from_rows", classmethod(lambda cls, *a: built.append(1) or real(*a)))
    with SqliteStore.open(db) as ix:  # a cold reader: the saved blob, no rebuild
        assert ix.search(data.queries, k=5, exact=False) == expected and built == []
        ix.remove_files(["/x/0.wav"])  # the segments change: the blob is stale and must not be used
        fresh = ix.search(data.queries, k=5, exact=False)
    assert built == [1] and all(h.path != "/x/0.wav" for h in fresh)
