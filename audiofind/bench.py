"""Speed measurements for `audiofind bench speed`: warm up, synchronise, time, report.

Every function returns plain numbers (seconds, items per second, bytes); the CLI formats them.
"""

import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from audiofind import decode
from audiofind.encoder import Encoder, from_model, load_encoder
from audiofind.model import AudioCLIPConfig
from audiofind.model.load import build

SAMPLE_CAPTIONS = [
    "rain falls steadily on a tin roof while thunder rumbles in the distance",
    "a door creaks open slowly",
    "birds chirp in a forest at dawn",
    "a car drives past on a wet road",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeat: int = 3, warmup: int = 1) -> float:
    """Median wall seconds of fn() after warm-up, with the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory(device: torch.device) -> int:
    """Peak resident memory of this process in bytes (and of the GPU allocator on CUDA)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def synthetic_encoder(device: str = "auto") -> Encoder:
    """Full-size model with random weights: the same speed as the real one, no download needed."""
    from audiofind.device import resolve_device

    dev = resolve_device(device)
    cfg = AudioCLIPConfig()
    model = build(cfg).to(dev).eval()
    model.audio.to(memory_format=torch.channels_last)
    return from_model(model, cfg, dev, "synthetic", "0" * 64)


def bench_encoder(weights: str | None, device: str, synthetic: bool = False) -> Encoder:
    """Both towers of the named model, or of a random full-size one with --synthetic (same speed, no download)."""
    return synthetic_encoder(device) if synthetic else load_encoder(weights, device, ["audio", "text"])


def model_speed(weights: str | None, device: str, synthetic: bool = False) -> dict[str, float]:
    """Weights load time, audio encode time (5 s, 20 s clips), text encode time (1 and 64 captions), peak memory."""
    start = time.perf_counter()
    enc = bench_encoder(weights, device, synthetic)
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    clip = lambda s: (rng.standard_normal(int(s * decode.SAMPLE_RATE)) * 3000).astype(np.float32)  # noqa: E731
    c5, c20 = clip(5), clip(20)
    captions64 = (SAMPLE_CAPTIONS * 16)[:64]
    out = {
        "load_s": load_s,
        "audio_5s_s": timed(lambda: enc.embed_audio([c5]), enc.device),
        "audio_20s_s": timed(lambda: enc.embed_audio([c20]), enc.device),
        "text_1_s": timed(lambda: enc.embed_text(SAMPLE_CAPTIONS[:1]), enc.device, repeat=10),
        "text_64_s": timed(lambda: enc.embed_text(captions64), enc.device, repeat=2),
        "peak_memory_bytes": float(peak_memory(enc.device)),
    }
    out["audio_realtime_x"] = 20.0 / out["audio_20s_s"]
    return out


def decode_speed(files: list[Path]) -> float:
    """Decode-only throughput in audio seconds per wall second (windows cut as the indexer cuts them)."""
    start, audio = time.perf_counter(), 0.0
    for f in files:
        end = 0.0
        for w in decode.iter_windows(f):
            end = w.end
        audio += end
    return audio / (time.perf_counter() - start)


def make_library(folder: Path, n_files: int, seconds: float) -> list[Path]:
    """A folder of generated FLAC files (tones and noise), for the indexing benchmarks."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n_files):
        n = int(seconds * decode.SAMPLE_RATE)
        t = np.arange(n) / decode.SAMPLE_RATE
        x = 0.3 * np.sin(2 * np.pi * (110 + 37 * i) * t) + 0.05 * rng.standard_normal(n)
        path = folder / f"clip_{i:05d}.flac"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("flac", rate=decode.SAMPLE_RATE, layout="mono")
            frame = av.AudioFrame.from_ndarray((x * 32767).astype(np.int16)[None], format="s16", layout="mono")
            frame.rate = decode.SAMPLE_RATE
            for packet in stream.encode(frame):
                out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        files.append(path)
    return files


def scratch_dir() -> tempfile.TemporaryDirectory:
    """A temporary folder for generated libraries and indexes, removed afterwards."""
    return tempfile.TemporaryDirectory(prefix="audiofind-bench-", dir=os.environ.get("TMPDIR"))


def indexing_speed(encoder: Encoder, n_files: int = 6, seconds: float = 20.0) -> dict[str, float]:
    """Decode-only, model-only and end-to-end indexing throughput, in audio seconds per wall second."""
    from audiofind.indexer import prepare, sync
    from audiofind.store import Index

    with scratch_dir() as tmp:
        files = make_library(Path(tmp) / "library", n_files, seconds)
        decode_rate = decode_speed(files)
        windows = [w.samples for w in decode.iter_windows(files[0])]
        encoder.embed_audio(windows[:1])  # warm-up
        model_s = timed(lambda: encoder.embed_audio(windows), encoder.device, repeat=1, warmup=0)
        with Index.open(Path(tmp) / "index.db") as index:
            prepare(index, encoder)
            report = sync(index, encoder, [Path(tmp) / "library"])
    return {
        "decode_x": decode_rate,
        "model_x": seconds / model_s,
        "end_to_end_x": report.audio_seconds / report.seconds,
    }


def reindex_speed(n_files: int = 10_000, dim: int = 1024) -> float:
    """Seconds to re-index an unchanged library of n_files (the model is never loaded: nothing changed)."""
    import wave

    from audiofind.indexer import file_hash, prepare, sync
    from audiofind.store import AudioRow, FileRow, Index

    enc = synthetic_identity(dim)
    rng = np.random.default_rng(0)
    with scratch_dir() as tmp:
        lib = Path(tmp) / "library"
        for i in range(n_files):
            folder = lib / f"{i // 500:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            with wave.open(str(folder / f"{i:05d}.wav"), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(decode.SAMPLE_RATE)
                w.writeframes(np.int16(i % 30000).tobytes() * 64)
        with Index.open(Path(tmp) / "index.db") as index:
            prepare(index, enc)
            with index.transaction():
                for path in sorted(lib.rglob("*.wav")):
                    st = path.stat()
                    h = file_hash(path)
                    row = FileRow(str(path), str(lib), st.st_size, st.st_mtime_ns, h, "ok", None, {})
                    index.add_file(row, AudioRow(h, 64 / decode.SAMPLE_RATE, decode.SAMPLE_RATE, 1), [(0.0, 0.001)], rng.standard_normal((1, dim)))
            start = time.perf_counter()
            report = sync(index, enc, [lib])
            elapsed = time.perf_counter() - start
    if report.skipped != n_files or report.embedded:  # the measurement means nothing if the run did work
        raise RuntimeError(f"re-index of an unchanged library did work: {report}")
    return elapsed


def synthetic_identity(dim: int = 1024) -> Encoder:
    """An encoder that is never asked to embed: identity only (for benchmarks of work that needs no model)."""
    cfg = AudioCLIPConfig()
    return Encoder("synthetic", "0" * 64, AudioCLIPConfig(cfg.audio, cfg.text, dim), torch.device("cpu"))


def query_speed(encoder: Encoder, sizes: tuple[int, ...] = (10_000, 100_000), per_file: int = 10) -> dict[str, float]:
    """Warm query latency (text encode + vector search + grouping), in seconds, at each index size in segments."""
    from audiofind import vectors
    from audiofind.indexer import prepare
    from audiofind.store import AudioRow, FileRow, Index

    out: dict[str, float] = {}
    for size in sizes:
        data = vectors.synthetic(size, encoder.dim, queries=1)
        with scratch_dir() as tmp, Index.open(Path(tmp) / "index.db") as index:
            prepare(index, encoder)
            with index.transaction():
                for f in range(size // per_file):
                    h = f"{f:064x}"
                    seg = [(5.0 * j, 5.0 * j + 10.0) for j in range(per_file)]
                    row = FileRow(f"/bench/{f:06d}.wav", "/bench", 1, 1, h, "ok", None, {})
                    index.add_file(row, AudioRow(h, 5.0 * per_file + 5, decode.SAMPLE_RATE, 1), seg, data.vectors[f * per_file : (f + 1) * per_file])
            queries = iter(SAMPLE_CAPTIONS * 10)
            run = lambda: index.search(encoder.embed_text([next(queries)]), 20)  # noqa: E731
            out[f"query_{size // 1000}k_s"] = timed(run, encoder.device, repeat=7, warmup=2)
    return out


def training_speed(device: str = "auto", batch: int = 6, crop_seconds: float = 20.0, steps: int = 3) -> dict[str, float]:
    """Fine-tuning throughput at full size (clips per second) and peak memory."""
    from audiofind import train

    result = train.train_throughput(AudioCLIPConfig(), device, batch=batch, crop_seconds=crop_seconds, steps=steps)
    return {"train_clips_per_s": float(result["clips_per_s"]), "train_peak_memory_bytes": float(result["peak_memory_mb"]) * 2**20}


@dataclass(frozen=True)
class SearchBench:
    """Quality and speed of search on a synthetic index."""

    segments: int
    dim: int
    queries: int
    recall_at_10: float  # of files, quantised search against exact
    build_s: float
    quantised_ms: float | None  # median warm query: vector search and grouping
    exact_ms: float | None  # median query scoring every segment


def bench_search(
    path: Path,
    segments: int = 100_000,
    dim: int = 1024,
    queries: int = 50,
    seed: int = 0,
    timing: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> SearchBench:
    """Fill a new index at path with AudioCLIP-like synthetic vectors; measure recall@10 and warm query times."""
    from audiofind import vectors as vec
    from audiofind.errors import UsageError
    from audiofind.store import AudioRow, FileRow, Index, ModelBinding

    if Path(path).exists():
        raise UsageError(f"{path} already exists; the search benchmark builds a new index and overwrites none.")
    data = vec.synthetic(segments, dim, queries, seed)
    starts = np.flatnonzero(np.diff(data.file_of, prepend=-1))  # first segment of each file
    ends = np.append(starts[1:], segments)
    t0 = time.perf_counter()
    with Index.open(path) as index:
        index.bind_model(ModelBinding("synthetic", "0" * 64, dim, 2.0, 1.0))
        for batch in range(0, len(starts), 500):
            with index.transaction():
                for f in range(batch, min(batch + 500, len(starts))):
                    n, h = int(ends[f] - starts[f]), f"{f:064x}"
                    row = FileRow(f"{path}.files/{f}.wav", f"{path}.files", 0, 0, h)
                    spans = [(float(j), j + 2.0) for j in range(n)]
                    index.add_file(row, AudioRow(h, n + 1.0, 44100, 1), spans, data.vectors[starts[f] : ends[f]])
            if progress:
                progress(int(ends[min(batch + 500, len(starts)) - 1]), segments)
        build_s = time.perf_counter() - t0
        truth = [vec.top_files(data.vectors, data.file_of, q) for q in data.queries]
        found = [[int(Path(h.path).stem) for h in index.search(q, 10, exact=False)] for q in data.queries]
        quantised_ms = exact_ms = None
        if timing:  # the recall pass above loaded the codes and warmed the page cache
            quantised_ms = _median_ms(lambda q: index.search(q, 10), data.queries)
            exact_ms = _median_ms(lambda q: index.search(q, 10, exact=True), data.queries[:3])
    return SearchBench(segments, dim, queries, vec.recall(found, truth), build_s, quantised_ms, exact_ms)


def _median_ms(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> float:
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))
