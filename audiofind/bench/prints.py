"""How alike fingerprints of copies of one recording are, and of different recordings: the measurement behind
printmatch.NEAR (the default of `duplicates --near`).

Each source is written again as every copy a library gathers by accident, through PyAV: FLAC; MP3 at 128 kbit/s;
Ogg Vorbis (FFmpeg's own encoder, stereo: it takes no mono); Opus and AAC at FFmpeg's default rates (64 and about
70 kbit/s mono, the hardest copies here); WAV at 22.05, 48 and 96 kHz through FFmpeg's resampler; a stereo WAV;
+6 and -6 dB; and 0.1, 0.5 and 1.0 s trimmed from the start or the end (a trim only where it leaves two thirds of
the sound). Every file is decoded with audiofind.decode and fingerprinted. Sources peak at 0.45, so +6 dB does not
clip.

Measured on the 31 generated sounds below and the 11 recordings under tests/data/real (2 shared cores, this
repository's test machine), each source against its copies and against every file of every other sound:

- generated: the worst copy scored 0.44 (a 0.1 s noise burst through Opus; a 0.15 s knock through AAC), the closest
  two different sounds 0.26 (gesture take 1 and take 2 trimmed by 1 s: same knocks, other noise; the other takes
  0.21, two regular click trains whose clicks coincide every 0.5 s 0.21);
- real: the worst copy scored 0.48 (trash-empty through AAC), the closest different 0.22 (device-added against a
  gesture take).

printmatch.NEAR = 0.35 sits midway between 0.44 and 0.26.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from audiofind.audio import decode
from audiofind.audio import fingerprint as fp
from audiofind.audio import printmatch as pm
from audiofind.errors import DecodeError, UsageError
from audiofind.library.walk import walk
from audiofind.search import copies

SR = decode.SAMPLE_RATE
PEAK = 0.45  # +6 dB stays under full scale
TRIMS = (0.1, 0.5, 1.0)
CODECS = {"flac": None, "mp3": 128_000, "ogg": None, "opus": None, "m4a": None}  # extension -> bit rate
RATES = (22050, 48000, 96000)
KINDS = (
    *CODECS,
    *(f"{r / 1000:g}k" for r in RATES),
    "stereo",
    "+6dB",
    "-6dB",
    *(f"trim {end} {t:g}s" for t in TRIMS for end in ("start", "end")),
)
_ENCODERS = {  # extension -> (encoder, container)
    "wav": ("pcm_s16le", "wav"),
    "flac": ("flac", "flac"),
    "mp3": ("libmp3lame", "mp3"),
    "ogg": ("vorbis", "ogg"),
    "opus": ("libopus", "opus"),
    "m4a": ("aac", "ipod"),
}


@dataclass(frozen=True)
class PrintReport:
    """Fingerprint similarities measured on `sounds` sources and their copies."""

    sounds: int
    copies: dict[str, float]  # kind -> the lowest similarity of such a copy to its source
    different: float  # the highest similarity between a source and any file of another sound
    suggested: float | None  # midway between the two when every copy scores above any two sounds
    worst: dict[str, str]  # kind -> the sound whose copy scored lowest
    closest: list[str]  # the two different sounds that scored highest
    ms_per_file: float  # fingerprinting time, averaged over the sources
    bytes_per_second: float  # stored fingerprint size, averaged over the sources
    # part ("generated", "real") -> the same measures over its sounds: {"sounds", "copies", "different", "closest"}
    parts: dict[str, dict] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The object `bench near --json` prints for fingerprints."""
        return {
            "sounds": self.sounds,
            "copies": self.copies,
            "different": self.different,
            "suggested": self.suggested,
            "worst": self.worst,
            "closest": self.closest,
            "ms_per_file": self.ms_per_file,
            "bytes_per_second": self.bytes_per_second,
            "parts": self.parts,
        }


def _t(seconds: float) -> np.ndarray:
    return np.arange(round(seconds * SR)) / SR


def _finish(x: np.ndarray, fade_ms: float = 5.0) -> np.ndarray:
    """Faded in and out over fade_ms and scaled to peak at PEAK, float32."""
    x = np.array(x, np.float64)
    n = min(len(x) // 2, round(fade_ms * SR / 1000))
    if n:
        ramp = np.linspace(0.0, 1.0, n)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    top = np.abs(x).max()
    return (x * (PEAK / top) if top > 0 else x).astype(np.float32)


def _shaped_noise(seconds: float, seed: int, power: float = 0.0, band: tuple[float, float] | None = None) -> np.ndarray:
    """Gaussian noise with a power spectrum going as f**-power (0 white, 1 pink, 2 brown), or only within band."""
    n = round(seconds * SR)
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1]
    spec /= f ** (power / 2)
    if band:
        spec[(f < band[0]) | (f > band[1])] = 0
    return _finish(np.fft.irfft(spec, n))


def tone(freq: float, seconds: float, partials: int = 1) -> np.ndarray:
    """A tone of `partials` harmonics falling as 1/k (1: a sine)."""
    t = _t(seconds)
    return _finish(np.sum([np.sin(2 * np.pi * k * freq * t) / k for k in range(1, partials + 1)], axis=0), 10.0)


def chirp(f0: float, f1: float, seconds: float) -> np.ndarray:
    """A linear sweep from f0 to f1 Hz."""
    t = _t(seconds)
    return _finish(np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))), 10.0)


def impulses(times: np.ndarray, seconds: float) -> np.ndarray:
    """Digital clicks (one sample each) at times: the flattest spectrum there is."""
    x = np.zeros(round(seconds * SR))
    x[np.round(np.asarray(times) * SR).astype(int)] = 1.0
    return _finish(x, 0.0)


def knocks(times: np.ndarray, seconds: float, freq: float, seed: int, decay: float = 0.03) -> np.ndarray:
    """Knocks at times: a 2 ms noise transient and a mode at freq ringing down with time constant decay."""
    rng = np.random.default_rng(seed)
    x = np.zeros(round(seconds * SR))
    tt = _t(0.25)
    for at in times:
        one = np.exp(-tt / decay) * np.sin(2 * np.pi * freq * tt) + 0.5 * rng.standard_normal(len(tt)) * np.exp(
            -tt / 0.002
        )
        i = round(at * SR)
        m = min(len(tt), len(x) - i)
        x[i : i + m] += one[:m]
    return _finish(x, 0.0)


def gesture(take: int, seconds: float = 3.0) -> np.ndarray:
    """One gesture, a swell of band noise then three knocks; each take has its own noise, timing (+-15 ms a knock,
    +-3 % overall) and pitch (+-1 %), as a second performance of the same movement would."""
    rng = np.random.default_rng(1000 + take)
    stretch = 1 + rng.uniform(-0.03, 0.03)
    t = _t(seconds)
    spec = np.fft.rfft(rng.standard_normal(len(t)))
    spec *= np.exp(-0.5 * ((np.fft.rfftfreq(len(t), 1 / SR) - 1800) / 700) ** 2)
    swell = np.fft.irfft(spec, len(t))
    swell *= np.clip(t / stretch, 0, 1) ** 2 * (t < 1.1 * stretch) / np.abs(swell).max()
    at = np.array([1.2, 1.5, 1.75]) * stretch + rng.uniform(-0.015, 0.015, 3)
    return _finish(0.6 * swell + knocks(at, seconds, 700 * (1 + rng.uniform(-0.01, 0.01)), seed=100 + take))


def generated_sounds() -> dict[str, np.ndarray]:
    """Named sounds in [-1, 1] at 44.1 kHz, every pair of them different recordings: noises, tones a semitone
    apart, sweeps, clicks, knocks, three takes of one gesture, and one-shots of 0.1 to 0.3 s."""
    semitone = 2 ** (1 / 12)
    rng = np.random.default_rng(5)
    return {
        **{f"white noise {s}": _shaped_noise(3.0, s) for s in (1, 2, 3)},
        **{f"pink noise {s}": _shaped_noise(3.0, s, 1.0) for s in (4, 5)},
        "brown noise": _shaped_noise(3.0, 6, 2.0),
        "hiss 6-9 kHz": _shaped_noise(3.0, 7, band=(6000, 9000)),
        **{f"tone {f:.1f} Hz": tone(f, 3.0) for f in (110, 110 * semitone, 440, 440 * semitone, 3520, 3520 * semitone)},
        **{f"harmonic tone {f:.1f} Hz": tone(f, 3.0, 8) for f in (220, 220 * semitone)},
        "sweep up": chirp(200, 4000, 3.0),
        "sweep down": chirp(4000, 200, 3.0),
        "fast sweep up": chirp(200, 6000, 3.0),
        "clicks 8 Hz": impulses(np.arange(0.05, 2.95, 1 / 8), 3.0),
        "clicks 10 Hz": impulses(np.arange(0.05, 2.95, 1 / 10), 3.0),
        "clicks irregular": impulses(np.cumsum(rng.uniform(0.05, 0.3, 12)), 3.0),
        "knocks 900 Hz": knocks(np.arange(0.1, 2.8, 0.37), 3.0, 900, seed=11),
        "knocks 1400 Hz": knocks(np.arange(0.1, 2.8, 0.37), 3.0, 1400, seed=12),
        **{f"gesture take {k}": gesture(k) for k in (1, 2, 3)},
        "one-shot noise a": _shaped_noise(0.1, 8),
        "one-shot noise b": _shaped_noise(0.1, 9),
        "one-shot tone": tone(1000, 0.2),
        "one-shot click": knocks(np.array([0.01]), 0.15, 2000, seed=13),
        "one-shot sweep": chirp(500, 3000, 0.3),
    }


def write(path: Path, samples: np.ndarray, rate: int = SR, bit_rate: int | None = None) -> Path:
    """Encode (N,) or (C, N) floats in [-1, 1] at rate with the codec the extension implies."""
    encoder, container = _ENCODERS[path.suffix[1:]]
    x = np.atleast_2d(np.asarray(samples, np.float32))
    if encoder == "vorbis" and len(x) == 1:  # FFmpeg's own Vorbis encoder takes two channels only
        x = np.concatenate([x, x])
    layout = "mono" if len(x) == 1 else "stereo"
    spec = av.Codec(encoder, "w")
    offered = [f.name for f in spec.audio_formats or []]
    with av.open(str(path), "w", format=container) as out:
        # Opus runs at 48 kHz only: PyAV resamples on the way in
        rate_out = rate if not spec.audio_rates or rate in spec.audio_rates else 48000
        stream = out.add_stream(encoder, rate=rate_out, layout=layout)
        assert isinstance(stream, av.AudioStream)
        stream.codec_context.format = next(f for f in ("s16", "s16p", "fltp", "flt") if f in offered)
        if bit_rate:
            stream.codec_context.bit_rate = bit_rate
        if encoder == "vorbis":
            stream.codec_context.options = {"strict": "experimental"}
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mono samples at 44.1 kHz to rate through FFmpeg's resampler, as a converter would."""
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None], np.float32), format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = SR, 0, Fraction(1, SR)
    return np.concatenate([f.to_ndarray()[0] for f in [*resampler.resample(frame), *resampler.resample(None)]])


def write_copies(samples: np.ndarray, folder: Path) -> dict[str, Path]:
    """The source as WAV and each kind of copy of it that applies (see KINDS), in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"source": write(folder / "source.wav", samples)}
    for ext, bit_rate in CODECS.items():
        files[ext] = write(folder / f"copy.{ext}", samples, bit_rate=bit_rate)
    for rate in RATES:
        files[f"{rate / 1000:g}k"] = write(folder / f"copy {rate}.wav", resample(samples, rate), rate)
    files["stereo"] = write(folder / "stereo.wav", np.stack([samples, samples]))
    files["+6dB"] = write(folder / "louder.wav", samples * 2.0)
    files["-6dB"] = write(folder / "quieter.wav", samples * 0.5)
    for trim in TRIMS:
        n = round(trim * SR)
        if 3 * n <= len(samples):
            files[f"trim start {trim:g}s"] = write(folder / f"trim start {trim:g}.wav", samples[n:])
            files[f"trim end {trim:g}s"] = write(folder / f"trim end {trim:g}.wav", samples[:-n])
    return files


def real_sounds(folder: Path, limit: int | None = None) -> dict[str, np.ndarray]:
    """Up to limit readable audio files under folder (walked as `index` walks it), decoded, scaled to peak at PEAK."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder.")
    out = {}
    for path in sorted(path for _, path, _ in walk([folder])):
        try:
            x = decode.load_audio(path, max_seconds=fp.MAX_SECONDS)
        except DecodeError:
            continue
        if np.abs(x).max() > 0:
            out[path.name] = _finish(x, 0.0)
        if limit is not None and len(out) == limit:
            break
    if len(out) < 2:
        raise UsageError(f"{folder} holds fewer than two readable audio files; the measurement needs different sounds.")
    return out


def fingerprint_files(sounds: dict[str, np.ndarray], tmp: Path) -> dict[str, dict[str, fp.Fingerprint]]:
    """Write every sound's copies under tmp, decode them with audiofind.decode, and fingerprint: sound -> kind -> print."""
    prints = {}
    for i, (name, samples) in enumerate(sounds.items()):
        files = write_copies(samples, tmp / f"{i:03d}")
        prints[name] = {kind: fp.fingerprint(decode.load_audio(path)) for kind, path in files.items()}
    return prints


def library_sounds(real: Path, limit: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The generated sounds and (up to limit of) the recordings under real, and which part ("generated", "real")
    each is."""
    generated, recorded = generated_sounds(), real_sounds(real, limit)
    parts = {**dict.fromkeys(generated, "generated"), **dict.fromkeys(recorded, "real")}
    return {**generated, **recorded}, parts


def _separation(prints: dict[str, dict[str, fp.Fingerprint]], names: list[str]) -> tuple[dict, dict, float, list]:
    """Over names: the lowest similarity of each kind of copy to its source (and whose), and the highest between
    one of their sources and any file of another sound (and which two)."""
    copies: dict[str, float] = {}
    worst: dict[str, str] = {}
    for name in names:
        kinds = prints[name]
        for kind, print_ in kinds.items():
            score = pm.similarity(kinds["source"], print_)
            if kind != "source" and score < copies.get(kind, 2.0):
                copies[kind], worst[kind] = score, name
    different, closest = 0.0, ["", ""]
    for a in names:
        for b, kinds in prints.items():
            for print_ in kinds.values() if b != a else ():
                score = pm.similarity(prints[a]["source"], print_)
                if score > different:
                    different, closest = score, sorted([a, b])
    return {k: copies[k] for k in KINDS if k in copies}, worst, different, closest


def measure(sounds: dict[str, np.ndarray], tmp: Path, parts: Mapping[str, str] | None = None) -> PrintReport:
    """Fingerprint every copy of every sound and report the worst copy per kind against the closest two sounds,
    over all sounds and over each part that parts (sound -> part) names."""
    prints = fingerprint_files(sounds, tmp)
    copies, worst, different, closest = _separation(prints, list(prints))
    by_part = {}
    for part in dict.fromkeys((parts or {}).values()):
        names = [name for name in prints if (parts or {})[name] == part]
        part_copies, _, part_different, part_closest = _separation(prints, names)
        by_part[part] = {
            "sounds": len(names),
            "copies": part_copies,
            "different": part_different,
            "closest": part_closest,
        }
    low = min(copies.values())
    sources = [decode.load_audio(tmp / f"{i:03d}" / "source.wav") for i in range(len(sounds))]
    start = time.perf_counter()
    stored = [fp.fingerprint(x).to_bytes() for x in sources]
    ms = (time.perf_counter() - start) * 1000 / len(sources)
    rate = sum(map(len, stored)) / (sum(map(len, sources)) / SR)
    suggested = (low + different) / 2 if low > different else None
    return PrintReport(len(sounds), copies, different, suggested, worst, closest, ms, rate, by_part)


def synthetic_prints(n: int, seed: int = 0, copies: float = 0.01) -> dict[str, bytes]:
    """n random fingerprints shaped like a library's (0.1 to 60 s, 120 points a second), a share of them copies of
    others (a fifth of the points dropped, the rest moved by a frame or a step now and then, offset by a trim)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        seconds = float(np.exp(rng.uniform(np.log(0.1), np.log(fp.MAX_SECONDS))))
        frames = max(1, int(seconds * fp.FRAMES_PER_SECOND))
        p = max(1, int(seconds * 120))
        t = np.sort(rng.integers(0, frames, p))
        c = rng.integers(fp.CODE_ZERO - 160, fp.CODE_ZERO + 410, p)
        out[f"{i:06d}"] = fp.Fingerprint(frames, t.astype(np.uint16), c.astype(np.uint16)).to_bytes()
        if rng.random() < copies:
            keep = rng.random(p) > 0.2
            shift = int(rng.integers(0, 20))
            t2 = np.clip(t[keep] + rng.integers(-1, 2, keep.sum()) * (rng.random(keep.sum()) < 0.2) - shift, 0, None)
            c2 = c[keep] + rng.integers(-1, 2, keep.sum()) * (rng.random(keep.sum()) < 0.2)
            order = np.lexsort((c2, t2))
            print_ = fp.Fingerprint(frames, t2[order].astype(np.uint16), c2[order].astype(np.uint16))
            out[f"{i:06d} copy"] = print_.to_bytes()
    return out


def grouping_speed(n: int = 100_000, seed: int = 0) -> dict:
    """Seconds copies.group takes on n synthetic fingerprints (wall clock, and CPU time, which other work on
    a shared machine does not inflate), and how many planted copies it found."""
    prints = synthetic_prints(n, seed)
    planted = sum(k.endswith(" copy") for k in prints)
    start, cpu = time.perf_counter(), time.process_time()
    groups = copies.group(prints, pm.NEAR)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    found = sum(1 for g in groups if len(g) == 2 and g[1] == g[0] + " copy")
    return {
        "fingerprints": len(prints),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "planted": planted,
        "found": found,
        "groups": len(groups),
    }
