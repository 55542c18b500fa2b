"""Audio in: any file FFmpeg can read, out as mono float32 at 44.1 kHz in the int16 range, streamed.

The model's input convention (spec a.1): 44100 Hz, amplitudes in [-32768, 32767] (librosa's [-1, 1] floats
times 32768). Channels are down-mixed here by their arithmetic mean, so this module is the one place that
decides the channel policy. Every function takes `rate`, the sample rate to resample to: AudioCLIP's 44100 by
default, 48000 for CLAP (an encoder's `sample_rate`); the samples and the windows' seconds are the same rule at
any rate.
"""

import functools
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from av.audio.stream import AudioStream

from audiofind.errors import DecodeError, UsageError

SAMPLE_RATE = 44100
INT16_SCALE = 32768.0  # [-1, 1] floats -> the int16 range the model was trained on
WINDOW_SECONDS = 10.0  # index segments
HOP_SECONDS = 5.0
CHUNK_SECONDS = 5.0  # streaming granularity
N_WINDOW = round(WINDOW_SECONDS * SAMPLE_RATE)  # 441000 samples
N_HOP = round(HOP_SECONDS * SAMPLE_RATE)  # 220500 samples

TRUNCATED_RATIO = 0.9  # decoding less than this share of the declared duration means the file was cut short
BAD_PACKETS_TOLERATED = 2  # a damaged last packet or two is normal for a cut file; more means corrupt data
BAD_PACKET_RATIO = 0.01
# raw ADTS AAC declares no duration: FFmpeg guesses one from the first frame's bit rate, which for VBR can be
# far off, so it says nothing about truncation (CBR guesses, e.g. raw AC-3, follow the file size and are fine)
_GUESSED_DURATION_FORMATS = frozenset({"aac"})

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioInfo:
    duration: float  # seconds, as declared by the container (or summed from packets); 0.0 if unknown
    sample_rate: int  # of the file, before resampling
    channels: int  # of the file, before down-mixing
    codec: str  # FFmpeg's canonical codec name: "pcm_s16le", "flac", "mp3", "aac", ...
    container: str = ""  # the demuxer's name: "wav", "flac", "mp3", "aiff", "ogg", "mp4", "m4a", "matroska", ...
    bits: int | None = None  # bit depth of PCM and lossless codecs (a float format's too: 32, 64); None when lossy


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarray fields has no single truth value
class Window:
    start: float  # seconds
    end: float  # seconds
    samples: np.ndarray = field(repr=False)  # (N,) float32, int16 range, N = round((end - start) * rate)


def _n_samples(seconds: float, name: str, rate: int = SAMPLE_RATE) -> int:
    n = round(seconds * rate)
    if n <= 0:
        raise UsageError(f"The {name} must be longer than zero seconds (got {seconds}).")
    return n


@functools.cache
def _silence_ffmpeg() -> None:
    # once per process, so a developer can still turn logs back on (av.logging.set_level) while debugging
    av.logging.set_level(None)


@contextmanager
def _open(path: Path) -> Iterator[tuple[av.container.InputContainer, AudioStream]]:
    """Open path and pick its audio stream, turning every way this can fail into a DecodeError."""
    _silence_ffmpeg()
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as e:
        raise DecodeError(path, "file not found") from e
    except OSError as e:
        raise DecodeError(path, f"cannot read the file: {e.strerror or e}") from e
    if path.is_dir():
        raise DecodeError(path, "is a directory, not an audio file")
    if size == 0:
        raise DecodeError(path, "empty file (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.InvalidDataError as e:
        raise DecodeError(path, "not an audio file (unknown format, or its header is damaged)") from e
    except av.error.EOFError as e:
        raise DecodeError(path, "truncated or corrupt: the file ends inside its own header") from e
    except av.error.FFmpegError as e:
        raise DecodeError(path, f"cannot open the file: {e.strerror or e}") from e
    except OSError as e:  # PyAV maps most errno failures to its own FFmpegError subclasses; this is the rest
        raise DecodeError(path, f"cannot read the file: {e.strerror or e}") from e
    with container:
        # best() skips audio streams with unusable parameters; take those anyway and say what is wrong below
        best = container.streams.best("audio")  # typed as any Stream, though it only ever returns an audio one
        stream = best if isinstance(best, AudioStream) else next(iter(container.streams.audio), None)
        if stream is None:
            types: set[str] = {s.type for s in container.streams}
            kinds = sorted(types) or ["no streams"]
            raise DecodeError(path, f"no audio stream (the file holds {', '.join(kinds)})")
        if stream.codec_context is None:
            raise DecodeError(path, "unsupported codec: this FFmpeg build has no decoder for its audio stream")
        if not stream.codec_context.sample_rate or not stream.codec_context.channels:
            raise DecodeError(path, "corrupt data: the audio stream declares no sample rate or no channels")
        yield container, stream


def _declared_seconds(container: av.container.InputContainer, stream: AudioStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _wav_seconds(path: Path) -> float | None:
    """What a RIFF/WAVE header promises: its data chunk's size over the byte rate of its fmt chunk. FFmpeg reports
    a cut-short file's duration from its size instead, so this is how a truncated WAV is told from a short one."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            byte_rate = None
            for _ in range(64):  # chunks before data: fmt, maybe LIST, bext, fact...; a bounded walk
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                kind, size = chunk[:4], int.from_bytes(chunk[4:], "little")
                if kind == b"fmt ":
                    fmt = f.read(size)
                    byte_rate = int.from_bytes(fmt[8:12], "little") if len(fmt) >= 12 else None
                    f.seek(size % 2, 1)
                elif kind == b"data":
                    return size / byte_rate if byte_rate and size != 0xFFFFFFFF else None
                else:
                    f.seek(size + size % 2, 1)
    except OSError:
        return None
    return None


def probe(path: Path, count: bool = True) -> AudioInfo:
    """Container and stream metadata of an audio file, without decoding it (a WAV's duration: what its header
    promises, which a file cut short does not hold).

    A container that declares no duration has its packets' durations added up, unless count is False (headers
    only: the duration is then 0.0).
    """
    with _open(path) as (container, stream):
        duration = _declared_seconds(container, stream)
        if duration is None and not count:
            duration = 0.0
        if duration is None:  # streamed formats declare nothing: add up packet durations (demux only, no decode)
            try:
                ticks = sum(p.duration or 0 for p in container.demux(stream))
            except av.error.FFmpegError as e:
                raise DecodeError(path, f"corrupt data: {e.strerror or e}") from e
            duration = float(ticks * stream.time_base) if stream.time_base else 0.0
        ctx = stream.codec_context
        name = _container_name(container.format.name, path)
        promised = _wav_seconds(path) if name == "wav" else None
        duration = max(duration, promised) if promised is not None else duration
        return AudioInfo(duration, ctx.sample_rate, ctx.channels, ctx.codec.canonical_name, name, _bits(ctx))


def _container_name(names: str, path: Path) -> str:
    """One demuxer name: of "mov,mp4,m4a,3gp,3g2,mj2", the one the file's extension names, else the first."""
    choices = names.split(",")
    ext = Path(path).suffix.lower().lstrip(".")
    return ext if ext in choices else choices[0]


_PCM = re.compile(r"pcm_[suf](\d+)(?:[lb]e)?(?:_planar)?")


def _bits(ctx: av.audio.codeccontext.AudioCodecContext) -> int | None:
    """The stream's bit depth, from its header: PCM by codec name, FLAC and ALAC by their own header, other lossless
    codecs by the sample format they decode to; None for lossy codecs (their decoders give float)."""
    name, extra = ctx.codec.canonical_name, bytes(ctx.extradata or b"")
    if m := _PCM.fullmatch(name):
        return int(m[1])
    if name == "flac":
        info = extra[8:] if extra.startswith(b"fLaC") else extra  # Matroska keeps the marker and a block header
        if len(info) >= 14:  # STREAMINFO: 80 bits of sizes, 20 of rate, 3 of channels, then 5 of bits - 1
            return (((info[12] & 1) << 4) | (info[13] >> 4)) + 1
    if name == "alac" and len(extra) >= 18:  # the 'alac' atom: 12 bytes of header, frame length, version, depth
        return extra[17]
    if ctx.codec.lossy and not ctx.codec.lossless:
        return None
    return ctx.format.bytes * 8 if ctx.format is not None else None


def _to_mono(frames: list[av.AudioFrame]) -> Iterator[np.ndarray]:
    for frame in frames:
        x = frame.to_ndarray()  # (C, n) float32 in [-1, 1], planar
        mono = x[0] if x.shape[0] == 1 else x.mean(axis=0, dtype=np.float32)
        mono = mono * np.float32(INT16_SCALE)
        if not np.isfinite(mono).all():  # float formats can hold NaN or Inf: the model would turn them into NaN
            raise _NonFinite
        yield mono


class _NonFinite(Exception):
    """A decoded frame holds NaN or infinite samples (float WAV, AIFF-C or CAF can store them)."""


def decoded_pieces(path: Path, max_samples: int | None = None, rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """Mono float32 int16-range pieces of any length at `rate`; checks the whole file once it ends."""
    path = Path(path)
    with _open(path) as (container, stream):
        declared = _declared_seconds(container, stream)
        packets = bad = done = 0
        broken: str | None = None
        resampler, setup = None, None
        demux = container.demux(stream)
        try:
            while max_samples is None or done < max_samples:
                try:
                    packet = next(demux)
                except StopIteration:
                    break
                except av.error.FFmpegError as e:  # the container itself is unreadable from here on
                    broken = e.strerror or str(e)
                    break
                packets += 1
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as e:  # one bad packet: skip it, judge the total at the end
                    bad += 1
                    log.debug("%s: packet %d not decoded: %s", path, packets, e)
                    continue
                for frame in frames:
                    # keep the file's channel layout (we mix down ourselves); a mid-stream change needs a new resampler
                    key = (frame.format.name, frame.layout.name, frame.sample_rate)
                    if resampler is None or key != setup:  # resampler is None only before the first frame
                        if resampler is not None:
                            for x in _to_mono(resampler.resample(None)):
                                done += len(x)
                                yield x
                        resampler, setup = av.AudioResampler(format="fltp", layout=frame.layout, rate=rate), key
                    for x in _to_mono(resampler.resample(frame)):
                        done += len(x)
                        yield x
            if resampler is not None:
                for x in _to_mono(resampler.resample(None)):  # flush the samples swresample holds back
                    done += len(x)
                    yield x
        except av.error.FFmpegError as e:
            raise DecodeError(path, f"corrupt data: {e.strerror or e}") from e
        except ValueError as e:  # PyAV refuses frames it cannot describe (e.g. an unknown sample format)
            raise DecodeError(path, f"unsupported audio data: {e}") from e
        except _NonFinite:
            raise DecodeError(path, f"corrupt data: NaN or infinite samples near {done / rate:.1f} s") from None

        if max_samples is not None and done >= max_samples:
            return  # stopped early on purpose: the rest of the file was not judged
        seconds = done / rate
        complete = declared is None or seconds >= TRUNCATED_RATIO * declared
        trusted = declared is not None and container.format.name not in _GUESSED_DURATION_FORMATS
        if bad > max(BAD_PACKETS_TOLERATED, BAD_PACKET_RATIO * packets):
            raise DecodeError(path, f"corrupt data: {bad} of {packets} packets could not be decoded")
        if broken and done == 0:
            raise DecodeError(path, f"corrupt data: no audio could be decoded ({broken})")
        if trusted and not complete:
            raise DecodeError(path, f"truncated: decoded {seconds:.1f} s of {declared:.1f} s")
        if done == 0:
            raise DecodeError(path, "corrupt data: no audio could be decoded" if bad else "no audio samples decoded")
        if broken and not complete:
            raise DecodeError(path, f"corrupt data after {seconds:.1f} s: {broken}")
        if broken or bad:
            log.warning("%s: kept %.1f s of audio despite %d bad packets %s", path, seconds, bad, broken or "")


def stream_audio(path: Path, chunk_seconds: float = CHUNK_SECONDS, rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
    """Decode path chunk by chunk: (n,) float32 int16-range mono at `rate`; every chunk but the last is full.

    Memory stays at about one chunk whatever the file's length. A damaged file raises DecodeError, possibly
    after some chunks were yielded (truncation shows only at the end), so callers should discard partial results.
    """
    n = _n_samples(chunk_seconds, "chunk", rate)
    pieces: list[np.ndarray] = []
    held = 0
    for x in decoded_pieces(path, rate=rate):
        pieces.append(x)
        held += len(x)
        if held >= n:
            buf = np.concatenate(pieces)
            cut = len(buf) - len(buf) % n
            yield from np.split(buf[:cut], cut // n)
            pieces, held = [buf[cut:]], len(buf) - cut
    if held:
        yield np.concatenate(pieces)


def load_audio(path: Path, max_seconds: float | None = None, rate: int = SAMPLE_RATE) -> np.ndarray:
    """The whole file (or its first max_seconds) as one (N,) float32 int16-range mono array at `rate`."""
    limit = None if max_seconds is None else _n_samples(max_seconds, "duration limit", rate)
    pieces = list(decoded_pieces(path, max_samples=limit, rate=rate))
    return np.concatenate(pieces)[:limit]


def load_crop(path: Path, n: int, rng: np.random.Generator, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A random n-sample crop (zeros appended to a shorter file), decoded only up to the crop's end and held alone:
    the crop pad_or_crop(load_audio(path), n, rng) takes wherever the container states the length exactly."""
    total = round(probe(path).duration * rate)
    if total <= n:
        return pad_or_crop(load_audio(path, rate=rate), n, rng)
    start = int(rng.integers(0, total - n + 1))
    kept, seen = [], 0
    for x in decoded_pieces(path, max_samples=start + n, rate=rate):
        if seen + len(x) > start:
            kept.append(x[max(0, start - seen) :])
        seen += len(x)
    if seen < start + n:  # shorter than its container says (an MP3's estimate): crop what is really there
        return pad_or_crop(load_audio(path, rate=rate), n, rng)
    return pad_or_crop(np.concatenate(kept)[:n], n)


def window_bounds(
    n_samples: int, window: float = WINDOW_SECONDS, hop: float = HOP_SECONDS, rate: int = SAMPLE_RATE
) -> list[tuple[int, int]]:
    """The segmenting rule, in samples: windows every hop, the last one ending at the end; short files whole."""
    w, h = _n_samples(window, "window", rate), _n_samples(hop, "hop", rate)
    if n_samples <= 0:
        return []
    if n_samples <= w:
        return [(0, n_samples)]
    bounds = [(s, s + w) for s in range(0, n_samples - w + 1, h)]
    if bounds[-1][1] < n_samples:  # cover the tail with one window that ends exactly at the end
        bounds.append((n_samples - w, n_samples))
    return bounds


def iter_windows(
    path: Path, window: float = WINDOW_SECONDS, hop: float = HOP_SECONDS, rate: int = SAMPLE_RATE
) -> Iterator[Window]:
    """Stream the windows of window_bounds over a file without decoding it whole (buffer: one window + one chunk)."""
    w, h = _n_samples(window, "window", rate), _n_samples(hop, "hop", rate)
    buf, buf_start = np.zeros(0, dtype=np.float32), 0  # buf holds samples [buf_start, total)
    total = next_start = last_end = 0
    for chunk in stream_audio(path, rate=rate):
        buf = np.concatenate([buf, chunk])
        total += len(chunk)
        while next_start + w <= total:
            i = next_start - buf_start
            yield Window(next_start / rate, (next_start + w) / rate, buf[i : i + w].copy())
            last_end, next_start = next_start + w, next_start + h
        # the tail window [total - w, total] may still need the last w samples
        keep_from = min(next_start, total - w)
        if keep_from > buf_start:
            buf, buf_start = buf[keep_from - buf_start :], keep_from
    if total and last_end < total:
        start = max(0, total - w)
        yield Window(start / rate, total / rate, buf[start - buf_start :].copy())


def pad_or_crop(x: np.ndarray, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Exactly n samples on the last axis: a random crop with rng (the first n without), zeros appended if short."""
    length = x.shape[-1]
    if length > n:
        start = int(rng.integers(0, length - n + 1)) if rng is not None else 0
        return x[..., start : start + n]
    if length < n:
        return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - length)])
    return x
