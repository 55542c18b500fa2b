"""Several `audiofind index` processes writing one shared (PostgreSQL) index at once, and one killed mid-file (#18).

Each writer is a real `audiofind index` process. tests/writersite/sitecustomize.py (on their PYTHONPATH) counts the
windows of every model call, holds the writers at a barrier until all of them are about to embed, shortens the
chunks a long file commits, and SIGKILLs a writer right after a chunk: every count and every kill is at a chosen
point of the code, never a matter of timing.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import audiogen as ag
import numpy as np
import psycopg
import pytest
from modelkit import register_tiny
from storekit import check_consistent, snapshot
from typer.testing import CliRunner

from audiofind.cli import app
from audiofind.store import open_store

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).parent.parent
SITE = Path(__file__).parent / "writersite"


def writer(url: str, folders: list[Path], tmp: Path, name: str, **hooks: str) -> subprocess.Popen:
    """`audiofind index FOLDERS --db URL --json` as its own process, with the hooks asked for (see the module doc)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT)]),
           "AUDIOFIND_TEST_WINDOWS": str(tmp / f"{name}.windows"), **hooks}  # fmt: skip
    argv = [sys.executable, "-m", "audiofind", "index", *map(str, folders), "--db", url, "-w", "tiny", "--json"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def finish(proc: subprocess.Popen) -> tuple[dict, list[str]]:
    """The writer's JSON report and the files it says it embedded."""
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    embedded = [line.split(" ", 1)[1] for line in err.splitlines() if line.startswith("embedded ")]
    return json.loads(out), embedded


def windows(tmp: Path, name: str) -> int:
    """How many windows the writer's model embedded."""
    path = tmp / f"{name}.windows"
    return sum(int(n) for n in path.read_text().split()) if path.exists() else 0


def new_database(pg_server) -> str:  # type: ignore[no-untyped-def]
    name = f"ref_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return pg_server.get_uri(database=name)


def comparable(url: str) -> dict:
    """An index as one writer decides it: files and contents by path and hash, vectors to float32 rounding."""
    with open_store(url) as ix:
        snap = snapshot(ix)
        check_consistent(ix)
    files = {p: f[2:] for p, f in snap["files"].items()}
    contents = {h: (a, spans, np.frombuffer(v, np.float32)) for h, (a, spans, v) in snap["contents"].items()}
    return {"files": files, "contents": contents, "roots": snap["roots"], "partial": snap["partial"]}


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """Three folders: b is indexed by both writers, a and c each by one; a and c hold copies of b's sounds."""
    lib = tmp_path / "lib"
    for folder in "abc":
        (lib / folder).mkdir(parents=True)
    ag.write_audio(lib / "a" / "a1.wav", ag.noise(3.0, seed=1))
    ag.write_audio(lib / "b" / "b1.wav", ag.noise(4.0, seed=2))
    ag.write_audio(lib / "b" / "b2.wav", ag.noise(5.0, seed=3))
    ag.write_audio(lib / "b" / "b3.wav", ag.sine(440, 2.0))
    ag.write_audio(lib / "b" / "long.wav", ag.noise(30.0, seed=9, amp=0.2))  # 5 windows, committed 2 at a time
    ag.write_audio(lib / "c" / "c2.wav", ag.noise(6.0, seed=5))
    (lib / "a" / "a2.wav").write_bytes((lib / "b" / "b1.wav").read_bytes())
    (lib / "c" / "c1.wav").write_bytes((lib / "b" / "b2.wav").read_bytes())
    register_tiny()
    return lib


CONTENTS, WINDOWS = 6, 1 + 1 + 1 + 1 + 5 + 1  # distinct sounds, and the windows a single writer embeds


def test_two_writers_over_overlapping_folders_embed_each_content_once(pg_server, pg_url: str, library: Path,
                                                                       tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    lib = library
    (tmp_path / "barrier").mkdir()
    hooks = {"AUDIOFIND_TEST_BARRIER": f"{tmp_path / 'barrier'}:2", "AUDIOFIND_TEST_CHUNK_SECONDS": "10"}
    one = writer(pg_url, [lib / "a", lib / "b"], tmp_path, "one", **hooks)
    two = writer(pg_url, [lib / "b", lib / "c"], tmp_path, "two", **hooks)
    (report_one, embedded_one), (report_two, embedded_two) = finish(one), finish(two)
    # Every content embedded exactly once, by one of them: once in a report, once in the model.
    assert report_one["embedded"] + report_two["embedded"] == CONTENTS
    assert windows(tmp_path, "one") + windows(tmp_path, "two") == WINDOWS
    with open_store(pg_url) as ix:
        hashes = [ix.get_file(p).hash for p in embedded_one + embedded_two]  # type: ignore[union-attr]
        assert len(hashes) == len(set(hashes)) == CONTENTS
        assert ix.stats().files == 8 and ix.stats().audio == CONTENTS and ix.stats().failed == 0
    # Each writer's report covers its own folders: what the other embedded is a copy here, never embedded twice.
    for report, n in ((report_one, 6), (report_two, 6)):
        assert report["seen"] == n and report["embedded"] + report["reused"] + report["skipped"] == n, report
    # The index is the one a single writer makes.
    reference = new_database(pg_server)
    result = CliRunner().invoke(
        app, ["index", str(lib / "a"), str(lib / "b"), str(lib / "c"), "--db", reference, "-w", "tiny", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["embedded"] == CONTENTS
    shared, single = comparable(pg_url), comparable(reference)
    assert shared["files"] == single["files"] and shared["roots"] == single["roots"] and shared["partial"] == []
    assert shared["contents"].keys() == single["contents"].keys()
    for h, (audio, spans, v) in single["contents"].items():
        assert shared["contents"][h][:2] == (audio, spans)
        np.testing.assert_allclose(shared["contents"][h][2], v, atol=1e-6)


def test_a_writer_killed_mid_file_leaves_nothing_partial_and_the_next_run_completes_it(pg_url: str, library: Path,
                                                                                         tmp_path: Path) -> None:  # fmt: skip
    folder = library / "b"
    long = folder / "long.wav"
    killed = writer(
        pg_url, [folder], tmp_path, "killed", AUDIOFIND_TEST_CHUNK_SECONDS="10", AUDIOFIND_TEST_KILL_AT_CHUNK="1"
    )
    killed.communicate(timeout=300)
    assert killed.returncode == -9  # SIGKILLed right after the long file's first chunk was committed
    assert windows(tmp_path, "killed") == 3 + 2  # the short files (first), then the long file's first chunk
    with open_store(pg_url) as ix:
        names = sorted(Path(r.path).name for r in ix.files_under([folder]))
        assert names == ["b1.wav", "b2.wav", "b3.wav"]  # the long file is nowhere yet
        assert all("long" not in h.path for h in ix.search(np.ones(32), 10, exact=True))
        unfinished = [h for (h,) in ix.db.execute("SELECT hash FROM partial").fetchall()]  # type: ignore[attr-defined]
        assert len(unfinished) == 1 and ix.partial_segments(unfinished[0]) == 2
        deadline = time.monotonic() + 30
        while not ix.claim(unfinished[0]):  # the server drops a dead session's claims once it notices
            assert time.monotonic() < deadline, "the killed writer's claim was never released"
            time.sleep(0.05)
        ix.release(unfinished[0])
    report, embedded = finish(writer(pg_url, [folder], tmp_path, "next", AUDIOFIND_TEST_CHUNK_SECONDS="10"))
    assert embedded == [str(long)] and (report["embedded"], report["skipped"]) == (1, 3)
    assert windows(tmp_path, "next") == 5 - 2  # the committed chunk is not embedded again
    with open_store(pg_url) as ix:
        assert ix.get_file(long).hash == unfinished[0]  # type: ignore[union-attr]
        assert ix.segment_vectors(unfinished[0])[1].shape == (5, 32)
        assert any(h.path == str(long) for h in ix.search(np.ones(32), 10, exact=True))
        check_consistent(ix)
