"""Nothing lost, nothing stuck: bad files fail alone, missing drives are not deletions, long files resume."""

import os
import shutil
import threading
from pathlib import Path

import audiogen
import numpy as np
import pytest
import torch
from indexkit import check_consistent, counting, snapshot, tiny_encoder

from audiofind.audio import decode
from audiofind.library import pipeline
from audiofind.library import walk as scan
from audiofind.library.sync import Event, Report, binding, prepare, sync
from audiofind.store.sqlite.store import SqliteStore


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def noise_wav(path: Path, seconds: float, seed: int, sr: int = 44100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return audiogen.write_int16_wav(path, (audiogen.noise(seconds, sr=sr, seed=seed) * 9000).astype(np.int16), sr)


def indexed(db: Path, root: Path, enc=None, **kwargs) -> tuple[Report, list[Event]]:  # type: ignore[no-untyped-def]
    enc = enc or tiny_encoder()
    events: list[Event] = []
    with SqliteStore.open(db) as index:
        prepare(index, enc)
        return sync(index, enc, [root], on_event=events.append, **kwargs), events


def adds_up(r: Report) -> bool:
    return r.seen == r.embedded + r.reused + r.moved + r.skipped + r.failed + r.changing


@pytest.mark.parametrize("decoders", [1, 4])
def test_bad_files_fail_alone_with_a_reason_and_counts_add_up(tmp_path: Path, decoders: int, monkeypatch) -> None:
    root = tmp_path / "lib"
    good = [noise_wav(root / f"good{i}.wav", 0.5 + i / 3, seed=i) for i in range(5)]
    nan = audiogen.noise(1.0, seed=9).astype(np.float32)[0] * 0.5
    nan[1000] = np.nan
    audiogen.write_float_wav(root / "nan.wav", nan)
    inf = audiogen.noise(1.0, seed=8).astype(np.float32)[0] * 0.5
    inf[5] = np.inf
    audiogen.write_float_wav(root / "inf.wav", inf)
    noise_wav(root / "raises.wav", 1.0, seed=7)
    real = decode.iter_windows

    def iter_windows(path: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if path.name == "raises.wav":
            raise RuntimeError("injected decoder fault")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decode, "iter_windows", iter_windows)
    report, events = indexed(tmp_path / "i.db", root, decoders=decoders)
    failed = {Path(e.path).name: e.reason for e in events if e.event == "failed"}
    assert set(failed) == {"nan.wav", "inf.wav", "raises.wav"}
    assert "NaN or infinite samples" in failed["nan.wav"] and "NaN or infinite samples" in failed["inf.wav"]
    assert failed["raises.wav"] == "RuntimeError: injected decoder fault"
    assert (report.embedded, report.failed, report.seen) == (5, 3, 8) and adds_up(report)
    again, _ = indexed(tmp_path / "i.db", root, decoders=decoders)  # recorded: not retried, nothing crashes
    assert (again.skipped, again.failed, again.embedded) == (8, 0, 0)
    with SqliteStore.open(tmp_path / "i.db") as index:
        for path in good:  # every good file finds itself first
            row = index.get_file(path)
            _, vectors = index.segment_vectors(row.hash)
            assert index.search(vectors, k=1)[0].path == str(path)
    check_consistent(tmp_path / "i.db")


def test_a_model_failure_or_non_finite_embedding_fails_only_its_file(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    for i in range(4):
        noise_wav(root / f"f{i}.wav", 0.5 + i * 0.25, seed=i)
    enc = counting(tiny_encoder())
    real = enc.embed_audio
    bad_length = round(1.0 * 44100)  # f2.wav's length

    def embed_audio(clips):  # type: ignore[no-untyped-def]
        if any(len(c) == bad_length for c in clips):
            raise RuntimeError("injected model fault")
        out = real(clips)
        out[[len(c) == round(1.25 * 44100) for c in clips]] = np.nan  # f3.wav: a NaN embedding
        return out

    enc.embed_audio = embed_audio  # type: ignore[method-assign]
    report, events = indexed(tmp_path / "i.db", root, enc)
    failed = {Path(e.path).name: e.reason for e in events if e.event == "failed"}
    assert failed == {
        "f2.wav": "RuntimeError: injected model fault",
        "f3.wav": "the model gave a non-finite or zero embedding",
    }
    assert report.embedded == 2 and adds_up(report)
    check_consistent(tmp_path / "i.db")


def _library(root: Path, n: int) -> list[Path]:
    return [noise_wav(root / f"s{i:02d}.wav", 0.2, seed=i) for i in range(n)]


@pytest.mark.parametrize("how", ["missing", "empty", "unreadable"])
def test_an_unavailable_root_keeps_its_files(tmp_path: Path, how: str, monkeypatch) -> None:
    root, other = tmp_path / "sfx", tmp_path / "other"
    _library(root, 6)
    _library(other, 2)
    db = tmp_path / "i.db"
    enc = tiny_encoder()
    with SqliteStore.open(db) as index:
        prepare(index, enc)
        sync(index, enc, [root, other])
    before = snapshot(db)
    if how == "missing":
        shutil.rmtree(root)
    elif how == "empty":  # a mount point with nothing mounted on it
        shutil.rmtree(root)
        root.mkdir()
    else:  # root can read every folder, so unreadability is injected where the walker asks
        monkeypatch.setattr(scan, "readable", lambda p: Path(p) != root)
        import audiofind.library.sync as indexer

        monkeypatch.setattr(indexer, "readable", lambda p: Path(p) != root)
    events: list[Event] = []
    with SqliteStore.open(db) as index:
        report = sync(index, enc, [root, other], on_event=events.append)
    assert report.unavailable == [str(root)] and report.kept == 6 and report.removed == 0
    [event] = [e for e in events if e.event == "unavailable"]
    assert event.reason.startswith(f"root {root} is not available") and event.reason.endswith("6 files kept")
    assert snapshot(db)["files"] == before["files"]
    with SqliteStore.open(db) as index:  # --prune means it: the files go
        assert sync(index, enc, [root, other], prune=True).removed == 6


def test_a_root_losing_most_of_its_files_keeps_them_until_prune(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    files = _library(root, 40)
    db = tmp_path / "i.db"
    indexed(db, root)
    for path in files[:5]:  # 12 %: an ordinary deletion
        path.unlink()
    assert indexed(db, root)[0].removed == 5
    for path in files[5:26]:  # 21 of the 35 left (60 %): looks like a half-mounted share
        path.unlink()
    report, events = indexed(db, root)
    assert (report.removed, report.kept) == (0, 21)
    [kept] = [e for e in events if e.event == "kept"]
    assert "21 of the 35 indexed files" in kept.reason and "--prune" in kept.reason
    with SqliteStore.open(db) as index:
        assert len(index.files_under([root])) == 35
    assert indexed(db, root, prune=True)[0].removed == 21


def test_a_long_recording_resumes_inside_the_file(tmp_path: Path) -> None:
    """A 30-minute recording stopped two thirds through: the next run embeds only the windows left."""
    root = tmp_path / "lib"
    noise_wav(root / "short.wav", 0.5, seed=1)
    long = root / "long.wav"
    sr = 8000  # small on disk; decoded to 44.1 kHz like any file
    with open(long, "wb") as f:  # written in pieces: 30 minutes never sit in memory at once
        import wave

        with wave.open(f, "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr)
            for minute in range(30):
                w.writeframes((audiogen.noise(60.0, sr=sr, seed=100 + minute)[0] * 9000).astype("<i2").tobytes())
    windows = len(decode.window_bounds(30 * 60 * 44100))
    enc = counting(tiny_encoder(), fail_at=1 + 2 * windows // 3)  # the short file's window, then 2/3 of the long
    db = tmp_path / "i.db"
    with pytest.raises(KeyboardInterrupt):
        indexed(db, root, enc)
    check_consistent(db)
    with SqliteStore.open(db) as index:
        assert index.get_file(root / "short.wav") is not None, "the short file waited behind the long one"
        assert index.get_file(long) is None  # hidden from search until complete
        done = index.conn.execute("SELECT count(*) FROM segments WHERE hash IN (SELECT hash FROM partial)").fetchone()[
            0
        ]
    chunk = pipeline.CHUNK_SECONDS / decode.HOP_SECONDS
    assert 2 * windows // 3 - chunk <= done < 2 * windows // 3
    resumed = counting(tiny_encoder())
    report, _ = indexed(db, root, resumed)
    assert report.embedded == 1 and resumed.calls == windows - done
    ref = tmp_path / "ref.db"
    indexed(ref, root)
    assert snapshot(db)["vectors"] == snapshot(ref)["vectors"] and snapshot(db)["audio"] == snapshot(ref)["audio"]
    check_consistent(db)


def test_a_file_that_changes_while_read_is_waited_for_not_failed(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "lib"
    noise_wav(root / "a.wav", 0.5, seed=1)
    growing = noise_wav(root / "rec.wav", 1.0, seed=2)
    real = pipeline.signature
    monkeypatch.setattr(pipeline, "signature", lambda p: (0, 0) if Path(p) == growing else real(p))
    report, events = indexed(tmp_path / "i.db", root)
    assert (report.embedded, report.changing, report.failed) == (1, 1, 0) and adds_up(report)
    assert [e.event for e in events if e.path == str(growing)] == ["changing"]
    monkeypatch.setattr(pipeline, "signature", real)
    assert indexed(tmp_path / "i.db", root)[0].embedded == 1  # settled: indexed now


def test_stop_while_hashing_returns_promptly(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    _library(root, 3)
    stop = threading.Event()
    stop.set()
    report, _ = indexed(tmp_path / "i.db", root, stop=stop)
    assert report.stopped and report.embedded == 0


def test_same_run_copies_are_embedded_once(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    first = noise_wav(root / "a.wav", 0.7, seed=3)
    shutil.copy(first, root / "b.wav")
    enc = counting(tiny_encoder())
    report, _ = indexed(tmp_path / "i.db", root, enc)
    assert (report.embedded, report.reused, enc.calls) == (1, 1, 1)


def test_window_hop_come_from_the_index(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    noise_wav(root / "a.wav", 3.0, seed=3)
    enc = tiny_encoder()
    with SqliteStore.open(tmp_path / "i.db") as index:
        index.bind_model(binding(enc, window=1.0, hop=0.5))
        assert sync(index, enc, [root]).segments == 5
    assert os.path.exists(tmp_path / "i.db")
