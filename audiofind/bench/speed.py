"""Speed measurements for `audiofind bench speed`: warm up, synchronise, time, report.

Functions return plain numbers (seconds, audio seconds per wall second, bytes), or Figures that carry them with
their unit, the reference's figure and the target; the CLI formats them. Where ours is compared with the reference
AudioCLIP, both run interleaved in one process on the same weights and input, and each keeps its fastest run: on a
machine shared with other work only a ratio measured that way means anything.
"""

import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from audiofind.audio import decode
from audiofind.bench.reference import ReferenceAudio, reference_audio, reference_encode_text
from audiofind.bench.targets import Figure
from audiofind.device import describe_cpu, resolve_device
from audiofind.errors import UsageError
from audiofind.model import weights
from audiofind.model.clap.encoder import ClapEncoder
from audiofind.model.config import AudioCLIPConfig
from audiofind.model.encoder import Encoder, default_batch_sizes, from_model, load_encoder
from audiofind.model.load import build, from_state_dict
from audiofind.model.text import TextEncoder
from audiofind.model.tokenizer import tokenize

SAMPLE_CAPTIONS = [
    "rain falls steadily on a tin roof while thunder rumbles in the distance",
    "a door creaks open slowly",
    "birds chirp in a forest at dawn",
    "a car drives past on a wet road",
]


FULL_SIZE = AudioCLIPConfig()  # the published model's sizes
Loaded = Encoder | ClapEncoder  # what load_encoder gives: either family's encoder (dataclasses both)


def machine(device: torch.device) -> dict:
    """What the figures were measured on: the CPU's model and vector extensions, threads, torch, the GPU if used."""
    cpu, extensions = describe_cpu()
    out = {
        "cpu": cpu,
        "extensions": extensions,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def side_by_side(fns: dict[str, Callable[[], object]], device: torch.device, repeat: int = 5) -> dict[str, float]:
    """Fastest wall seconds of each fn over `repeat` interleaved rounds, after one warm-up round."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def timed(fn: Callable[[], object], device: torch.device, repeat: int = 3) -> float:
    """Fastest wall seconds of fn() after a warm-up call, the device synchronised around each call."""
    return side_by_side({"fn": fn}, device, repeat)["fn"]


def peak_memory(device: torch.device) -> int:
    """Peak resident memory of this process in bytes (and of the GPU allocator on CUDA)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def _encoder_from_state(
    state: dict[str, torch.Tensor], cfg: AudioCLIPConfig, dev: torch.device, precision: str
) -> Encoder:
    model = from_state_dict(state, cfg).to(dev)
    audio_batch, text_batch = default_batch_sizes(dev)
    return from_model(
        model,
        cfg,
        dev,
        "synthetic",
        "0" * 64,
        prepare=True,
        precision=precision,
        batch_size=audio_batch,
        text_batch_size=text_batch,
    )


def bench_encoder(weights_name: str | None, device: str, synthetic: bool = False, precision: str = "fp32") -> Loaded:
    """Both towers of the named model, ready for inference, or with synthetic=True of a random full-size one (the
    same speed, no download)."""
    if not synthetic:
        return load_encoder(weights_name, device, ["audio", "text"], precision=precision)
    cfg = AudioCLIPConfig()
    return _encoder_from_state(build(cfg).state_dict(), cfg, resolve_device(device), precision)


def _twins(
    weights_name: str | None, device: str, synthetic: bool, precision: str, cfg: AudioCLIPConfig
) -> tuple[Encoder, ReferenceAudio, TextEncoder, float | None]:
    """Our encoder, the reference's audio and text towers on the same weights, our load time (real weights only)."""
    dev = resolve_device(device)
    if synthetic:
        state = build(cfg).state_dict()
        enc, load_s = _encoder_from_state(state, cfg, dev, precision), None
        ref_state = {k: v.clone() for k, v in state.items()}  # nothing shared with ours
    else:
        start = time.perf_counter()
        loaded = load_encoder(weights_name, device, ["audio", "text"], precision=precision)
        load_s = time.perf_counter() - start
        if not isinstance(loaded, Encoder):
            raise UsageError(f"The model part of bench speed times AudioCLIP beside its reference; '{loaded.name}' is "
                             "a CLAP model: time it with --only families (both families, side by side).")  # fmt: skip
        enc = loaded
        ref_state = weights.read_state_dict(weights.resolve(weights_name), ["audio", "text"])
    ref_text = from_state_dict(ref_state, enc.config, ["text"]).to(dev)
    assert isinstance(ref_text, TextEncoder)
    return enc, reference_audio(ref_state, enc.config).to(dev), ref_text, load_s


def _reference_text(model: TextEncoder, captions: list[str], device: torch.device) -> torch.Tensor:
    return reference_encode_text(model, tokenize(captions).to(device))  # tokenizing is part of either's time


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * decode.SAMPLE_RATE)) * 3000).astype(np.float32)


def model_speed(
    weights_name: str | None,
    device: str,
    synthetic: bool = False,
    precision: str = "fp32",
    repeat: int = 5,
    cfg: AudioCLIPConfig = FULL_SIZE,
    also: tuple[str, ...] = (),
) -> list[Figure]:
    """Audio (5 s and 20 s clips) and text (1 and 64 captions) encode times beside the reference's, weights load;
    cfg sizes the synthetic model (tests pass a tiny one); `also`: more precisions to time the audio clips in."""
    enc, ref, ref_text_tower, load_s = _twins(weights_name, device, synthetic, precision, cfg)
    dev = enc.device
    figures = []
    with torch.inference_mode():
        for seconds in (5, 20):
            clip = _noise(seconds)
            x = torch.from_numpy(clip)[None, None].to(dev)
            t = side_by_side({"ours": partial(enc.embed_audio, [clip]), "ref": partial(ref, x)}, dev, repeat)
            figures.append(Figure(f"audio_{seconds}s_s", f"encode a {seconds} s clip", t["ours"], "s", t["ref"]))
            for other in also:  # each against the reference again, in the same interleaved run
                mine = replace(enc, precision=other)
                t = side_by_side({"ours": partial(mine.embed_audio, [clip]), "ref": partial(ref, x)}, dev, repeat)
                label = f"encode a {seconds} s clip, {other}"
                figures.append(Figure(f"audio_{seconds}s_{other}_s", label, t["ours"], "s", t["ref"]))
        for captions in (SAMPLE_CAPTIONS[:1], (SAMPLE_CAPTIONS * 16)[:64]):
            ref_text = partial(_reference_text, ref_text_tower, captions, dev)
            t = side_by_side(
                {"ours": partial(enc.embed_text, captions), "ref": ref_text},
                dev,
                repeat * 2 if len(captions) == 1 else 2,
            )
            label = "encode one caption" if len(captions) == 1 else f"encode {len(captions)} captions"
            figures.append(Figure(f"text_{len(captions)}_s", label, t["ours"], "s", t["ref"]))
    if load_s is not None:
        figures.append(Figure("load_s", "load the weights (audio + text)", load_s, "s"))
    figures.append(Figure("peak_memory_bytes", "peak memory", float(peak_memory(dev)), "bytes"))
    return figures


def decode_speed(files: list[Path], rate: int = decode.SAMPLE_RATE) -> float:
    """Decode-only throughput in audio seconds per wall second (windows cut as the indexer cuts them, at `rate`)."""
    start, audio = time.perf_counter(), 0.0
    for f in files:
        end = 0.0
        for w in decode.iter_windows(f, rate=rate):
            end = w.end
        audio += end
    return audio / (time.perf_counter() - start)


def library_clip(i: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Clip i of a generated library: a tone of its own pitch under a little noise, int16-range float32."""
    t = np.arange(int(seconds * decode.SAMPLE_RATE)) / decode.SAMPLE_RATE
    x = 0.3 * np.sin(2 * np.pi * (110 + 37 * i) * t) + 0.05 * rng.standard_normal(len(t))
    return (x * 32767).astype(np.float32)


def make_library(folder: Path, n_files: int, seconds: float | list[float]) -> list[Path]:
    """A folder of generated FLAC files (library_clip), for the indexing benchmarks; seconds per file or for all."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n_files):
        x = library_clip(i, seconds[i] if isinstance(seconds, list) else seconds, rng)
        path = folder / f"clip_{i:05d}.flac"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("flac", rate=decode.SAMPLE_RATE, layout="mono")
            frame = av.AudioFrame.from_ndarray(x.astype(np.int16)[None], format="s16", layout="mono")
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


# The libraries indexing_figures indexes, as (files, seconds each): long recordings, and a sample library of short
# clips that all differ in length (none share a forward pass); small on a CPU, large enough to load a GPU.
LIBRARIES = {"cpu": {"long": (6, 20.0), "samples": (12, 0.0)}, "cuda": {"long": (8, 300.0), "samples": (400, 0.0)}}


def library_lengths(n: int, seconds: float) -> list[float]:
    """File durations of a benchmark library: `seconds` each, or 0.5 to 9.5 s all different where seconds is 0."""
    return [seconds or 0.5 + 9.0 * i / n for i in range(n)]


def indexing_speed(encoder: Loaded, files: list[Path]) -> dict[str, float]:
    """Decode-only, model-only and end-to-end indexing throughput of a folder of files (make_library) in audio
    seconds per wall second (model-only embeds every window, decoded beforehand), and on CUDA the GPU memory peak."""
    from audiofind.library.sync import prepare, sync
    from audiofind.store import open_store

    decode_rate = decode_speed(files, encoder.sample_rate)
    windows = [w.samples for f in files for w in decode.iter_windows(f, rate=encoder.sample_rate)]
    audio_s = sum(decode.probe(f).duration for f in files)
    encoder.embed_audio(windows[:1])  # warm-up
    if encoder.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(encoder.device)
    model_s = timed(lambda: encoder.embed_audio(windows), encoder.device, repeat=1)
    with scratch_dir() as tmp, open_store(Path(tmp) / "index.db", create=True) as index:
        prepare(index, encoder)
        report = sync(index, encoder, [files[0].parent])
    out = {"decode_x": decode_rate, "model_x": audio_s / model_s, "end_to_end_x": report.audio_seconds / report.seconds}
    if encoder.device.type == "cuda":
        out["gpu_peak_bytes"] = float(torch.cuda.max_memory_allocated(encoder.device))
    return out


def precision_drift(encoder: Loaded, clips: list[np.ndarray], precision: str) -> tuple[float, float]:
    """How far `precision` moves embeddings from fp32 (the fixture's rel measure, worst clip) and the share of
    clips whose top-10 neighbours among the others stay the same."""
    exact = replace(encoder, precision="fp32").embed_audio(clips)
    moved = replace(encoder, precision=precision).embed_audio(clips)
    a, b = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (moved, exact))
    tops = [np.argsort(-(m @ m.T), axis=1, kind="stable")[:, :10] for m in (a, b)]
    return float(np.abs(a - b).max() / np.abs(b).max()), float(np.mean([set(x) == set(y) for x, y in zip(*tops)]))


def indexing_figures(
    encoder: Loaded, precisions: tuple[str, ...] = ("fp32",), libraries: dict | None = None
) -> list[Figure]:
    """indexing_speed of long recordings and of a sample library (LIBRARIES, or `libraries`) at each precision;
    the end-to-end share of decode-only on CUDA (of model-only on CPU); how far bf16 and tf32 move embeddings."""
    cuda = encoder.device.type == "cuda"
    libraries = libraries or LIBRARIES["cuda" if cuda else "cpu"]
    figures: list[Figure] = []
    with scratch_dir() as tmp:
        made = {kind: make_library(Path(tmp) / kind, n, library_lengths(n, s)) for kind, (n, s) in libraries.items()}
        for precision in precisions:
            enc = replace(encoder, precision=precision)
            for kind, (_, seconds) in libraries.items():
                r = indexing_speed(enc, made[kind])
                named = cuda or len(precisions) > 1
                name, key = (
                    ("long recordings" if seconds else "sample library") + (f", {precision}" if named else ""),
                    f"{kind}_{precision}",
                )
                base = "decode" if cuda else "model"
                figures += [
                    Figure(f"{key}_decode_x", f"decode only, {name}", r["decode_x"], "x real time"),
                    Figure(f"{key}_model_x", f"model only, {name}", r["model_x"], "x real time"),
                    Figure(f"{key}_end_to_end_x", f"end to end, {name}", r["end_to_end_x"], "x real time"),
                    Figure(
                        f"{key}_share_of_{base}",
                        f"end to end / {base} only, {name}",
                        r["end_to_end_x"] / r[f"{base}_x"],
                        "%",
                    ),
                ]
                if cuda:
                    figures.append(
                        Figure(f"{key}_gpu_peak_bytes", f"GPU memory peak, {name}", r["gpu_peak_bytes"], "bytes")
                    )
            if precision != "fp32":
                n, _ = libraries["samples"]
                rng = np.random.default_rng(1)
                rel, same = precision_drift(
                    encoder, [library_clip(i, s, rng) for i, s in enumerate(library_lengths(n, 0.0))], precision
                )
                figures += [
                    Figure(f"{precision}_drift_rel", f"{precision} vs fp32, worst embedding", rel, "rel"),
                    Figure(f"{precision}_top10_same", f"{precision} vs fp32, clips with the same top-10", same, "%"),
                ]
    return figures


def reindex_speed(n_files: int = 10_000, dim: int = 1024) -> float:
    """Seconds to re-index an unchanged library of n_files (the model is never loaded: nothing changed)."""
    import wave

    from audiofind.library.sync import prepare, sync
    from audiofind.paths import hash_file
    from audiofind.store import AudioRow, FileRow, open_store

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
        with open_store(Path(tmp) / "index.db", create=True) as index:
            prepare(index, enc)
            with index.transaction():
                for path in sorted(lib.rglob("*.wav")):
                    st = path.stat()
                    h = hash_file(path)
                    row = FileRow(str(path), str(lib), st.st_size, st.st_mtime_ns, h, "ok", None, {})
                    index.add_file(
                        row,
                        AudioRow(h, 64 / decode.SAMPLE_RATE, decode.SAMPLE_RATE, 1),
                        [(0.0, 0.001)],
                        rng.standard_normal((1, dim)),
                    )
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


def query_speed(encoder: Loaded, sizes: tuple[int, ...] = (10_000, 100_000), per_file: int = 10) -> dict[str, float]:
    """Warm query latency (text encode + vector search + grouping), in seconds, at each index size in segments."""
    from audiofind.library.sync import prepare
    from audiofind.store import AudioRow, FileRow, open_store, vectors

    out: dict[str, float] = {}
    for size in sizes:
        data = vectors.synthetic(size, encoder.dim, queries=1)
        with scratch_dir() as tmp, open_store(Path(tmp) / "index.db", create=True) as index:
            prepare(index, encoder)
            with index.transaction():
                for f in range(size // per_file):
                    h = f"{f:064x}"
                    seg = [(5.0 * j, 5.0 * j + 10.0) for j in range(per_file)]
                    row = FileRow(f"/bench/{f:06d}.wav", "/bench", 1, 1, h, "ok", None, {})
                    index.add_file(
                        row,
                        AudioRow(h, 5.0 * per_file + 5, decode.SAMPLE_RATE, 1),
                        seg,
                        data.vectors[f * per_file : (f + 1) * per_file],
                    )
            queries = iter(SAMPLE_CAPTIONS * 10)
            run = lambda queries=queries: index.search(encoder.embed_text([next(queries)]), 20)
            out[f"query_{size // 1000}k_s"] = timed(run, encoder.device, repeat=7)
    return out


def training_speed(
    device: str = "auto", batch: int = 6, crop_seconds: float = 20.0, steps: int = 3
) -> dict[str, float]:
    """Fine-tuning throughput at full size (clips per second) and peak memory."""
    from audiofind.train.step import train_throughput

    result = train_throughput(AudioCLIPConfig(), device, batch=batch, crop_seconds=crop_seconds, steps=steps)
    return {
        "train_clips_per_s": float(result["clips_per_s"]),
        "train_peak_memory_bytes": float(result["peak_memory_mb"]) * 2**20,
    }
