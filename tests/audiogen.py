"""Test audio made on the spot: deterministic signals, files in every format this PyAV can encode, and bad files.

Signals are float32 arrays shaped (channels, samples) in [-1, 1]; writers take that shape and return the path.
"""

import struct
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SAMPLE_RATE = 44100

# extension -> (container format, encoder); the first suitable sample format of the encoder is picked below
_FORMATS: dict[str, tuple[str, str]] = {
    "wav": ("wav", "pcm_s16le"),
    "flac": ("flac", "flac"),
    "mp3": ("mp3", "libmp3lame"),
    "ogg": ("ogg", "vorbis"),
    "opus": ("opus", "libopus"),
    "m4a": ("ipod", "aac"),
    "mp4": ("mp4", "aac"),
    "aac": ("adts", "aac"),
    "aiff": ("aiff", "pcm_s16be"),
    "aif": ("aiff", "pcm_s16be"),
    "caf": ("caf", "pcm_s16le"),
    "w64": ("w64", "pcm_s16le"),
    "wv": ("wv", "wavpack"),
    "mka": ("matroska", "flac"),
    "webm": ("webm", "libopus"),
    "au": ("au", "pcm_s16be"),
    "ac3": ("ac3", "ac3"),
    "mp2": ("mp2", "mp2"),
    "tta": ("tta", "tta"),
}
# encoders that FFmpeg marks experimental
_EXPERIMENTAL = {"vorbis"}
# prefer 16-bit integer samples (wavpack and tta would otherwise pick 8-bit), then float
_PREFERRED_FMTS = ("s16", "s16p", "fltp", "flt", "s32", "s32p")

ENCODABLE_EXTS: tuple[str, ...] = tuple(
    ext for ext, (fmt, codec) in _FORMATS.items() if fmt in av.formats_available and codec in av.codecs_available
)
_LOSSLESS = {"wav", "flac", "aiff", "aif", "caf", "w64", "wv", "mka", "au", "tta"}
LOSSLESS_EXTS = tuple(e for e in ENCODABLE_EXTS if e in _LOSSLESS)  # s16 in, the same s16 out


def _n(seconds: float, sr: int) -> int:
    return int(round(seconds * sr))


def sine(freq: float, seconds: float, sr: int = SAMPLE_RATE, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """A sine tone, the same on every channel: (channels, N) float32."""
    t = np.arange(_n(seconds, sr)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.repeat(x[None, :], channels, axis=0).astype(np.float32)


def square(freq: float, seconds: float, sr: int = SAMPLE_RATE, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """A square wave (rich in odd harmonics): (channels, N) float32."""
    t = np.arange(_n(seconds, sr)) / sr
    x = amp * np.sign(np.sin(2 * np.pi * freq * t))
    return np.repeat(x[None, :], channels, axis=0).astype(np.float32)


def chirp(
    f0: float, f1: float, seconds: float, sr: int = SAMPLE_RATE, channels: int = 1, amp: float = 0.5
) -> np.ndarray:
    """A linear sweep from f0 to f1 Hz: (channels, N) float32."""
    t = np.arange(_n(seconds, sr)) / sr
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    x = amp * np.sin(phase)
    return np.repeat(x[None, :], channels, axis=0).astype(np.float32)


def noise(seconds: float, sr: int = SAMPLE_RATE, channels: int = 1, seed: int = 0, amp: float = 0.5) -> np.ndarray:
    """Uniform white noise, independent per channel and fixed by seed: (channels, N) float32."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-amp, amp, size=(channels, _n(seconds, sr))).astype(np.float32)


def silence(seconds: float, sr: int = SAMPLE_RATE, channels: int = 1) -> np.ndarray:
    """Digital silence: (channels, N) float32 zeros."""
    return np.zeros((channels, _n(seconds, sr)), dtype=np.float32)


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")


def write_audio(
    path: Path,
    samples: np.ndarray,
    sr: int = SAMPLE_RATE,
    codec: str | None = None,
    sample_fmt: str | None = None,
    bit_rate: int | None = None,
) -> Path:
    """Encode (channels, N) floats in [-1, 1] with the codec and container the extension implies.

    Encoders with a fixed set of rates (opus: 48 kHz) get the nearest one; PyAV resamples on the way in.
    """
    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if ext not in _FORMATS:
        raise ValueError(f"no encoder set up for .{ext} (known: {', '.join(ENCODABLE_EXTS)})")
    container_fmt, default_codec = _FORMATS[ext]
    codec = codec or default_codec
    samples = np.atleast_2d(np.asarray(samples, dtype=np.float32))
    channels = samples.shape[0]
    spec = av.Codec(codec, "w")
    rate = sr if not spec.audio_rates or sr in spec.audio_rates else min(spec.audio_rates, key=lambda r: abs(r - sr))
    if sample_fmt is None:
        offered = [f.name for f in spec.audio_formats or []]
        sample_fmt = next((f for f in _PREFERRED_FMTS if f in offered), offered[0] if offered else None)
    with av.open(str(path), "w", format=container_fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=_layout(channels))
        if sample_fmt:
            stream.codec_context.format = sample_fmt
        if bit_rate:
            stream.codec_context.bit_rate = bit_rate
        if codec in _EXPERIMENTAL:
            stream.codec_context.options = {"strict": "experimental"}
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=_layout(channels))
        frame.sample_rate = sr
        frame.pts, frame.time_base = 0, Fraction(1, sr)  # muxers (matroska, ogg) need real timestamps
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def write_int16_wav(path: Path, samples: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write int16 samples (channels, N) as a PCM WAV, bit for bit (through the stdlib, not FFmpeg)."""
    samples = np.atleast_2d(np.asarray(samples))
    assert samples.dtype == np.int16, f"expected int16 samples, got {samples.dtype}"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[0])
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.ascontiguousarray(samples.T).astype("<i2").tobytes())
    return Path(path)


def write_empty(path: Path) -> Path:
    """A zero-byte file."""
    Path(path).write_bytes(b"")
    return Path(path)


def write_truncated(path: Path, src: Path, fraction: float = 0.5) -> Path:
    """The first `fraction` of a valid file's bytes, as if a copy or download was cut short."""
    data = Path(src).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * fraction)])
    return Path(path)


def write_not_audio(path: Path) -> Path:
    """Plain text under an audio file name."""
    Path(path).write_text("This is a shopping list, not a sound.\n- eggs\n- milk\n" * 20)
    return Path(path)


def write_corrupt(path: Path, src: Path, seed: int = 0, keep_header: int = 4096) -> Path:
    """A valid file whose bytes after the first keep_header are replaced by random ones (corrupt data)."""
    data = bytearray(Path(src).read_bytes())
    rng = np.random.default_rng(seed)
    data[keep_header:] = rng.integers(0, 256, len(data) - keep_header, dtype=np.uint8).tobytes()
    Path(path).write_bytes(bytes(data))
    return Path(path)


def write_unsupported_codec(path: Path, seconds: float = 0.2) -> Path:
    """A WAV whose format tag (0x1234) names no codec FFmpeg has: the container opens, nothing can decode it."""
    write_int16_wav(path, np.zeros((1, _n(seconds, SAMPLE_RATE)), dtype=np.int16))
    data = bytearray(Path(path).read_bytes())
    data[20:22] = (0x1234).to_bytes(2, "little")  # wFormatTag of the fmt chunk the stdlib writes
    Path(path).write_bytes(bytes(data))
    return Path(path)


def write_no_audio_stream(path: Path, seconds: float = 0.2) -> Path:
    """A video-only Matroska file (a few grey frames): a real media file with nothing to hear."""
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(max(1, int(seconds * 25))):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 128, dtype=np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return Path(path)


def write_float_wav(path: Path, samples: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """A mono 32-bit float WAV written by hand, so it can hold NaN and Inf (encoders refuse them)."""
    data = np.asarray(samples, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sr, sr * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return Path(path)
