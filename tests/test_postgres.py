"""What only the PostgreSQL backend has: migrations on a server, URLs and their passwords, roles, server errors in
one line, several writers (claims across processes, a writer killed), roots named across machines, `db copy`."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from storekit import BINDING, check_consistent, snapshot, workload
from typer.testing import CliRunner

from audiofind.cli import app
from audiofind.errors import IndexNotFound, SchemaMismatch, StorageError
from audiofind.store import AudioRow, ConnectionLost, FileRow, NameQuery, open_store
from audiofind.store.location import redact
from audiofind.store.postgres import migrations
from audiofind.store.postgres.connection import connect

pytestmark = pytest.mark.postgres
runner = CliRunner()
SECRET = "s3cret-Pw"


def admin(server) -> psycopg.Connection:  # type: ignore[no-untyped-def]
    return psycopg.connect(server.get_uri(), autocommit=True)


def dbname(url: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(url)["dbname"]


def as_role(url: str, role: str, password: str | None = None) -> str:
    """url with another user (and password) on the same socket."""
    return url.replace("postgres:@", f"{role}:{password}@" if password else f"{role}@")


def cli(*args: object, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output
    return result.stdout


def one_line_error(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# Migrations.


def test_a_blank_database_gets_exactly_the_schema_once(pg_url: str) -> None:
    opened: list = []
    threads = [threading.Thread(target=lambda: opened.append(open_store(pg_url, create=True))) for _ in range(3)]
    for t in threads:  # three processes' worth of connections migrating at once: each migration applied once
        t.start()
    for t in threads:
        t.join()
    assert len(opened) == 3
    for ix in opened:
        ix.close()
    db = connect(pg_url)
    tables = {t for (t,) in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'audiofind'")}
    assert tables == {
        migrations.TABLE,
        "meta",
        "roots",
        "mounts",
        "audio",
        "segments",
        "files",
        "partial",
        "fingerprints",
    }
    assert migrations.applied(db) == migrations.names() and migrations.pending(db) == []
    assert migrations.migrate(db) == []
    db.close()


def test_a_failing_migration_leaves_nothing_and_a_newer_schema_is_refused(pg_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def m999_broken(db) -> None:  # type: ignore[no-untyped-def]
        db.execute("CREATE TABLE half_done (x int)")
        db.execute("SELECT * FROM no_such_table")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m999_broken])
    with pytest.raises(StorageError, match="no_such_table"):
        open_store(pg_url, create=True)
    db = connect(pg_url)
    assert db.value("SELECT to_regclass('audiofind.half_done')") is None and migrations.pending(db) == ["m999_broken"]
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:-1])
    db.execute("INSERT INTO _audiofind_migrations (name, applied_at) VALUES ('m042_from_the_future', now())")
    db.close()
    with pytest.raises(SchemaMismatch) as e:
        open_store(pg_url)
    assert str(e.value) == (
        f"The index {redact(pg_url)} was written by a newer audiofind (unknown migrations: m042_from_the_future); "
        "upgrade audiofind to use it."
    )


def test_a_database_without_an_index_is_not_one(pg_url: str) -> None:
    with pytest.raises(IndexNotFound, match="No index at"):
        open_store(pg_url)
    with pytest.raises(IndexNotFound, match="No such database"):
        open_store(pg_url.replace(dbname(pg_url), "no_such_db"))


# URLs, passwords, roles and the server's failures: one line each, never a password.


def test_passwords_never_show() -> None:
    assert redact("postgresql://me:pw@host:5432/db") == "postgresql://me:***@host:5432/db"
    assert (
        redact("postgres://me@host/db?password=pw&sslmode=require")
        == "postgres://me@host/db?password=***&sslmode=require"
    )
    assert redact("postgresql://host/db") == "postgresql://host/db"
    line = one_line_error("status", "--db", f"postgresql://me:{SECRET}@127.0.0.1:1/db")
    assert "Cannot reach the PostgreSQL server at postgresql://me:***@127.0.0.1:1/db" in line and SECRET not in line


@pytest.fixture
def password_role(pg_server, pg_url: str):  # type: ignore[no-untyped-def]
    """A role that must give a password (scram over the socket), owning the test's database."""
    hba = Path(pg_server.pgdata) / "pg_hba.conf"
    rules = hba.read_text()
    with admin(pg_server) as a:
        a.execute(f"CREATE ROLE pw_user LOGIN PASSWORD '{SECRET}'")
        a.execute(f"ALTER DATABASE {dbname(pg_url)} OWNER TO pw_user")
        hba.write_text("local all pw_user scram-sha-256\n" + rules)
        a.execute("SELECT pg_reload_conf()")
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE EXTENSION vector")  # pgvector is not a trusted extension: a superuser creates it
    yield as_role(pg_url, "pw_user")
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("DROP OWNED BY pw_user CASCADE")
    with admin(pg_server) as a:
        hba.write_text(rules)
        a.execute("SELECT pg_reload_conf()")
        a.execute(f"ALTER DATABASE {dbname(pg_url)} OWNER TO postgres")
        a.execute("DROP ROLE pw_user")


def test_the_password_comes_from_the_url_or_pgpassword_and_a_wrong_one_is_one_line(
    password_role: str, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    url = password_role
    with open_store(url.replace("pw_user@", f"pw_user:{SECRET}@"), create=True) as ix:
        ix.bind_model(BINDING)
        assert SECRET not in ix.location and ":***@" in ix.location
    monkeypatch.setenv("PGPASSWORD", SECRET)  # libpq reads it, as it reads ~/.pgpass
    out = json.loads(cli("status", "--db", url, "--json"))
    assert out["model"] == "tiny" and out["path"] == redact(url)
    monkeypatch.delenv("PGPASSWORD")
    line = one_line_error("status", "--db", url.replace("pw_user@", "pw_user:wrong-pw@"))
    assert "refused the password" in line and "pw_user:***@" in line and "wrong-pw" not in line


def test_a_read_only_role_searches_but_cannot_index(pg_server, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with open_store(pg_url, create=True) as ix:
        ix.bind_model(BINDING)
        ix.add_file(FileRow(str(tmp_path / "Door_Creak.wav"), str(tmp_path), 1, 1, "h"), AudioRow("h", 1.0, 44100, 1),
                    [(0.0, 1.0)], np.ones((1, 16)))  # fmt: skip
    with admin(pg_server) as a:
        a.execute("CREATE ROLE reader LOGIN")
    url = as_role(pg_url, "reader")
    line = one_line_error("search", "door", "--mode", "text", "--db", url)  # before the GRANTs: a read refused
    assert "lacks a privilege" in line and "`search` and `status` need USAGE on the schema" in line
    assert "cannot write" not in line
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("GRANT USAGE ON SCHEMA audiofind TO reader")
        c.execute("GRANT SELECT ON ALL TABLES IN SCHEMA audiofind TO reader")
    url = as_role(pg_url, "reader")
    try:
        assert json.loads(cli("status", "--db", url, "--json"))["files"] == 1
        found = json.loads(cli("search", "door creak", "--mode", "text", "--db", url, "--json"))
        assert [Path(r["path"]).name for r in found] == ["Door_Creak.wav"]
        # Refused before any model loads: the weights named here do not even exist.
        line = one_line_error("index", tmp_path, "--db", url, "-w", "no-such-model")
        assert "can only read the index" in line and "`audiofind index` cannot write" in line
    finally:
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute("DROP OWNED BY reader")
        with admin(pg_server) as a:
            a.execute("DROP ROLE reader")


def test_missing_pgvector_and_missing_drivers_are_one_line(pg_server, pg_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with admin(pg_server) as a:
        a.execute("CREATE ROLE plain LOGIN")
        a.execute(f"ALTER DATABASE {dbname(pg_url)} OWNER TO plain")
    try:
        line = one_line_error("status", "--db", as_role(pg_url, "plain"))
        assert "pgvector is not installed" in line and "CREATE EXTENSION vector" in line
        assert "a superuser must run CREATE EXTENSION vector" in line
    finally:
        with admin(pg_server) as a:
            a.execute(f"ALTER DATABASE {dbname(pg_url)} OWNER TO postgres")
            a.execute("DROP ROLE plain")
    monkeypatch.setitem(sys.modules, "psycopg", None)  # an install without the extra
    line = one_line_error("status", "--db", "postgresql://me:pw@db.example/sounds")
    assert 'pip install "audiofind[postgres]"' in line and "pw@" not in line


def test_a_server_restart_mid_write_is_a_typed_error_and_the_next_run_continues(
    pg_server, pg_url: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    add = lambda ix, name, h: ix.add_file(FileRow(str(tmp_path / name), str(tmp_path), 1, 1, h),
                                          AudioRow(h, 1.0, 44100, 1), [(0.0, 1.0)], np.ones((1, 16)))  # fmt: skip
    with open_store(pg_url, create=True) as ix:
        ix.bind_model(BINDING)
        add(ix, "a.wav", "ha")
        pid = ix.db.conn.info.backend_pid  # type: ignore[attr-defined]
        with pytest.raises(
            ConnectionLost, match="was lost .*; everything committed so far is kept: run the same command again"
        ):
            with ix.transaction():
                add(ix, "b.wav", "hb")
                with admin(pg_server) as a:  # what a restart does to every session
                    a.execute("SELECT pg_terminate_backend(%s)", (pid,))
                add(ix, "c.wav", "hc")
    with open_store(pg_url, create=True) as ix:
        assert [Path(r.path).name for r in ix.files_under([tmp_path])] == ["a.wav"]
        add(ix, "b.wav", "hb")
        check_consistent(ix)


# Several writers.

RACER = """
import sys, time
import numpy as np
from audiofind.store import AudioRow, FileRow, open_store
url, root, me = sys.argv[1:4]
embedded = []
with open_store(url, create=True) as ix:
    for i in range(40):
        h = f"{i:064x}"
        if ix.has_audio(h) or not ix.claim(h):
            continue  # stored already, or another writer is embedding it now
        try:
            if not ix.has_audio(h):  # read again under the claim: it may have landed meanwhile
                time.sleep(0.005)  # the model's time
                ix.add_file(FileRow(f"{root}/{me}-{i}.wav", root, 1, 1, h), AudioRow(h, 1.0, 44100, 1), [(0.0, 1.0)],
                            np.ones((1, 16)) + i)
                embedded.append(i)
        finally:
            ix.release(h)
print(" ".join(map(str, embedded)), flush=True)
"""


def test_two_writers_embed_each_content_once(pg_url: str, tmp_path: Path) -> None:
    with open_store(pg_url, create=True) as ix:
        ix.bind_model(BINDING)
        assert ix.features.shared_writers
    procs = [subprocess.Popen([sys.executable, "-c", RACER, pg_url, str(tmp_path), me], stdout=subprocess.PIPE, text=True)
             for me in ("one", "two")]  # fmt: skip
    done = [[int(x) for x in p.communicate(timeout=60)[0].split()] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(done[0] + done[1]) == list(range(40)), done  # each content embedded once, by one of them
    with open_store(pg_url) as ix:
        assert ix.stats().audio == 40 and ix.stats().segments == 40
        check_consistent(ix)


HOLDER = """
import sys, time
import numpy as np
from audiofind.store import AudioRow, open_store
with open_store(sys.argv[1], create=True) as ix:
    assert ix.claim("held")
    ix.add_segments("long", sys.argv[2], AudioRow("long", 2.0, 44100, 1), [(0.0, 1.0)], np.ones((1, 16)))
    print("claimed", flush=True)
    time.sleep(60)
"""


def test_a_killed_writer_drops_its_claims(pg_url: str, tmp_path: Path) -> None:
    with open_store(pg_url, create=True) as ix:
        ix.bind_model(BINDING)
        child = subprocess.Popen(
            [sys.executable, "-c", HOLDER, pg_url, str(tmp_path / "long.wav")], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout.readline().strip() == "claimed"
            assert not ix.claim("held") and not ix.claim("long")  # a live writer's, its unfinished content too
            assert ix.drop_partials() == 0 and ix.partial_segments("long") == 1
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.wait()
        deadline = time.monotonic() + 10
        while not ix.claim("held"):  # the server notices the dead session and drops its locks
            assert time.monotonic() < deadline, "the killed writer's claim was never released"
            time.sleep(0.05)
        assert ix.drop_partials() == 1 and ix.stats().audio == 0


# Roots named across machines.


def test_machines_share_a_named_root_wherever_they_mount_it(pg_url: str, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    a, b = tmp_path / "studio-a" / "sfx", tmp_path / "mnt" / "library"
    monkeypatch.setenv("AUDIOFIND_HOST", "studio-a")
    with open_store(pg_url, create=True) as ix:
        ix.bind_model(BINDING)
        assert ix.mount_root(a, "sfx") == "sfx"
        for name in ("doors/creak.wav", "doors/slam.wav"):
            ix.add_file(
                FileRow(str(a / name), str(a), 1, 1, name),
                AudioRow(name, 1.0, 44100, 1),
                [(0.0, 1.0)],
                np.ones((1, 16)),
            )
        ix.touch_root(a)
    monkeypatch.setenv("AUDIOFIND_HOST", "studio-b")  # the same share, mounted elsewhere
    with open_store(pg_url, create=True) as ix:
        assert [r.path for r in ix.roots()] == ["sfx:"] and not ix.roots()[0].local
        assert sorted(h.path for h in ix.search(np.ones(16), 5)) == ["sfx:doors/creak.wav", "sfx:doors/slam.wav"]
        assert [r.path for r in ix.files_under(["sfx:doors"])] == ["sfx:doors/creak.wav", "sfx:doors/slam.wav"]
        assert ix.remove_files(["sfx:doors/creak.wav"]) == 0  # never removed from a machine that does not mount it
        assert ix.mount_root(b, "sfx") == "sfx"
        assert [r.path for r in ix.files_under([b])] == [str(b / "doors" / "creak.wav"), str(b / "doors" / "slam.wav")]
        ix.add_file(FileRow(str(b / "doors" / "creak.wav"), str(b), 1, 1, "doors/creak.wav"))  # already there
        assert ix.stats().files == 2 and ix.get_file(b / "doors" / "slam.wav") is not None
    monkeypatch.setenv("AUDIOFIND_HOST", "laptop")  # only reads: maps the name in its own data folder
    out = json.loads(cli("roots", "--db", pg_url, "--json"))
    assert out == [{"name": "sfx", "path": None, "mounted": False, "state": "not mounted", "files": 2,
                    "last_indexed": out[0]["last_indexed"]}]  # fmt: skip
    assert "not mounted here" in cli("roots", "--db", pg_url)
    cli("roots", "map", "sfx", tmp_path / "laptop-sfx")
    with open_store(pg_url) as ix:
        assert ix.roots()[0].path == str(tmp_path / "laptop-sfx") and ix.roots()[0].local
        assert sorted(h.path for h in ix.search(np.ones(16), 5))[0] == str(
            tmp_path / "laptop-sfx" / "doors" / "creak.wav"
        )
    cli("roots", "unmap", "sfx")
    with open_store(pg_url) as ix:
        assert ix.roots()[0].path == "sfx:"


def test_a_moved_root_keeps_its_name_and_only_this_machine_remaps_it(pg_url: str, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    a, moved, b = tmp_path / "studio-a" / "sfx", tmp_path / "studio-a" / "new-mount", tmp_path / "studio-b" / "sfx"
    for folder in (moved, b):
        folder.mkdir(parents=True)
    monkeypatch.setenv("AUDIOFIND_HOST", "studio-a")
    with open_store(pg_url, create=True) as ix:
        ix.bind_model(BINDING)
        ix.mount_root(a, "sfx")
        ix.add_file(FileRow(str(a / "doors" / "creak.wav"), str(a), 1, 1, "h"), AudioRow("h", 1.0, 44100, 1),
                    [(0.0, 1.0)], np.ones((1, 16)))  # fmt: skip
    monkeypatch.setenv("AUDIOFIND_HOST", "studio-b")
    with open_store(pg_url, create=True) as ix:
        ix.mount_root(b, "sfx")
    monkeypatch.setenv("AUDIOFIND_HOST", "studio-a")
    with open_store(pg_url, create=True) as ix:
        assert [(r.name, r.available) for r in ix.roots()] == [("sfx", False)]  # a was never made: missing
        before = snapshot(ix)
        assert ix.move_root(a, moved) == 1
        assert [(r.name, r.path, r.files, r.available) for r in ix.roots()] == [("sfx", str(moved), 1, True)]
        assert [h.path for h in ix.search(np.ones(16), 5)] == [str(moved / "doors" / "creak.wav")]
        # Stored below the root by name: no file row changed, only where this machine finds them.
        assert list(snapshot(ix)["files"].values()) == list(before["files"].values())
    monkeypatch.setenv("AUDIOFIND_HOST", "studio-b")  # the other machine's mount is its own
    with open_store(pg_url) as ix:
        assert [h.path for h in ix.search(np.ones(16), 5)] == [str(b / "doors" / "creak.wav")]
    monkeypatch.setenv("AUDIOFIND_HOST", "laptop")  # a machine that maps the root in roots.json
    cli("roots", "map", "sfx", tmp_path / "laptop" / "sfx")
    (tmp_path / "laptop" / "elsewhere").mkdir(parents=True)
    with open_store(pg_url, create=True) as ix:
        ix.move_root(tmp_path / "laptop" / "sfx", tmp_path / "laptop" / "elsewhere")
    with open_store(pg_url) as ix:  # the mapping follows, or it would still win over the mounts table
        assert [r.path for r in ix.roots()] == [str(tmp_path / "laptop" / "elsewhere")]


# The command line against a server: index, search, status, db copy.


def test_index_search_and_copy_through_the_command_line(pg_url: str, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import audiogen
    from modelkit import register_tiny

    register_tiny()
    lib = tmp_path / "Library"
    for name, freq in {"Doors/Door_Creak.wav": 300, "Doors/Gate_Slam.wav": 420, "Drums/Kick808.wav": 60}.items():
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        audiogen.write_audio(lib / name, audiogen.sine(freq, 0.6))
    monkeypatch.setenv("AUDIOFIND_DB", pg_url)  # the URL through the environment, as --db would give it
    cli("index", lib, "-w", "tiny", "--root-name", "library")
    status = json.loads(cli("status", "--json"))
    assert (status["files"], status["model"], status["roots"]) == (3, "tiny", [str(lib)])
    assert [r["name"] for r in json.loads(cli("roots", "--json"))] == ["library"]
    sqlite = tmp_path / "copy.db"
    cli("index", lib, "-w", "tiny", "--db", sqlite)
    for mode in ("text", "audio", "hybrid"):
        pg = json.loads(cli("search", "door creak", "--mode", mode, "--json", "-w", "tiny"))
        lite = json.loads(cli("search", "door creak", "--mode", mode, "--json", "-w", "tiny", "--db", sqlite))
        assert [(r["path"], round(r["score"], 5)) for r in pg] == [(r["path"], round(r["score"], 5)) for r in lite]
    # db copy: PostgreSQL -> SQLite -> another PostgreSQL database, vectors bit for bit
    out = tmp_path / "out.db"
    line = cli("db", "copy", pg_url, out)
    assert line.startswith("copied 3 files, 3 contents") and "postgres:***@" in line
    with open_store(pg_url) as ix, open_store(out) as copy:
        assert snapshot(copy)["contents"] == snapshot(ix)["contents"]
    assert "already holds an index" in one_line_error("db", "copy", out, pg_url)
    report = json.loads(cli("db", "copy", out, pg_url, "--replace", "--json"))
    assert (report["files"], report["contents"]) == (3, 3) and report["destination"] == redact(pg_url)
    with open_store(pg_url) as ix, open_store(out) as copy:
        assert snapshot(copy)["contents"] == snapshot(ix)["contents"]
        assert [r.name for r in ix.roots()] == [f"{os.uname().nodename}:{lib}"]  # by way of SQLite: named by path
        check_consistent(ix)


def test_db_copy_sqlite_to_postgres_keeps_everything(pg_url: str, tmp_path: Path) -> None:
    src = tmp_path / "src.db"
    with open_store(src, create=True) as ix:
        workload(ix, tmp_path / "lib")
        before = snapshot(ix)
        hits = ix.search(np.ones(16), 20, exact=True)
        formats = ix.search_names(NameQuery(words=["flac", "mp3"]), 20)  # words of the files' formats
    cli("db", "copy", src, pg_url)
    with open_store(pg_url) as ix:
        assert ix.search_names(NameQuery(words=["flac", "mp3"]), 20) == formats and formats
        after = snapshot(ix)
        assert after["contents"] == before["contents"] and after["centre"] == before["centre"]
        assert {p: f[2:] for p, f in after["files"].items()} == {p: f[2:] for p, f in before["files"].items()}
        assert ix.search(np.ones(16), 20, exact=True) == hits
        assert [r.name for r in ix.roots()] == [f"{os.uname().nodename}:{tmp_path / 'lib'}"]
        check_consistent(ix)
    assert "both the source and the destination" in one_line_error("db", "copy", pg_url, pg_url, "--replace")


def test_an_older_index_gets_extension_and_format_words_and_header_facts_for_the_files_this_machine_sees(
    pg_url: str, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import audiogen as ag
    from modelkit import register_tiny

    from audiofind.audio import decode

    register_tiny()
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    ag.write_audio(here / "hi.wav", ag.chirp(300, 900, 1.0, sr=96000, channels=2), sr=96000, codec="pcm_s24le")
    ag.write_audio(here / "kick.mp3", ag.sine(55, 0.6))
    ag.write_audio(here / "changed.flac", ag.noise(0.7, seed=4))
    ag.write_audio(there / "far.flac", ag.noise(0.8, seed=3))  # on this disk, but a root only another host mounts
    monkeypatch.setenv("AUDIOFIND_HOST", "other-host")
    cli("index", there, "-w", "tiny", "--db", pg_url)
    monkeypatch.setenv("AUDIOFIND_HOST", "this-host")
    cli("index", here, "-w", "tiny", "--db", pg_url)
    # As an index made before m006: names without the extension, no fact columns, no fingerprints.
    db = connect(pg_url)
    db.execute("UPDATE files SET words = ARRAY['', '', ''], n_words = 0, terms = ''::tsvector WHERE status = 'ok'")
    db.execute("ALTER TABLE audio DROP COLUMN container, DROP COLUMN codec, DROP COLUMN bits")
    db.execute("DROP TABLE fingerprints")
    db.execute(
        "DELETE FROM _audiofind_migrations WHERE name IN ('m006_extension_words', 'm007_audio_facts', 'm008_fingerprints', "
        "'m009_format_words')"
    )
    db.close()
    os.utime(here / "changed.flac", ns=(1, 1))  # not the file that was indexed any more
    probed: list = []
    real_probe = decode.probe
    with monkeypatch.context() as mp:  # the upgrade: headers only, nothing decoded, nothing embedded
        for name in ("stream_audio", "load_audio", "iter_windows"):
            mp.setattr(decode, name, lambda *a, **k: pytest.fail("the migration decoded audio"))
        mp.setattr(
            decode, "probe", lambda path, count=True: probed.append((Path(path).name, count)) or real_probe(path, count)
        )
        with open_store(pg_url) as ix:
            assert migrations.pending(ix.db) == []  # type: ignore[attr-defined]
            hits = {h.path.rsplit("/", 1)[-1].rsplit(":", 1)[-1]: h for h in ix.search(np.ones(32), 10, exact=True)}
            assert {n for n, _ in probed} == {"hi.wav", "kick.mp3"} and not any(c for _, c in probed)
            facts = lambda h: (h.format, h.codec, h.sample_rate, h.bits, h.channels)
            assert facts(hits["hi.wav"]) == ("wav", "pcm_s24le", 96000, 24, 2)
            assert facts(hits["kick.mp3"]) == ("mp3", "mp3", 44100, None, 1)
            assert facts(hits["changed.flac"]) == (None, None, 44100, None, 1)  # rate and channels were always kept
            assert facts(hits["far.flac"]) == (None, None, 44100, None, 1)  # not read from a root mounted elsewhere
            assert hits["far.flac"].path == f"other-host:{there}:far.flac"  # shown by its root's name here
            assert not hits["far.flac"].available and hits["hi.wav"].available
            assert [Path(h.path).name for h in ix.search_names(NameQuery(words=["mp3"]), 10)] == ["kick.mp3"]
            found = ix.search_names(NameQuery(words=["kick", "hi"], excluded=["mp3"]), 10)
            assert [Path(h.path).name for h in found] == ["hi.wav"]
            # the formats the headers gave are words (m009): pcm for the WAV read here
            assert [Path(h.path).name for h in ix.search_names(NameQuery(words=["pcm"]), 10)] == ["hi.wav"]
            assert ix.fingerprints(h.hash for h in hits.values()) == {}


def test_an_older_index_gets_format_names_as_whole_words_without_reading_audio(
    pg_url: str, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import audiogen as ag
    from modelkit import register_tiny

    from audiofind.audio import decode, formats
    from audiofind.store.postgres import fulltext
    from audiofind.store.postgres.roots import Places

    register_tiny()
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("door knock metal.m4a", "kick_deep.mp3", "rain_roof.wav"):
        ag.write_audio(lib / name, ag.sine(60, 0.5))
    cli("index", lib, "-w", "tiny", "--db", pg_url)
    named = lambda ix, word: {Path(h.path).name for h in ix.search_names(NameQuery(words=[word]), 10)}
    with monkeypatch.context() as mp, open_store(pg_url) as ix:  # as an index made before m010: m 4 a, mp 3
        mp.setattr(formats, "FORMAT_WORDS", frozenset())
        fulltext.refill(ix.db, Places(ix.db))  # type: ignore[attr-defined]
        ix.db.execute("DELETE FROM _audiofind_migrations WHERE name = 'm010_whole_format_words'")  # type: ignore[attr-defined]
        assert named(ix, "a") == {"door knock metal.m4a"} and named(ix, "mp") == {"kick_deep.mp3"}
    with monkeypatch.context() as mp:  # the upgrade reads nothing from the files
        for name in ("stream_audio", "load_audio", "iter_windows", "probe"):
            mp.setattr(decode, name, lambda *a, **k: pytest.fail("the migration read audio"))
        with open_store(pg_url) as ix:
            assert migrations.pending(ix.db) == []  # type: ignore[attr-defined]
            assert named(ix, "a") == named(ix, "4") == named(ix, "mp") == set()
            assert named(ix, "m4a") == {"door knock metal.m4a"} and named(ix, "mp3") == {"kick_deep.mp3"}


def test_an_older_index_matches_each_value_of_a_tag_written_as_one_string(pg_url: str, tmp_path: Path) -> None:
    from audiofind.store import Filters

    with open_store(pg_url, create=True) as ix:
        ix.bind_model(BINDING)
        ix.add_file(FileRow(str(tmp_path / "rain.wav"), str(tmp_path), 1, 1, "h", tags={"genre": "Ambience; Nature"}),
                    AudioRow("h", 1.0, 44100, 1), [(0.0, 1.0)], np.ones((1, BINDING.dim), np.float32))  # fmt: skip
    db = connect(pg_url)  # as an index made before m011: each tag folded whole
    db.execute("""UPDATE files SET folded = '{"genre": ["ambience; nature"]}'""")
    db.execute("DELETE FROM _audiofind_migrations WHERE name = 'm011_tag_parts'")
    db.close()
    with open_store(pg_url) as ix:
        assert migrations.pending(ix.db) == []  # type: ignore[attr-defined]
        for value in ("ambience", "Nature", "ambience; nature"):
            assert [Path(h.path).name for h in ix.search(np.ones(BINDING.dim), 5, Filters(tags={"genre": value}))] == [
                "rain.wav"
            ]


def test_a_pending_upgrade_is_one_line_for_a_role_that_may_not_make_it(pg_server, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with open_store(pg_url, create=True) as ix:
        ix.bind_model(BINDING)
    with admin(pg_server) as a:
        a.execute("CREATE ROLE late_reader LOGIN")
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("GRANT USAGE ON SCHEMA audiofind TO late_reader")
        c.execute("GRANT SELECT ON ALL TABLES IN SCHEMA audiofind TO late_reader")
        c.execute("DELETE FROM audiofind._audiofind_migrations WHERE name = 'm011_tag_parts'")  # as if released since
    url = as_role(pg_url, "late_reader")
    try:
        line = one_line_error("status", "--db", url)
        assert "needs 1 upgrade step(s)" in line and "run `audiofind status` once with the role that owns" in line
        assert json.loads(cli("status", "--db", pg_url, "--json"))["files"] == 0  # the owner upgrades it...
        assert json.loads(cli("status", "--db", url, "--json"))["files"] == 0  # ...and the reader reads again
    finally:
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute("DROP OWNED BY late_reader")
        with admin(pg_server) as a:
            a.execute("DROP ROLE late_reader")
