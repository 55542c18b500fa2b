"""Faults at every write against PostgreSQL: the store fails (or its process dies) at its n-th write statement, for
every n over a small library written through the protocol (storekit.workload).

After each fault the index is consistent (no partial file visible, no orphans, the names index in step), and
running the same work again ends with an index identical, bit for bit, to one built without faults. Faults are
injected deterministically by a cursor that counts write statements (execute, executemany, COPY): an exception at
the n-th, or a real process death there (a forked child calls _exit), never a timing race.
"""

import os
from pathlib import Path

import psycopg
import pytest
from storekit import BINDING, check_consistent, snapshot, sql, workload

from audiofind.errors import StorageError
from audiofind.store import open_store
from audiofind.store.postgres import rows, search

WRITES = {"INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "COPY"}
KILLED = 77  # the child's exit status when it died at the fault, as planned


class Faults:
    """Counts write statements and fails at the n-th: by raising, or by ending the process."""

    def __init__(self, at: int | None = None, kill: bool = False) -> None:
        self.at, self.kill, self.writes = at, kill, 0

    def seen(self, statement: object) -> None:
        words = str(statement).split(None, 1)
        if words and words[0].upper() in WRITES:
            self.writes += 1
            if self.writes == self.at:
                if self.kill:
                    os._exit(KILLED)  # no rollback, no goodbye to the server: what SIGKILL leaves
                raise psycopg.OperationalError(f"injected fault at write {self.at}")


def faulty(faults: Faults) -> type[psycopg.Cursor]:
    class FaultCursor(psycopg.Cursor):
        def execute(self, query, params=None, **kw):  # type: ignore[no-untyped-def,override]
            faults.seen(query)
            return super().execute(query, params, **kw)

        def executemany(self, query, params_seq, **kw):  # type: ignore[no-untyped-def,override]
            faults.seen(query)
            return super().executemany(query, params_seq, **kw)

        def copy(self, statement, params=None, **kw):  # type: ignore[no-untyped-def,override]
            faults.seen(statement)
            return super().copy(statement, params, **kw)

    return FaultCursor


def _run(url: str, root: Path, faults: Faults | None = None) -> None:
    with open_store(url, create=True) as ix:
        if faults is not None:
            ix.db.conn.cursor_factory = faulty(faults)  # type: ignore[attr-defined]
        workload(ix, root)


def _codes(url: str) -> list:
    with open_store(url) as ix:
        return sorted(sql(ix, 'SELECT hash, start, "end", code::text FROM segments'))


def _state_a(url: str) -> None:
    """Back to an empty index bound to the model (what every run starts from)."""
    with open_store(url, create=True) as ix:
        ix.reset()
        ix.bind_model(BINDING)


@pytest.mark.postgres
def test_every_write_can_fail_and_the_next_run_finishes_the_same_index(pg_url, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(rows, "CENTRE_AFTER", 12)  # the code centre is frozen during the run
    monkeypatch.setattr(search, "INDEX_AFTER", 20)  # and the HNSW index built at its end
    root = tmp_path / "lib"
    _state_a(pg_url)
    counter = Faults()
    _run(pg_url, root, counter)
    with open_store(pg_url) as ix:
        expected = snapshot(ix)
        assert expected["partial"] == [] and len(expected["files"]) == 9 and expected["centre"] is not None
    codes = _codes(pg_url)
    assert counter.writes > 30, counter.writes
    covered = {"exception": 0, "kill": 0}
    for n in range(1, counter.writes + 1):
        for mode in ("exception", "kill") if n % 4 == 1 else ("exception",):
            _state_a(pg_url)
            if mode == "exception":
                with pytest.raises(StorageError, match="injected fault"):
                    _run(pg_url, root, Faults(n))
            else:
                pid = os.fork()
                if pid == 0:  # the child dies at its n-th write; reaching the end is a failure of the test
                    try:
                        _run(pg_url, root, Faults(n, kill=True))
                    finally:
                        os._exit(3)
                _, status = os.waitpid(pid, 0)
                assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == KILLED, (n, status)
            with open_store(pg_url) as ix:
                check_consistent(ix)
            _run(pg_url, root)
            with open_store(pg_url) as ix:
                assert snapshot(ix) == expected, f"{mode} at write {n} of {counter.writes}"
            assert _codes(pg_url) == codes, f"{mode} at write {n}: binary codes differ"
            covered[mode] += 1
    print(f"fault points covered: {covered}")
    assert covered["exception"] == counter.writes and covered["kill"] >= counter.writes // 4
