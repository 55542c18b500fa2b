"""Storage faults through the CLI: a full disk, a read-only index or folder, a wrong --db, a newer index.

Each ends with one `error: ...` line and exit 1, and leaves the index as it was before the failing write.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import apsw
import audiogen
import mutagen.flac
import pytest
from modelkit import register_tiny
from typer.testing import CliRunner

from audiofind.cli import app
from audiofind.errors import StorageError
from audiofind.store.sqlite import migrations
from audiofind.store.sqlite.connection import connect
from audiofind.store.sqlite.store import SqliteStore

runner = CliRunner()
REPO = Path(__file__).parent.parent

# Run `python -m audiofind ...` in a process that permission bits apply to: root ignores them (CAP_DAC_OVERRIDE),
# so as root the two capabilities that override them are dropped from the bounding set, and lost on exec.
AS_USER = """
import ctypes, os, sys
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0):  # PR_CAPBSET_DROP
            sys.exit(f"cannot drop capability {cap}: errno {ctypes.get_errno()}")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def cli(*args: object) -> tuple[int, str, str]:
    """Run audiofind in this process: (exit code, stdout, stderr)."""
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def as_user(*args: object) -> tuple[int, str, str]:
    """Run audiofind in a child process subject to file permissions, even when the tests run as root."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-c", AS_USER, "-m", "audiofind", *map(str, args)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    return done.returncode, done.stdout, done.stderr


def one_error_line(code: int, stderr: str) -> str:
    """The single `error: ...` line of a failed command: exit 1, its last line, after only per-file progress lines."""
    lines = stderr.strip().splitlines()
    progress = ("embedded ", "reused ", "moved ", "removed ")  # what index prints per file without a terminal
    assert code == 1 and lines[-1].startswith("error: "), (code, stderr)
    assert all(line.startswith(progress) for line in lines[:-1]), stderr
    return lines[-1]


def snapshot(db: Path) -> dict[str, list]:
    """Every stored row that matters, in a stable order (indexed_at and applied_at aside)."""
    conn = connect(db, create=False)  # not SqliteStore.open: that refuses an index from a newer audiofind
    try:
        q = lambda sql: conn.execute(sql).fetchall()
        return {
            "files": q("SELECT path, root, size, mtime_ns, hash, status, error, tags FROM files ORDER BY path"),
            "audio": q("SELECT * FROM audio ORDER BY hash"),
            "segments": q('SELECT id, hash, start, "end", code FROM segments ORDER BY id'),
            "vectors": q("SELECT rowid, embedding FROM vectors ORDER BY rowid"),
            "meta": q("SELECT key, value FROM meta ORDER BY key"),
            "roots": q("SELECT path FROM roots ORDER BY path"),
            "migrations": q(f"SELECT name FROM {migrations.TABLE} ORDER BY rowid"),
        }
    finally:
        conn.close()


def check_sound(db: Path) -> None:
    """Integrity ok; every file has its audio, segments and vectors; nothing orphaned."""
    with SqliteStore.open(db, create=False) as ix:
        one = lambda sql: ix.conn.execute(sql).fetchone()[0]
        assert one("PRAGMA integrity_check") == "ok"
        assert (
            one(
                "SELECT count(*) FROM files f LEFT JOIN audio a ON a.hash = f.hash WHERE f.status = 'ok' AND a.hash IS NULL"
            )
            == 0
        )
        assert one("SELECT count(*) FROM audio a WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.hash = a.hash)") == 0
        assert (
            one("SELECT count(*) FROM audio a WHERE NOT EXISTS (SELECT 1 FROM segments s WHERE s.hash = a.hash)") == 0
        )
        assert one("SELECT count(*) FROM segments") == one("SELECT count(*) FROM vectors")
        assert one("SELECT count(*) FROM segments s LEFT JOIN vectors v ON v.rowid = s.id WHERE v.rowid IS NULL") == 0


@pytest.fixture
def tiny() -> str:
    return register_tiny()


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """Three short tones."""
    root = tmp_path / "lib"
    root.mkdir()
    for i, freq in enumerate((220, 440, 880)):
        audiogen.write_audio(root / f"tone{i}.wav", audiogen.sine(freq, 0.5))
    return root


@pytest.fixture
def indexed(tmp_path: Path, tiny: str, library: Path) -> tuple[Path, Path]:
    """The library (root, db) indexed through the CLI."""
    root, db = library, tmp_path / "idx" / "index.db"
    code, _, err = cli("index", root, "--db", db, "-w", tiny, "--json")
    assert code == 0, err
    return root, db


def search(run, db: Path, tiny: str) -> list[str]:  # type: ignore[no-untyped-def]
    code, out, err = run("search", "a tone", "--db", db, "-w", tiny, "--paths")
    assert code == 0, err
    return out.splitlines()


# A full disk.


def test_a_full_disk_is_one_line_and_keeps_everything_before_the_failing_file(
    tmp_path: Path, tiny: str, indexed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, db = indexed
    before = snapshot(db)
    # Each new file carries a 6 kB tag: two overflow pages, so a limit a few pages above today's size lets the
    # first new file in and stops the next one.
    new = []
    for i in range(4):
        path = audiogen.write_audio(root / f"new{i}.flac", audiogen.chirp(300 + 100 * i, 900, 0.5))
        tags = mutagen.flac.FLAC(path)
        tags["comment"] = f"{i} " + "long notes " * 550
        tags.save()
        new.append(path)
    with SqliteStore.open(db, create=False) as ix:
        pages = ix.conn.execute("PRAGMA page_count").fetchone()[0]

    def small_disk(conn: apsw.Connection) -> None:  # every connection the CLI opens sees a disk that is nearly full
        conn.execute(f"PRAGMA max_page_count = {pages + 3}")

    monkeypatch.setattr(apsw, "connection_hooks", [small_disk])
    code, _, err = cli("index", root, "--db", db, "-w", tiny)
    line = one_error_line(code, err)
    assert line == (
        f"error: The disk holding {db} is full; free some space and run the same command again: everything indexed "
        "so far is kept."
    )
    monkeypatch.setattr(apsw, "connection_hooks", [])

    after = snapshot(db)
    check_sound(db)
    old = {row[0] for row in before["files"]}
    assert [r for r in after["files"] if r[0] in old] == before["files"]  # what was there is untouched
    added = [r[0] for r in after["files"] if r[0] not in old]
    assert 1 <= len(added) < len(new) and all(r[5] == "ok" for r in after["files"])  # whole files only, no failures

    code, _, err = cli("index", root, "--db", db, "-w", tiny)  # space freed: the same command finishes the job
    assert code == 0, err
    check_sound(db)
    clean = tmp_path / "clean.db"
    assert cli("index", root, "--db", clean, "-w", tiny)[0] == 0
    final, expected = snapshot(db), snapshot(clean)
    assert final["files"] == expected["files"] and final["audio"] == expected["audio"]
    by_content = lambda s: sorted((seg[1:], vec) for seg, (_, vec) in zip(s["segments"], s["vectors"]))
    assert by_content(final) == by_content(expected)  # the same vectors, bit for bit


def test_a_full_disk_inside_a_batch_rolls_the_batch_back(indexed: tuple[Path, Path]) -> None:
    _, db = indexed
    before = snapshot(db)
    with SqliteStore.open(db) as ix:
        pages = ix.conn.execute("PRAGMA page_count").fetchone()[0]
        ix.conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StorageError, match="is full"), ix.transaction():
            ix.remove_files([before["files"][0][0]])  # fits: deletes free space
            with ix.transaction():  # a savepoint, as add_file inside a batch
                ix.conn.execute("INSERT INTO roots (path) VALUES (?)", ("x" * 20_000,))
        assert not ix.conn.in_transaction
    assert snapshot(db) == before


# Read-only indexes: searched when SQLite can read them, refused in one line when written.


def can_defeat_permissions(tmp_path: Path) -> bool:
    """Whether a child process can still write a read-only file (root whose capabilities cannot be dropped)."""
    probe = tmp_path / "probe.txt"
    probe.write_text("x")
    probe.chmod(0o444)
    argv = [sys.executable, "-c", AS_USER, "-c", f"open({str(probe)!r}, 'a')"]
    code = subprocess.run(argv, capture_output=True, check=False).returncode
    probe.chmod(0o644)
    return code == 0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
@pytest.mark.parametrize("read_only", ["file", "folder"])
def test_a_read_only_index_is_searched_and_refuses_writes_in_one_line(
    tmp_path: Path, tiny: str, indexed: tuple[Path, Path], read_only: str
) -> None:
    if can_defeat_permissions(tmp_path):
        pytest.skip("permission bits do not apply: root with CAP_DAC_OVERRIDE that cannot be dropped")
    root, db = indexed
    before, hits = snapshot(db), search(cli, db, tiny)
    audiogen.write_audio(root / "new.wav", audiogen.sine(660, 0.5))  # something for `index` to write
    if read_only == "folder":  # as after a copy: so `index` cannot even make its lock file
        Path(f"{db}.lock").unlink()
    locked = db if read_only == "file" else db.parent
    locked.chmod(0o444 if read_only == "file" else 0o555)
    try:
        if read_only == "folder":  # WAL cannot make its -shm here: the index is read as immutable
            assert search(as_user, db, tiny) == hits
        code, out, err = as_user("status", "--db", db, "--json")
        assert code == 0 and json.loads(out)["files"] == 3, err
        line = one_error_line(*as_user("index", root, "--db", db, "-w", tiny)[::2])
        assert line == (
            f"error: The index {db} is read-only for this user; make it and its folder writable (or give --db "
            "another file) and run the same command again."
        )
    finally:
        locked.chmod(0o644 if read_only == "file" else 0o755)
    assert snapshot(db) == before


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_a_read_only_folder_with_a_leftover_log_is_one_line(tmp_path: Path, indexed: tuple[Path, Path]) -> None:
    if can_defeat_permissions(tmp_path):
        pytest.skip("permission bits do not apply: root with CAP_DAC_OVERRIDE that cannot be dropped")
    _, db = indexed
    before = snapshot(db)
    # A write left in the log (as a killed writer leaves it), then the shared-memory file lost (copied without it).
    code = f"""
import os, apsw
c = apsw.Connection({str(db)!r})
c.execute("PRAGMA wal_autocheckpoint=0")
c.execute("UPDATE roots SET last_indexed_at = last_indexed_at + 1")
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    Path(f"{db}-shm").unlink()
    assert Path(f"{db}-wal").stat().st_size > 0
    db.parent.chmod(0o555)
    try:
        line = one_error_line(*as_user("status", "--db", db)[::2])
    finally:
        db.parent.chmod(0o755)
    assert line == (
        f"error: Cannot read the index {db}: its latest changes are in index.db-wal, which SQLite can read only by "
        f"creating index.db-shm beside it, and this user cannot write to {db.parent}; run the command once as a user "
        "who can (the owner of the index), or make that folder writable."
    )
    assert snapshot(db) == before


# Wrong --db values and a newer index.


@pytest.mark.parametrize("command", ["index", "search", "status"])
@pytest.mark.parametrize("kind", ["folder", "text", "damaged", "newer"])
def test_a_wrong_db_is_one_line_and_left_alone(
    tmp_path: Path, tiny: str, library: Path, request: pytest.FixtureRequest, kind: str, command: str
) -> None:
    root = library
    if kind == "folder":
        db = tmp_path / "a folder"
        (db / "inside").mkdir(parents=True)
        expected = f"error: {db} is a folder, not an index file; give --db a file, such as {db / 'index.db'}."
    elif kind == "text":
        db = tmp_path / "notes.txt"
        db.write_text("shopping list: eggs, milk\n" * 200)
        expected = f"error: {db} is not an audiofind index (it is not an SQLite database); give --db another file."
    elif kind == "damaged":
        _, db = request.getfixturevalue("indexed")
        with SqliteStore.open(
            db
        ) as ix:  # damage the page of a table read on opening, past the schema SQLite checks first
            sql = "SELECT rootpage FROM sqlite_master WHERE name = ?"
            page, size = (
                ix.conn.execute(sql, (migrations.TABLE,)).fetchone()[0],
                ix.conn.execute("PRAGMA page_size").fetchone()[0],
            )
        data = bytearray(db.read_bytes())
        data[(page - 1) * size : page * size] = b"\xff" * size
        db.write_bytes(bytes(data))
        expected = f"error: The index {db} is damaged (database disk image is malformed); move it away and index your folders again."
    else:
        _, db = request.getfixturevalue("indexed")
        with SqliteStore.open(db) as ix:
            ix.conn.execute(f"INSERT INTO {migrations.TABLE} VALUES ('m999_from_the_future', 'later')")
        expected = (
            f"error: The index {db} was written by a newer audiofind (unknown migrations: m999_from_the_future); "
            "upgrade audiofind to use it."
        )
    state = lambda: (
        sorted(p.name for p in db.iterdir()) if db.is_dir() else (snapshot(db) if kind == "newer" else db.read_bytes())
    )
    before = state()
    args = {"index": ["index", root, "-w", tiny], "search": ["search", "a tone", "-w", tiny], "status": ["status"]}[
        command
    ]
    code, _, err = cli(*args, "--db", db)
    assert one_error_line(code, err) == expected
    assert state() == before
