"""The indexer at library level: the batched, multi-threaded path a GPU takes must give the CPU path's index."""

import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import audiogen
import numpy as np
import pytest
import torch
from modelkit import count_forwards, synthetic_model

from audiofind.audio import decode
from audiofind.library import decoding, pipeline
from audiofind.library.sync import Event, prepare, sync, walk
from audiofind.model.config import TINY
from audiofind.model.encoder import Encoder, from_model
from audiofind.model.inference import prepare_for_inference
from audiofind.store.sqlite.store import SqliteStore


@dataclass
class BatchingEncoder(Encoder):
    """The tiny model, asking for batches of 4 windows the way a CUDA encoder does; records each batch's size."""

    sizes: list[int] = field(default_factory=list)

    @property
    def audio_batch(self) -> int:
        return 4

    def embed_audio(self, clips):  # type: ignore[no-untyped-def,override]
        self.sizes.append(len(clips))
        return super().embed_audio(clips)


def library(root: Path) -> list[Path]:
    files = []
    for i in range(7):
        seconds = [0.5, 3.0, 12.0, 1.0, 17.0, 2.0, 0.7][i]
        path = root / f"d{i % 2}" / f"{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        files.append(audiogen.write_int16_wav(path, (audiogen.noise(seconds, seed=i) * 12000).astype(np.int16)))
    bad = root / "d0" / "bad.flac"
    src = audiogen.write_audio(root.parent / "src.flac", audiogen.sine(440, 4.0))
    audiogen.write_truncated(bad, src)
    return files


def snapshot(db: Path) -> dict[str, tuple]:
    with SqliteStore.open(db) as index:
        out = {}
        for row in index.files_under([db.parent]):
            if row.status == "ok":
                bounds, vectors = index.segment_vectors(row.hash)
                out[row.path] = (row.hash, tuple(bounds), vectors.tobytes())
            else:
                out[row.path] = (row.status, row.error)
        return out


def test_batched_parallel_decoding_gives_the_same_index(tmp_path: Path) -> None:
    files = library(tmp_path / "lib")
    model = synthetic_model(TINY, ("audio",))
    plain = from_model(model, TINY, torch.device("cpu"), "tiny", "a" * 64)
    batching = BatchingEncoder("tiny", "a" * 64, TINY, torch.device("cpu"), _audio=model)
    results, events = [], []
    for n, (enc, decoders) in enumerate([(plain, 1), (batching, 3)]):
        db = tmp_path / "lib" / f"index{n}.db"
        with SqliteStore.open(db) as index:
            prepare(index, enc)
            seen: list[Event] = []
            report = sync(index, enc, [tmp_path / "lib"], decoders=decoders, on_event=seen.append)
        assert (report.embedded, report.failed) == (len(files), 1)
        results.append(snapshot(db))
        events.append(sorted((e.event, e.path) for e in seen))
    assert results[0] == results[1]  # bitwise-equal vectors, same segments, same failure
    assert events[0] == events[1]
    # 10 windows from 7 files: a gathering holds 16, so all of them wait for the model together.
    assert batching.sizes == [10]


def test_walk_follows_symlinks_without_loops_and_skips_hidden(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    (root / "a").mkdir(parents=True)
    audiogen.write_int16_wav(root / "a" / "x.wav", np.zeros((1, 100), np.int16))
    audiogen.write_int16_wav(root / "a" / ".hidden.wav", np.zeros((1, 100), np.int16))
    (root / "a" / "loop").symlink_to(root)  # a cycle back to the top
    outside = tmp_path / "outside"
    outside.mkdir()
    audiogen.write_int16_wav(outside / "y.wav", np.zeros((1, 100), np.int16))
    (root / "linked").symlink_to(outside)
    found = sorted(str(p.relative_to(root)) for _, p, _ in walk([root]))
    assert found == ["a/x.wav", "linked/y.wav"]


def test_files_behind_symlinks_stay_unchanged_on_the_next_run(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    audiogen.write_int16_wav(outside / "y.wav", (audiogen.noise(0.5) * 9000).astype(np.int16))
    root = tmp_path / "lib"
    root.mkdir()
    (root / "linked").symlink_to(outside)
    enc = from_model(synthetic_model(TINY, ("audio",)), TINY, torch.device("cpu"), "tiny", "a" * 64)
    with SqliteStore.open(tmp_path / "index.db") as index:
        prepare(index, enc)
        assert sync(index, enc, [root]).embedded == 1
        assert [r.path for r in index.files_under([root])] == [str(root / "linked" / "y.wav")]
        again = sync(index, enc, [root])
        assert (again.skipped, again.embedded, again.removed, again.reused) == (1, 0, 0, 0)


def test_gpu_batching_through_the_indexer_wastes_nothing(tmp_path: Path) -> None:
    """64 clips of distinct lengths and 3 long recordings, gathered across files as a GPU's batches of 8 are."""
    root = tmp_path / "lib"
    (root / "clips").mkdir(parents=True)
    for i in range(64):
        samples = audiogen.noise((44100 + 4999 * i) / audiogen.SAMPLE_RATE, seed=i) * 12000
        audiogen.write_int16_wav(root / "clips" / f"{i:02d}.wav", samples.astype(np.int16))
    (root / "long").mkdir()
    for seconds, seed in ((23.0, 1), (31.7, 2), (47.2, 3)):  # 4, 6 and 9 windows of 10 s
        audiogen.write_audio(root / "long" / f"{seed}.flac", audiogen.noise(seconds, seed=seed, amp=0.3))
    model = prepare_for_inference(synthetic_model(TINY, ("audio",)))
    snapshots = []
    for n, batch_size in enumerate((8, 1)):
        encoder = from_model(model, TINY, torch.device("cpu"), "tiny", "a" * 64, batch_size=batch_size)
        calls = count_forwards(model)
        with SqliteStore.open(tmp_path / f"i{n}.db") as index:
            prepare(index, encoder)
            assert sync(index, encoder, [root], decoders=3).embedded == 67
        snapshots.append(snapshot(tmp_path / f"i{n}.db"))
        if batch_size == 8:
            windows = sorted(rows for rows, samples in calls if samples == decode.N_WINDOW)
            assert windows == [3, 8, 8]  # ceil(19 / 8) forwards for the 19 windows of equal length, none padded
            assert sorted(rows for rows, samples in calls if samples != decode.N_WINDOW) == [1] * 64  # one per clip
    assert snapshots[0] == snapshots[1]  # bitwise: an embedding never depends on what else was waiting


def test_a_long_recording_through_the_batched_path_keeps_memory_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three hours of 10 s windows (stand-ins, not decoded audio) through a batching encoder: the windows alive at
    once stay within the decode queue and one gathering, whatever the length."""
    (tmp_path / "lib").mkdir()
    path = audiogen.write_audio(tmp_path / "lib" / "night.flac", audiogen.noise(1.0))
    hours, live, most = 3.0, [0], [0]

    def gone() -> None:
        live[0] -= 1

    def windows(_path, window, hop, rate=decode.SAMPLE_RATE):  # type: ignore[no-untyped-def]
        for k in range(math.floor((hours * 3600 - window) / hop) + 1):
            samples = np.full(decode.N_WINDOW, k % 7 + 1, np.float32)
            weakref.finalize(samples, gone)
            live[0] += 1
            most[0] = max(most[0], live[0])
            yield decode.Window(k * hop, k * hop + window, samples)

    monkeypatch.setattr(decode, "probe", lambda _p: decode.AudioInfo(hours * 3600, 44100, 1, "flac"))
    monkeypatch.setattr(decode, "iter_windows", windows)

    @dataclass
    class Stub(Encoder):
        forwards: list[int] = field(default_factory=list)

        def embed_audio(self, clips):  # type: ignore[no-untyped-def,override]
            self.forwards.append(len(clips))
            return np.stack([np.full(self.dim, c[0], np.float32) for c in clips])

    encoder = Stub("stub", "b" * 64, TINY, torch.device("cpu"), batch_size=8)
    with SqliteStore.open(tmp_path / "i.db") as index:
        prepare(index, encoder)
        assert sync(index, encoder, [tmp_path / "lib"]).embedded == 1
        assert len(index.segment_vectors(index.files_under([path.parent])[0].hash)[0]) == 2159
    gathering = 8 * pipeline.GATHER_BATCHES
    assert sum(encoder.forwards) == 2159 and max(encoder.forwards) == gathering  # the batched path, gathered
    assert most[0] <= max(decoding.QUEUE_WINDOWS, gathering) + gathering + 2, most[0]


def test_a_lone_window_waits_behind_clips_for_more_of_its_length(tmp_path: Path) -> None:
    """The order three decoders can deliver: one 10 s window, then clips of 31 other lengths fill the gathering."""
    model = synthetic_model(TINY, ("audio",))
    encoder = from_model(model, TINY, torch.device("cpu"), "tiny", "a" * 64, batch_size=8)
    with SqliteStore.open(tmp_path / "i.db") as index:
        prepare(index, encoder)
        embedder = pipeline.Pipeline(index, encoder, lambda *_: None)
        window = (None, [None], np.zeros(decode.N_WINDOW, np.float32))
        clips = [(None, [None], np.zeros(5000 + i, np.float32)) for i in range(31)]
        embedder.batch = [window, *clips]
        run = embedder._ready()
    assert all(item is not window for item in run) and embedder.batch[0] is window  # it waits; clips run
    assert len(embedder.batch) <= embedder.gather // 2 and len(run) + len(embedder.batch) == 32
