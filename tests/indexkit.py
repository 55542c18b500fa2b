"""SqliteStore checks shared by the robustness tests: a content snapshot, the consistency invariants, a tiny encoder."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from modelkit import synthetic_model

from audiofind.model.config import TINY
from audiofind.model.encoder import Encoder, from_model
from audiofind.store.sqlite.store import SqliteStore


def tiny_encoder() -> Encoder:
    """The TINY recipe model's audio tower on the CPU."""
    return from_model(synthetic_model(TINY, ("audio",)), TINY, torch.device("cpu"), "tiny", "a" * 64)


@dataclass
class CountingEncoder(Encoder):
    """An encoder that counts model calls and can fail on cue: `fail_at` raises that exception at that call."""

    calls: int = 0
    fail_at: int | None = None
    failure: BaseException = field(default_factory=KeyboardInterrupt)

    def embed_audio(self, clips):  # type: ignore[no-untyped-def,override]
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.failure
        return super().embed_audio(clips)


def counting(enc: Encoder, fail_at: int | None = None, failure: BaseException | None = None) -> CountingEncoder:
    """Wrap enc's audio tower in a CountingEncoder."""
    return CountingEncoder(enc.name, enc.sha256, enc.config, enc.device, _audio=enc.audio, fail_at=fail_at,
                           failure=failure or KeyboardInterrupt())  # fmt: skip


def snapshot(db: Path) -> dict:
    """Everything the index holds that a run decides, by content (row ids and times left out), bit for bit."""
    with SqliteStore.open(db) as index:
        q = lambda sql: sorted(index.conn.execute(sql).fetchall())
        vectors = {}
        for (h,) in q("SELECT hash FROM audio"):
            bounds, v = index.segment_vectors(h)
            vectors[h] = (tuple(bounds), v.tobytes())
        return {
            "files": q("SELECT path, root, size, mtime_ns, hash, status, error, tags FROM files"),
            "audio": q("SELECT hash, duration, sample_rate, channels FROM audio"),
            "segments": q('SELECT hash, start, "end", code FROM segments'),
            "vectors": vectors,
            "partial": q("SELECT hash, path FROM partial"),
            "fingerprints": q("SELECT hash, print FROM fingerprints"),
            "roots": q("SELECT path FROM roots"),
            # segments_version counts commits, which an interrupted run and its resume split differently.
            "meta": q("SELECT key, value FROM meta WHERE key != 'segments_version'"),
        }


def check_consistent(db: Path) -> None:
    """integrity_check ok; every ok file has its audio, segments and vectors; no orphan audio, segment or vector."""
    with SqliteStore.open(db) as index:
        one = lambda sql: index.conn.execute(sql).fetchall()
        assert one("PRAGMA integrity_check") == [("ok",)]
        assert not one("SELECT path FROM files WHERE status = 'ok' AND hash NOT IN (SELECT hash FROM audio)")
        assert not one("SELECT hash FROM partial WHERE hash IN (SELECT hash FROM files)"), "a finished file is partial"
        # Every audio row is someone's: a file's, or an unfinished content's (resumed or dropped by the next run).
        assert not one("SELECT hash FROM audio WHERE hash NOT IN (SELECT hash FROM files WHERE hash IS NOT NULL) "
                       "AND hash NOT IN (SELECT hash FROM partial)")  # fmt: skip
        assert not one("SELECT id FROM segments WHERE hash NOT IN (SELECT hash FROM audio)")
        segment_ids = {i for (i,) in one("SELECT id FROM segments")}
        vector_ids = {i for (i,) in one("SELECT rowid FROM vectors")} if index.model() else set()
        assert segment_ids == vector_ids, "segments without vectors or vectors without segments"
        for (h,) in one("SELECT hash FROM audio WHERE hash NOT IN (SELECT hash FROM partial)"):
            bounds, v = index.segment_vectors(h)
            assert len(bounds) >= 1 and len(v) == len(bounds) and np.all(np.isfinite(v)), h
            assert bounds[0][0] == 0.0, f"{h} is missing its first segments"
