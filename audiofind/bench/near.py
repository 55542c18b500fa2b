"""How far copies of one sound sit from it, and different sounds from each other: the measurement behind
`duplicates --near`.

Each source is written again as the copies a library gathers by accident (FLAC, MP3 at 128 kbit/s, WAV at 48 kHz,
WAV with 10 ms trimmed from the start or from the end), everything is indexed with the model, and the whole-file
vectors are compared as `duplicates` compares them (cosine distance of the unit mean segment vectors).
"""

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.audio.stream import AudioStream

from audiofind.audio import decode
from audiofind.audio.formats import extension
from audiofind.errors import DecodeError, UsageError
from audiofind.library.walk import walk
from audiofind.model.embedder import Embedder
from audiofind.search.duplicates import whole_file_vectors

KINDS = ("flac", "mp3", "48k", "trim_start", "trim_end")
TRIM_SECONDS = 0.010
SR = decode.SAMPLE_RATE


@dataclass(frozen=True)
class NearReport:
    """Distances measured on `sounds` sources and their copies."""

    sounds: int
    copies: dict[str, float]  # kind -> the largest distance of such a copy from its source
    different: float  # the smallest distance between two different sources
    suggested: float | None  # the geometric mean of the two when every copy is closer than any two sources

    def as_dict(self) -> dict:
        """The object `bench near --json` prints."""
        return {"sounds": self.sounds, "copies": self.copies, "different": self.different, "suggested": self.suggested}


def generated_sounds(n: int = 8, seconds: float = 3.0) -> list[np.ndarray]:
    """n different sounds in [-1, 1] at 44.1 kHz: tones, sweeps, noise bursts and tremolos, each at its own pitch."""
    t = np.arange(round(seconds * SR)) / SR
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        f = 110.0 * 2 ** (i * 5 / 12)
        kind = i % 4
        if kind == 0:
            x = np.sin(2 * np.pi * f * t)
        elif kind == 1:
            x = np.sin(2 * np.pi * (f * t + (8 * f - f) * t**2 / (2 * seconds)))
        elif kind == 2:
            x = rng.uniform(-1, 1, t.size) * (np.sin(2 * np.pi * (i + 1) * t / seconds) > 0)
        else:
            x = np.sin(2 * np.pi * f * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 6 * t))
        out.append((0.5 * x).astype(np.float32))
    return out


def write(path: Path, samples: np.ndarray, rate: int = SR, bit_rate: int | None = None) -> Path:
    """Encode mono samples in [-1, 1] with the codec the extension implies (WAV, FLAC or MP3)."""
    codec, fmt = {"wav": ("pcm_s16le", "s16"), "flac": ("flac", "s16"), "mp3": ("libmp3lame", "fltp")}[extension(path.name)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, AudioStream)  # an audio codec's: PyAV types a codec named at run time as any stream
        stream.codec_context.format = fmt
        if bit_rate:
            stream.codec_context.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None], np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


def write_copies(samples: np.ndarray, folder: Path) -> dict[str, Path]:
    """The source as WAV and each kind of copy of it, in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    trim = round(TRIM_SECONDS * SR)
    t48 = np.arange(round(samples.size * 48000 / SR)) * SR / 48000
    return {
        "source": write(folder / "source.wav", samples),
        "flac": write(folder / "copy.flac", samples),
        "mp3": write(folder / "copy.mp3", samples, bit_rate=128_000),
        "48k": write(folder / "copy 48k.wav", np.interp(t48, np.arange(samples.size), samples).astype(np.float32), 48000),
        "trim_start": write(folder / "trimmed start.wav", samples[trim:]),
        "trim_end": write(folder / "trimmed end.wav", samples[:-trim]),
    }


def source_files(folder: Path, limit: int) -> list[np.ndarray]:
    """Up to limit readable audio files under folder (walked as `index` walks it), decoded, in [-1, 1]."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder.")
    out = []
    for path in sorted(path for _, path, _ in walk([folder])):
        try:
            out.append(decode.load_audio(path, max_seconds=60.0) / 32768.0)
        except DecodeError:
            continue
        if len(out) == limit:
            break
    if len(out) < 2:
        raise UsageError(f"{folder} holds fewer than two readable audio files; the measurement needs different sounds.")
    return out


def measure(encoder: Embedder, sounds: list[np.ndarray], tmp: Path) -> NearReport:
    """Write each sound's copies under tmp, index them all with the encoder, and compare as `duplicates` does."""
    from audiofind.library.sync import prepare, sync
    from audiofind.store import open_store

    sets = [write_copies(x, tmp / "copies" / f"{i:03d}") for i, x in enumerate(sounds)]
    with open_store(tmp / "near.db", create=True) as index:
        prepare(index, encoder)
        sync(index, encoder, [tmp / "copies"])
        hashes = {row.path: row.hash for row in index.files_under([tmp / "copies"]) if row.status == "ok" and row.hash}
        missing = [str(p) for s in sets for p in s.values() if str(p) not in hashes]
        if missing:
            raise DecodeError(missing[0], "a copy made for the measurement could not be indexed")
        order = sorted(set(hashes.values()))
        vectors = dict(zip(order, whole_file_vectors(index, order)))
    vec = lambda p: vectors[hashes[str(p)]]
    copies = {k: max(float(1 - vec(s["source"]) @ vec(s[k])) for s in sets) for k in KINDS}
    sources = np.stack([vec(s["source"]) for s in sets])
    apart = 1 - sources @ sources.T
    different = float(apart[~np.eye(len(sets), dtype=bool)].min())
    worst = max(copies.values())
    suggested = math.sqrt(max(worst, 1e-12) * different) if worst < different else None
    return NearReport(len(sets), copies, different, suggested)
