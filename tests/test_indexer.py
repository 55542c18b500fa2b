"""The indexer at library level: the batched, multi-threaded path a GPU takes must give the CPU path's index."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import audiogen
from audiofind.encoder import Encoder, from_model
from audiofind.indexer import Event, prepare, sync, walk
from audiofind.model import TINY
from audiofind.store import Index
from modelkit import synthetic_model


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
    with Index.open(db) as index:
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
        with Index.open(db) as index:
            prepare(index, enc)
            seen: list[Event] = []
            report = sync(index, enc, [tmp_path / "lib"], decoders=decoders, on_event=seen.append)
        assert (report.embedded, report.failed) == (len(files), 1)
        results.append(snapshot(db))
        events.append(sorted((e.event, e.path) for e in seen))
    assert results[0] == results[1]  # bitwise-equal vectors, same segments, same failure
    assert events[0] == events[1]
    # 10 windows from 7 files: full batches of 4 mix windows of several files; only the last is partial.
    assert batching.sizes[:2] == [4, 4] and sum(batching.sizes) == 10


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
    with Index.open(tmp_path / "index.db") as index:
        prepare(index, enc)
        assert sync(index, enc, [root]).embedded == 1
        assert [r.path for r in index.files_under([root])] == [str(root / "linked" / "y.wav")]
        again = sync(index, enc, [root])
        assert (again.skipped, again.embedded, again.removed, again.reused) == (1, 0, 0, 0)
