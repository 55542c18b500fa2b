"""The file facts: recorded at indexing, read from headers by migration m009 for an older index (NULL where no file
can be read), returned with every hit, filtered on; and whether a hit's root is there now."""

import json
import os
from pathlib import Path

import apsw
import audiogen as ag
import numpy as np
import pytest
from modelkit import register_tiny
from typer.testing import CliRunner

from audiofind.audio import decode
from audiofind.cli import app
from audiofind.search.query import parse
from audiofind.store import AudioRow, FileRow, Filters, ModelBinding, open_store
from audiofind.store.sqlite import fulltext, migrations
from audiofind.store.sqlite.store import SqliteStore

runner = CliRunner()
D = 16
BINDING = ModelBinding("tiny", "ab" * 32, D, 5.0, 2.5)
KEYS = ("format", "codec", "sample_rate", "bits", "channels")


def cli(*args: object) -> list:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def columns(conn: apsw.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def test_a_new_index_has_the_fact_columns(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path / "index.db") as ix:
        assert columns(ix.conn, "audio") == [
            "hash",
            "duration",
            "sample_rate",
            "channels",
            "container",
            "codec",
            "bits",
        ]
        assert "m009_audio_facts" in migrations.names()


def test_the_store_keeps_the_facts_of_whole_and_chunked_contents(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path / "index.db") as ix:
        ix.bind_model(BINDING)
        one = np.ones((1, D))
        ix.add_file(FileRow(str(tmp_path / "a.wav"), str(tmp_path), 1, 1, "a"), AudioRow("a", 1.0, 96000, 2, "wav", "pcm_s24le", 24),
                    [(0.0, 1.0)], one)  # fmt: skip
        # a long recording: committed a chunk at a time, finished by add_file with what the decoder read
        ix.add_segments(
            "b", str(tmp_path / "b.mp3"), AudioRow("b", 5.0, 44100, 1, "mp3", "mp3", None), [(0.0, 5.0)], one
        )
        ix.add_file(FileRow(str(tmp_path / "b.mp3"), str(tmp_path), 1, 1, "b"), AudioRow("b", 9.0, 44100, 1, "mp3", "mp3", None),
                    [(4.0, 9.0)], one)  # fmt: skip
        ix.add_file(FileRow("/nowhere/c.wav", "/nowhere", 1, 1, "c"), AudioRow("c", 1.0, 48000, 1), [(0.0, 1.0)], one)
        hits = {Path(h.path).name: h for h in ix.search(np.ones(D), k=10)}
        facts = lambda h: (h.format, h.codec, h.sample_rate, h.bits, h.channels, h.available)
        assert facts(hits["a.wav"]) == ("wav", "pcm_s24le", 96000, 24, 2, True)
        assert facts(hits["b.mp3"]) == ("mp3", "mp3", 44100, None, 1, True) and hits["b.mp3"].duration == 9.0
        assert facts(hits["c.wav"]) == (None, None, 48000, None, 1, False)  # its root is not there
        for filters, names in [(Filters(min_rate=48000), {"a.wav", "c.wav"}), (Filters(min_rate=96001), set()),
                               (Filters(channels=1), {"b.mp3", "c.wav"}), (Filters(channels=2, min_rate=44100), {"a.wav"})]:  # fmt: skip
            assert {Path(h.path).name for h in ix.search(np.ones(D), k=10, filters=filters)} == names, filters
            assert filters.is_empty() is False
        named = {Path(h.path).name: h for h in ix.search_names(parse("a b c"), 10)}  # the names' hits carry them too
        assert {name: facts(h) for name, h in named.items()} == {name: facts(hits[name]) for name in named} and named


def test_an_older_index_gets_its_facts_from_the_headers_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register_tiny()
    lib = tmp_path / "Sounds"
    lib.mkdir()
    ag.write_audio(lib / "hi.wav", ag.chirp(300, 900, 1.0, sr=96000, channels=2), sr=96000, codec="pcm_s24le")
    ag.write_audio(lib / "kick.mp3", ag.sine(55, 0.6))
    ag.write_audio(lib / "gone.flac", ag.noise(0.8, seed=3))
    ag.write_audio(lib / "changed.flac", ag.noise(0.7, seed=4))
    ag.write_audio(lib / "a first.wav", ag.sine(880, 0.5))
    (lib / "z copy.wav").write_bytes((lib / "a first.wav").read_bytes())  # the same content, found second
    db = tmp_path / "index.db"
    assert runner.invoke(app, ["index", str(lib), "--db", str(db), "-w", "tiny"]).exit_code == 0
    fresh = {
        Path(h["path"]).name: [h[k] for k in KEYS]
        for h in cli("search", "x", "-k", 10, "--mode", "audio", "-w", "tiny", "--json", "--db", db)
    }
    assert fresh["hi.wav"] == ["wav", "pcm_s24le", 96000, 24, 2] and fresh["kick.mp3"] == ["mp3", "mp3", 44100, None, 1]
    # As an index made before m009 (and so before m011): no fact columns, names triggers that do not read them, and
    # neither migration recorded.
    conn = apsw.Connection(str(db))
    for suffix in fulltext.TRIGGERS:
        conn.execute(f"DROP TRIGGER file_words_{suffix}")
    for column in ("container", "codec", "bits"):
        conn.execute(f"ALTER TABLE audio DROP COLUMN {column}")
    conn.execute(f"DELETE FROM {migrations.TABLE} WHERE name IN ('m009_audio_facts', 'm011_format_words')")
    segments = conn.execute("SELECT count(*) FROM segments").fetchone()[0]
    conn.close()
    (lib / "gone.flac").unlink()
    os.utime(lib / "changed.flac", ns=(1, 1))  # not the file that was indexed any more
    (lib / "a first.wav").unlink()  # its copy still is
    probed = []
    real_probe = decode.probe
    with monkeypatch.context() as mp:  # the upgrade: headers only, nothing decoded, nothing embedded
        for name in ("stream_audio", "load_audio", "iter_windows"):
            mp.setattr(decode, name, lambda *a, **k: pytest.fail("the migration decoded audio"))
        mp.setattr(decode, "probe", lambda path, count=True: probed.append(count) or real_probe(path, count))
        with open_store(db) as ix:
            assert ix.stats().segments == segments and "m009_audio_facts" in migrations.applied(ix.conn)  # type: ignore[attr-defined]
            assert "m011_format_words" in migrations.applied(ix.conn)  # type: ignore[attr-defined]
    assert probed and not any(probed)  # never counting packets either
    now = {
        Path(h["path"]).name: [h[k] for k in KEYS]
        for h in cli("search", "x", "-k", 10, "--mode", "audio", "-w", "tiny", "--json", "--db", db)
    }
    assert now["hi.wav"] == fresh["hi.wav"] and now["kick.mp3"] == fresh["kick.mp3"]
    assert now["a first.wav"] == now["z copy.wav"] == ["wav", "pcm_s16le", 44100, 16, 1]  # read from the copy
    assert now["gone.flac"] == now["changed.flac"] == [None, None, 44100, None, 1]  # rate and channels were always kept
    # The names index took the formats the headers gave (m011): pcm for the WAVs whose facts were read, none for the rest.
    pcm = cli("search", "pcm", "--mode", "text", "--json", "--db", db)
    assert {Path(h["path"]).name for h in pcm} == {"hi.wav", "a first.wav", "z copy.wav"}
