"""Faults at every write: the store fails (or the process dies) at its n-th write, for every n over a small library.

After each fault the index is consistent (integrity check, no orphans, every file whole), and the next run ends
with an index identical, bit for bit, to one built without faults. Faults are injected deterministically through
SQLite's statement trace: an exception at the n-th write, or a real process death (a forked child calls _exit
there), never a timing race.
"""

import os
import shutil
from pathlib import Path

import apsw
import audiogen
import numpy as np
import pytest
import torch
from indexkit import check_consistent, snapshot, tiny_encoder

from audiofind.library import pipeline
from audiofind.library.sync import binding, sync
from audiofind.store.sqlite import files as store_index
from audiofind.store.sqlite.store import SqliteStore

WRITES = {"INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "REPLACE", "COMMIT"}
KILLED = 77  # the child's exit status when it died at the fault, as planned


class Faults:
    """An APSW statement tracer that counts writes and fails at the n-th: by raising, or by ending the process."""

    def __init__(self, at: int | None = None, kill: bool = False) -> None:
        self.at, self.kill, self.writes = at, kill, 0

    def __call__(self, cursor: apsw.Cursor, sql: str, bindings: object) -> bool:
        if sql.lstrip().split(None, 1)[0].upper() in WRITES:
            self.writes += 1
            if self.writes == self.at:
                if self.kill:
                    os._exit(KILLED)  # no rollback, no cleanup: what SIGKILL leaves
                raise apsw.IOError(f"injected fault at write {self.at}")
        return True


def _noise_wav(path: Path, seconds: float, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return audiogen.write_int16_wav(path, (audiogen.noise(seconds, seed=seed) * 9000).astype(np.int16))


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A first index (state A) of 10 files, then changes on disk: a move, a copy, a change, a deletion, new files."""
    torch.set_num_threads(1)
    monkeypatch.setattr(pipeline, "CHUNK_SECONDS", 3.0)  # long files commit in chunks of 6 windows
    monkeypatch.setattr(store_index, "CENTRE_AFTER", 40)  # the code centre is frozen during the faulty run
    root = tmp_path / "lib"
    for i, seconds in enumerate([0.4, 0.7, 1.2, 0.5, 2.0, 0.3, 0.9, 1.6]):
        _noise_wav(root / f"d{i % 2}" / f"s{i}.wav", seconds, seed=i)
    _noise_wav(root / "long" / "a.wav", 6.0, seed=20)
    _noise_wav(root / "long" / "b.wav", 7.5, seed=21)
    enc = tiny_encoder()
    state_a = tmp_path / "a.db"
    with SqliteStore.open(state_a) as index:
        index.bind_model(binding(enc, window=1.0, hop=0.5))
        sync(index, enc, [root])
    (root / "d1" / "sub").mkdir()
    os.replace(root / "d0" / "s0.wav", root / "d1" / "sub" / "s0-moved.wav")
    shutil.copy(root / "d1" / "s1.wav", root / "d0" / "s1-copy.wav")
    _noise_wav(root / "d0" / "s2.wav", 1.1, seed=99)  # changed
    (root / "d1" / "s3.wav").unlink()
    _noise_wav(root / "long" / "c.wav", 8.0, seed=22)
    _noise_wav(root / "new" / "n.wav", 0.6, seed=23)
    audiogen.write_truncated(
        root / "new" / "bad.flac", audiogen.write_audio(tmp_path / "src.flac", audiogen.sine(440, 3.0))
    )
    shutil.copy(root / "new" / "n.wav", root / "new" / "n-copy.wav")  # a copy met in the same run
    return tmp_path, root, enc, state_a


def _run(db: Path, root: Path, enc, faults: Faults | None = None) -> None:  # type: ignore[no-untyped-def]
    with SqliteStore.open(db) as index:
        if faults is not None:
            index.conn.exec_trace = faults
        sync(index, enc, [root])


def test_every_write_can_fail_and_the_next_run_finishes_the_same_index(world) -> None:  # type: ignore[no-untyped-def]
    tmp, root, enc, state_a = world
    ref = tmp / "ref.db"
    shutil.copy(state_a, ref)
    counter = Faults()
    _run(ref, root, enc, counter)
    expected = snapshot(ref)
    assert counter.writes > 40, counter.writes
    assert expected["partial"] == [] and len(expected["files"]) == 14
    covered = {"exception": 0, "kill": 0}
    for n in range(1, counter.writes + 1):
        for mode in ("exception", "kill"):
            db = tmp / f"{mode}-{n}.db"
            shutil.copy(state_a, db)
            if mode == "exception":
                with pytest.raises(Exception, match="injected fault"):
                    _run(db, root, enc, Faults(n))
            else:
                pid = os.fork()
                if pid == 0:  # the child dies at its n-th write; reaching the end is a failure of the test
                    try:
                        _run(db, root, enc, Faults(n, kill=True))
                    finally:
                        os._exit(3)
                _, status = os.waitpid(pid, 0)
                assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == KILLED, (n, status)
            check_consistent(db)
            _run(db, root, enc)
            assert snapshot(db) == expected, f"{mode} at write {n} of {counter.writes}"
            covered[mode] += 1
            db.unlink()
            Path(f"{db}-wal").unlink(missing_ok=True)
            Path(f"{db}-shm").unlink(missing_ok=True)
    print(f"fault points covered: {covered}")
    assert covered["exception"] == covered["kill"] == counter.writes
