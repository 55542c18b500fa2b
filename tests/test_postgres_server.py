"""The server as `audiofind index` and `search` meet it: a PostgreSQL or pgvector older than audiofind needs (or no
pgvector to use) is one line before anything is written, and a connection killed in the middle of `index` is one
line, after which the next run ends with the index an uninterrupted run makes.

Old versions come through a seam (connection.read_versions and offered_vector report them), and the connection is
killed at the n-th write statement of the run, counted by a cursor as tests/test_postgres_faults.py counts them:
both at chosen points, never by timing.
"""

import dataclasses
from pathlib import Path

import audiogen as ag
import psycopg
import pytest
from click.testing import Result
from modelkit import register_tiny
from storekit import check_consistent, snapshot
from typer.testing import CliRunner

from audiofind.cli import app
from audiofind.errors import IndexNotFound, UnsupportedServer
from audiofind.store import ConnectionLost, open_store
from audiofind.store.postgres import connection, migrations
from audiofind.store.postgres import store as pg_store

pytestmark = pytest.mark.postgres
runner = CliRunner()


def one_line_error(*args: object) -> tuple[int, str]:
    """The exit code and the one stderr line of a command that fails without a traceback."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return result.exit_code, lines[0]


def cli(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return result.stdout


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """Four short sounds, one of them twice, and a long one that commits its windows in chunks."""
    lib = tmp_path / "Library"
    (lib / "Doors").mkdir(parents=True)
    (lib / "Long").mkdir()
    ag.write_audio(lib / "Doors" / "Door_Creak.wav", ag.noise(3.0, seed=1))
    ag.write_audio(lib / "Doors" / "Gate_Slam.flac", ag.sine(420, 2.0))
    ag.write_audio(lib / "Kick808.wav", ag.sine(60, 1.0))
    (lib / "Doors" / "Door_Creak_copy.wav").write_bytes((lib / "Doors" / "Door_Creak.wav").read_bytes())
    ag.write_audio(lib / "Long" / "rain.wav", ag.noise(30.0, seed=9, amp=0.2))  # 5 windows
    register_tiny()
    return lib


def state(url: str) -> tuple:
    """What a refused command must leave as it was: pgvector in the database, our schema, and the index in it."""
    with psycopg.connect(url, autocommit=True) as c:
        ext = c.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        schema = c.execute("SELECT to_regnamespace('audiofind')").fetchone()
    if schema[0] is None:
        return ext, None
    with open_store(url) as ix:
        return ext, snapshot(ix)


# Too old, or nothing to use: (what the seam reports, words the line must have).
OLD = {
    "postgres 15": (dict(postgres="15.6 (Debian 15.6-0+deb12u1)", postgres_num=150006),
                    ["runs PostgreSQL 15.6;", "needs PostgreSQL 16 or later with pgvector 0.8 or later"]),
    "pgvector 0.7 created": (dict(vector="0.7.4", vector_schema="public"),
                             ["has pgvector 0.7.4;", "needs pgvector 0.8 or later", "ALTER EXTENSION vector UPDATE"]),
    "pgvector 0.7 everywhere": (dict(vector="0.7.4", vector_schema="public", offered="0.7.4"),
                                ["has pgvector 0.7.4;", "upgrade the server's pgvector package",
                                 "ALTER EXTENSION vector UPDATE"]),
    "pgvector 0.7 offered": (dict(vector=None, vector_schema=None, offered="0.7.4"),
                             ["offers pgvector 0.7.4;", "needs pgvector 0.8 or later", "upgrade the server's pgvector",
                              "CREATE EXTENSION vector"]),
    "no pgvector": (dict(vector=None, vector_schema=None, offered=None),
                    ["has no pgvector;", "needs pgvector 0.8 or later", "install the server's pgvector package",
                     "CREATE EXTENSION vector"]),
}  # fmt: skip


@pytest.mark.parametrize("indexed", [False, True], ids=["new database", "with an index"])
@pytest.mark.parametrize("case", list(OLD))
def test_an_older_server_or_pgvector_is_one_line_and_nothing_is_written(
    pg_url: str, library: Path, monkeypatch, case: str, indexed: bool
) -> None:  # type: ignore[no-untyped-def]
    if indexed:
        cli("index", library / "Doors", "--db", pg_url, "-w", "tiny")
    before = state(pg_url)
    fake = dict(OLD[case][0])
    offered = fake.pop("offered", "real")
    read = connection.read_versions
    monkeypatch.setattr(connection, "read_versions", lambda db: dataclasses.replace(read(db), **fake))
    if offered != "real":
        monkeypatch.setattr(connection, "offered_vector", lambda db: offered)
    for command in (["index", library, "-w", "tiny"], ["search", "door creak", "-w", "tiny"]):
        code, line = one_line_error(*command, "--db", pg_url)
        assert code == UnsupportedServer.exit_code == 1, (command, line)
        assert all(words in line for words in OLD[case][1]), line
        assert "postgres:***@" in line, line  # the URL as every message shows it
    monkeypatch.undo()
    assert state(pg_url) == before  # neither the extension, nor a schema, nor a row


# The server goes away in the middle of `index`.

ROW_WRITES = {"INSERT", "UPDATE", "DELETE", "COPY"}


class Killer:
    """Counts the row writes of every session the run opens; at the at-th, the server ends that session (as a
    restart ends them all) before the statement reaches it, so that statement is the one in flight when it dies."""

    def __init__(self, admin_url: str, at: int | None = None) -> None:
        self.admin_url, self.at, self.writes = admin_url, at, 0

    def seen(self, conn: psycopg.Connection, statement: object) -> None:
        words = str(statement).split(None, 1)
        if words and words[0].upper() in ROW_WRITES:
            self.writes += 1
            if self.writes == self.at:
                with psycopg.connect(self.admin_url, autocommit=True) as admin:
                    # With a timeout the call waits until the backend has gone: no race with what follows.
                    gone = admin.execute("SELECT pg_terminate_backend(%s, 10000)", (conn.info.backend_pid,))
                    assert gone.fetchone() == (True,)

    def cursor(self) -> type[psycopg.Cursor]:
        killer = self

        class KillingCursor(psycopg.Cursor):
            def execute(self, query, params=None, **kw):  # type: ignore[no-untyped-def,override]
                killer.seen(self.connection, query)
                return super().execute(query, params, **kw)

            def executemany(self, query, params_seq, **kw):  # type: ignore[no-untyped-def,override]
                killer.seen(self.connection, query)
                return super().executemany(query, params_seq, **kw)

            def copy(self, statement, params=None, **kw):  # type: ignore[no-untyped-def,override]
                killer.seen(self.connection, statement)
                return super().copy(statement, params, **kw)

        return KillingCursor


def index_with(killer: Killer, library: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> Result:
    """`audiofind index LIBRARY --db URL` with every server session it opens watched by killer."""

    def watched(*args, **kwargs):  # type: ignore[no-untyped-def]
        db = connection.connect(*args, **kwargs)
        db.conn.cursor_factory = killer.cursor()
        return db

    with monkeypatch.context() as m:
        m.setattr(pg_store, "connect", watched)  # the store's one way to a server session
        return runner.invoke(app, ["index", str(library), "--db", url, "-w", "tiny"])


def test_a_server_stopped_mid_index_is_one_line_and_the_next_run_ends_as_an_uninterrupted_one(
    pg_server, pg_url: str, library: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from audiofind.library import pipeline

    monkeypatch.setattr(pipeline, "CHUNK_SECONDS", 10.0)  # the long file commits 2 windows at a time
    admin_url = pg_server.get_uri()
    counter = Killer(admin_url)
    assert index_with(counter, library, pg_url, monkeypatch).exit_code == 0
    with open_store(pg_url) as ix:
        expected = snapshot(ix)
        assert len(expected["files"]) == 5 and expected["partial"] == []
    assert counter.writes > 30, counter.writes
    # Every third row write and the last (about 14 of 38): the first migrations, the model's binding, the root, the
    # statements of a file's one transaction, a long file's first and later chunks, its completion, the root's
    # timestamp. Every write is a fault point of test_postgres_faults; here each costs two runs of the command.
    points = [*range(1, counter.writes + 1, 3), counter.writes]
    unfinished = 0
    for at in points:
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute("DROP SCHEMA audiofind CASCADE")  # back to a database with nothing indexed
        result = index_with(Killer(admin_url, at), library, pg_url, monkeypatch)
        assert result.exit_code == ConnectionLost.exit_code == 1, (at, result.output)
        assert "Traceback" not in result.output, (at, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
        assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], (at, result.stderr)
        assert "was lost" in errors[0] and "run the same command again to continue" in errors[0], errors[0]
        try:
            with open_store(pg_url) as ix:
                check_consistent(ix)
                unfinished += bool(snapshot(ix)["partial"])
        except IndexNotFound:
            assert at <= len(migrations.names()), at  # killed while the first migrations were being recorded
        cli("index", library, "--db", pg_url, "-w", "tiny")
        with open_store(pg_url) as ix:
            assert snapshot(ix) == expected, f"killed at row write {at} of {counter.writes}"
    assert unfinished, "no kill left a long file half committed: the resume inside one went untested"
