"""Acoustic fingerprints: the points that tell whether a file is a copy of the same recording, whatever codec, rate,
gain or trim it went through (audio.printmatch compares them, search.copies groups them).

A fingerprint is a constellation of points in time and frequency picked from a 2048-point spectrogram (46 ms
window, 5.8 ms hop, 65 Hz to 10 kHz, so a 22.05 kHz copy keeps every point). Three kinds of point, because no single
kind survives every sound a library holds:

- peaks: the loudest bin within +-6 frames and +-6 bins and 6 dB above its neighbourhood (Shazam's and
  audfprint's landmarks), at most two a frame; in noise and transients they are where the chance fluctuations of
  this one performance happened to peak, so they tell a copy (same fluctuations) from another take (other ones);
- tones: a bin 15 dB above its neighbourhood and the loudest within +-4 bins, sampled every 8th frame while it
  lasts, tagged held, fading or swelling; a steady tone or a drone has no time peaks at all, so without these it
  would have no fingerprint, but they say what sounds (an instrument, a pitch), not which performance;
- onsets: broadband rises of 6 dB or more, the largest within +-8 frames, placed to 1/16 of a frame (0.36 ms) by
  where the energy in 2.9 ms windows starts its climb; a click's spectrum is flat, so its spectral peaks are
  chance, but when it starts is not, and a copy keeps its onsets within 0.1 ms of each other where another take
  of the same rhythm is off by milliseconds.

Every level is taken relative to the loudest bin (a 60 dB range), which makes the points gain-invariant.
Frequencies are coded on a scale that is logarithmic (36 steps an octave) below 1083 Hz and one step a bin above,
so two tones a semitone apart always sit at least two steps apart while noise peaks keep their bin.

Silence, digital or below -90 dBFS, has no points: its fingerprint is empty and matches nothing, not even another
silence (identical silent files are exact copies, found by their content hash). Only the first MAX_SECONDS of a
file are fingerprinted, so a fingerprint is at most MAX_SECONDS * 172 * 4 bytes and a few onsets.
"""

from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SAMPLE_RATE = 44100  # the decoder's rate; samples are mono floats in the int16 range
N_FFT = 2048  # 46 ms: resolves a semitone from 360 Hz up, and the sub-bin estimate does below
HOP = 256  # 5.8 ms: a trim of any length shifts frames by at most half of this
LO_BIN, HI_BIN = 3, 465  # 65 Hz to 10 kHz: a 22.05 kHz copy is low-passed at about 10.5 kHz
MAX_SECONDS = 60.0  # fingerprint the first minute only: bounded size and time for hour-long files
MAX_SAMPLES = round(MAX_SECONDS * SAMPLE_RATE)
BLOCK = 256  # frames transformed at a time (2 MB)
FRAMES_PER_SECOND = SAMPLE_RATE / HOP  # 172.3

RANGE_DB = 60.0  # points are picked from the top 60 dB of the file
SILENCE_DB = -90.0  # dB re a full-scale sine: a bin below it is silence whatever the file's loudest bin
PEAK_FRAMES, PEAK_BINS = 6, 6  # a peak is the loudest of (2*6+1) frames x (2*6+1) bins
PEAK_SLACK_DB = 0.25  # ... or within this of it (a level that stays flat over time)
PEAK_PROMINENCE_DB = 6.0  # above the mean of the 2*16+1 bins around it
PEAKS_PER_FRAME = 2  # the strongest: bounds broadband noise to about 350 peaks a second
MEAN_BINS = 16
TONE_PROMINENCE_DB = 15.0  # a noise bin is this far above its neighbours with probability e**-30
TONE_BINS = 4
TONE_EVERY = 8  # frames between the points of a lasting tone (46 ms)
SLOPE_FRAMES, SLOPE_BINS, SLOPE_DB = 2, 8, 3.0  # a tone point fades or swells: 3 dB over +-2 frames
ONSET_DB = 6.0
ONSET_FRAMES = 8
FINE_N, FINE_HOP = 128, 16  # onsets are placed on the energy in 2.9 ms windows every 0.36 ms ...
FINE_DROP_DB = 10.0  # ... at the last window 10 dB below the loudest one near the onset, where its climb starts
FINE_HI_BIN = round(10000 * FINE_N / SAMPLE_RATE)  # 10 kHz, as the spectrogram

TREND_STEP = 1024  # a tone point's code is its frequency code plus 1024 times 1 (held), 2 (fading) or 3 (swelling)
ONSET = 4096  # an onset point's code is ONSET plus where in its frame the onset starts, in 1/FINE frames
FINE = 16  # 0.36 ms
LOG_STEPS = 36  # frequency codes an octave below BIN_LOG
BIN_LOG = LOG_STEPS / np.log(2)  # 51.9, the bin (1.1 kHz) where a log step is one bin wide
CODE_ZERO = 200  # code of BIN_LOG: codes of 65 Hz and up are positive, and all stay below 1024

_MAGIC = b"AFP2"  # AFP1 (onsets without their sub-frame place) was never released


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarray fields has no single truth value
class Fingerprint:
    """The points of one file's first MAX_SECONDS, in frames of HOP samples, sorted by time then code."""

    frames: int  # frames the fingerprinted audio spans
    times: np.ndarray = field(repr=False)  # (P,) uint16
    codes: np.ndarray = field(repr=False)  # (P,) uint16: a frequency code (+ a tone's trend), or ONSET + sub-frame

    def to_bytes(self) -> bytes:
        """The stored form: magic, frame count, point count, then (time, code) little-endian uint16 pairs."""
        head = _MAGIC + np.array([self.frames, len(self.times)], "<u4").tobytes()
        return head + np.stack([self.times, self.codes], axis=1).astype("<u2").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Fingerprint":
        """Read what to_bytes wrote."""
        if data[:4] != _MAGIC or len(data) < 12:
            raise ValueError("not a fingerprint (bad magic or truncated header)")
        frames, n = np.frombuffer(data, "<u4", 2, 4).tolist()
        if len(data) != 12 + 4 * n:
            raise ValueError(f"fingerprint of {n} points should be {12 + 4 * n} bytes, got {len(data)}")
        pts = np.frombuffer(data, "<u2", 2 * n, 12).reshape(n, 2).astype(np.uint16)
        return cls(frames, pts[:, 0].copy(), pts[:, 1].copy())

    @property
    def empty(self) -> bool:
        """True for silence: no point to match."""
        return len(self.times) == 0


def _slide_max(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Max over +-k along axis (edges see -inf): doubling windows, log2(2k+1) passes instead of 2k+1."""
    a = np.moveaxis(a, axis, 0)
    width = 2 * k + 1
    pad = np.full((k, *a.shape[1:]), -np.inf, a.dtype)
    m = np.concatenate([pad, a, pad])  # m[i] = max of the `span` values from padded index i
    span = 1
    while 2 * span <= width:
        m = np.maximum(m[:-span], m[span:])
        span *= 2
    out = np.maximum(m[: len(a)], m[width - span : width - span + len(a)])
    return np.moveaxis(out, 0, axis)


def _slide_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over +-k bins (edges repeated), (T, B) -> (T, B)."""
    c = np.cumsum(np.pad(a, ((0, 0), (k + 1, k)), mode="edge"), axis=1, dtype=np.float64)
    return ((c[:, 2 * k + 1 :] - c[:, : -2 * k - 1]) / (2 * k + 1)).astype(np.float32)


def _power(samples: np.ndarray) -> np.ndarray:
    """Power (T, HI_BIN - LO_BIN + 2) of bins LO_BIN - 1 to HI_BIN in centred Hann frames every HOP samples, a
    full-scale sine at 0 dB; taken BLOCK frames at a time, so a minute never needs its whole 85 MB of frames."""
    x = np.asarray(samples, np.float32) / np.float32(32768.0)
    x = np.pad(x, (N_FFT // 2, N_FFT // 2))  # frame t is centred on sample t * HOP
    frames = sliding_window_view(x, N_FFT)[::HOP]
    window = np.hanning(N_FFT).astype(np.float32)
    out = np.empty((len(frames), HI_BIN - LO_BIN + 2), np.float32)
    for at in range(0, len(frames), BLOCK):
        spec = np.fft.rfft(frames[at : at + BLOCK] * window, axis=1)[:, LO_BIN - 1 : HI_BIN + 1]
        out[at : at + BLOCK] = spec.real**2 + spec.imag**2
    return out / np.float32((N_FFT / 4) ** 2)


def _every(on: np.ndarray, k: int) -> np.ndarray:
    """Within each bin's runs of consecutive True frames, the 1st, (k+1)th, ... frame: (T, B) -> (T, B)."""
    t = np.arange(len(on), dtype=np.int32)[:, None]
    begins = on & ~np.concatenate([np.zeros_like(on[:1]), on[:-1]])
    start = np.maximum.accumulate(np.where(begins, t, -1), axis=0)  # where the run holding each frame began
    return on & ((t - start) % k == 0)


def code(bins: np.ndarray) -> np.ndarray:
    """Frequency codes of fractional FFT bins: 36 an octave below 1.1 kHz, one a bin above."""
    b = np.maximum(np.asarray(bins, np.float64), 1.0)
    steps = np.where(b < BIN_LOG, LOG_STEPS * np.log2(b / BIN_LOG), b - BIN_LOG)
    return (np.round(steps) + CODE_ZERO).astype(np.int64)


def _onset_samples(x: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Where each onset's climb starts, in samples, from the energy (65 Hz-10 kHz) in FINE_N windows near it."""
    out = np.zeros(len(frames))
    window = np.hanning(FINE_N).astype(np.float32)
    for i, t in enumerate(frames):
        # frame t rose because something entered its window, whose leading edge is at t*HOP + N_FFT/2
        lo = int(t) * HOP + N_FFT // 2 - 5 * HOP - FINE_N // 2
        seg = np.zeros(7 * HOP + FINE_N, np.float32)
        a, b = max(lo, 0), min(lo + len(seg), len(x))
        if b > a:
            seg[a - lo : b - lo] = x[a:b]
        spec = np.fft.rfft(sliding_window_view(seg, FINE_N)[::FINE_HOP] * window, axis=1)
        e = 10 * np.log10((spec.real**2 + spec.imag**2)[:, 1:FINE_HI_BIN].sum(axis=1) + 1e-10)
        top = int(np.argmax(e))
        below = np.flatnonzero(e[:top] < e[top] - FINE_DROP_DB)
        pos = 0.0
        if len(below):  # the crossing between the last quiet window and the next, interpolated
            j = int(below[-1])
            pos = j + (e[top] - FINE_DROP_DB - e[j]) / (e[j + 1] - e[j])
        out[i] = lo + FINE_N // 2 + pos * FINE_HOP
    return out


def _points(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    power = _power(samples)
    db = 10 * np.log10(power + np.float32(1e-20))  # the guard bins LO_BIN - 1 and HI_BIN just outside the band
    floor = max(float(db.max()) - RANGE_DB, SILENCE_DB)
    db = np.maximum(db, np.float32(floor))
    mid = db[:, 1:-1]
    local_peak = (mid > db[:, :-2]) & (mid >= db[:, 2:]) & (mid > floor)
    prominence = mid - _slide_mean(mid, MEAN_BINS)
    tone = local_peak & (mid >= _slide_max(mid, TONE_BINS, 1)) & (prominence >= TONE_PROMINENCE_DB)
    loudest = _slide_max(_slide_max(mid, PEAK_BINS, 1), PEAK_FRAMES, 0)
    peak = local_peak & ~tone & (mid >= loudest - PEAK_SLACK_DB) & (prominence >= PEAK_PROMINENCE_DB)
    ranked = -np.sort(-np.where(peak, mid, -np.inf), axis=1)[:, PEAKS_PER_FRAME - 1 : PEAKS_PER_FRAME]
    peak &= mid >= ranked
    t, b = np.nonzero(_every(tone, TONE_EVERY) | peak)
    left, top, right = db[t, b], db[t, b + 1], db[t, b + 2]
    curve = left - 2 * top + right  # a parabola through the three levels puts the peak between bins
    frac = np.where(curve < 0, 0.5 * (left - right) / np.where(curve < 0, curve, -1), 0.0)
    codes = code(b + LO_BIN + frac)
    # a tone point also says whether the tone holds, fades or swells: a held tone must not match a ringing one
    near = _slide_max(mid, SLOPE_BINS, 1)  # along the tone even where it glides (up to 4 bins a frame)
    ahead = near[np.minimum(t + SLOPE_FRAMES, len(mid) - 1), b] - near[np.maximum(t - SLOPE_FRAMES, 0), b]
    trend = np.where(ahead <= -SLOPE_DB, 2, np.where(ahead >= SLOPE_DB, 3, 1))
    codes = np.where(tone[t, b], codes + TREND_STEP * trend, codes)

    energy = 10 * np.log10(power[:, 1:-1].sum(axis=1, dtype=np.float64) + 1e-20)
    energy = np.maximum(energy, max(float(energy.max()) - RANGE_DB, SILENCE_DB))
    rise = np.diff(energy, prepend=energy[:1])
    onsets = np.nonzero((rise >= ONSET_DB) & (rise >= _slide_max(rise, ONSET_FRAMES, 0)))[0]
    fine = np.floor(np.maximum(_onset_samples(samples, onsets), 0) * FINE / HOP).astype(np.int64)

    times = np.concatenate([t, fine // FINE])
    codes = np.concatenate([codes, ONSET + fine % FINE])
    order = np.lexsort((codes, times))
    return times[order], codes[order], len(power)


def fingerprint(samples: np.ndarray, rate: int = SAMPLE_RATE) -> Fingerprint:
    """The fingerprint of mono float samples in the int16 range at 44.1 kHz (decode.load_audio's output)."""
    if rate != SAMPLE_RATE:
        raise ValueError(f"fingerprints are taken at {SAMPLE_RATE} Hz, got {rate} Hz: decode the file first")
    x = np.asarray(samples, np.float32)[:MAX_SAMPLES]
    if x.ndim != 1:
        raise ValueError(f"expected mono samples shaped (N,), got {x.shape}")
    if x.size == 0:
        return Fingerprint(0, np.zeros(0, np.uint16), np.zeros(0, np.uint16))
    times, codes, frames = _points(x)
    return Fingerprint(frames, times.astype(np.uint16), codes.astype(np.uint16))


class Fingerprinter:
    """fingerprint() fed chunk by chunk (consecutive, non-overlapping), as the indexer decodes them.

    Picking points needs the loudest bin of the whole span, so the samples are held, never more than
    MAX_SECONDS of them, and fingerprinted at finish(): the result is the whole-array fingerprint, bit for bit.
    """

    def __init__(self) -> None:
        self._pieces: list[np.ndarray] = []
        self._held = 0

    def feed(self, chunk: np.ndarray) -> None:
        """Add the next samples; those past MAX_SECONDS are ignored."""
        room = MAX_SAMPLES - self._held
        if room > 0:
            piece = np.asarray(chunk, np.float32)[:room]
            self._pieces.append(piece)
            self._held += len(piece)

    def finish(self) -> Fingerprint:
        """The fingerprint of everything fed."""
        return fingerprint(np.concatenate(self._pieces) if self._pieces else np.zeros(0, np.float32))


def load(fp: "Fingerprint | bytes") -> Fingerprint:
    """A fingerprint, from its stored bytes if need be."""
    return fp if isinstance(fp, Fingerprint) else Fingerprint.from_bytes(fp)
