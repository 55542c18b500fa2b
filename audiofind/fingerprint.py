"""Acoustic fingerprints: is this file a copy of the same recording, whatever codec, rate, gain or trim it went through?

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

Two fingerprints are compared by voting for the frame offset that lines up most points of equal frequency, then
counting, at the best offsets, the points of each that find a partner: a peak or tone within one frame and one
step (a tone and a peak at one place are one spectral line whose prominence a codec changed; a tone must keep its
trend), an onset within FINE_TOL of the one sub-frame offset that lines up most onsets. The matched share of each
file's points is pooled, and the share of its peaks is weighed in as strongly as the two files have peaks
(PEAK_PRIOR): two takes of a gesture share their tones and rhythm, so they match on pooled points, but their noise
peaks match at chance. The similarity is that share times the share of the shorter file that the overlap covers.

Silence, digital or below -90 dBFS, has no points: its fingerprint is empty and matches nothing, not even another
silence (identical silent files are exact copies, found by their content hash). Only the first MAX_SECONDS of a
file are fingerprinted, so a fingerprint is at most MAX_SECONDS * 172 * 4 bytes and a few onsets.
"""

from collections.abc import Callable, Mapping
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

TIME_SLACK, CODE_SLACK = 1, 1  # a peak or tone matches a partner within one frame and one code step
FINE_TOL = 3  # an onset matches within 3/16 frame (1.1 ms); copies measured within 0.1 ms, an AAC one 0.9 ms
OFFSETS_TRIED = 3
PEAK_PRIOR = 8.0  # the peak share counts n / (n + 8) of the score when both files have n or more peaks

# A pair of files whose similarity is at least this is one recording. Measured with nearprints.measure on the
# generated sounds and the recordings under tests/data/real (see the module's docstring there): the worst copy
# scored 0.44 (a 0.1 s noise burst through Opus), the closest two different sounds 0.26 (two takes of one gesture).
NEAR = 0.35

# group(): a file is indexed under the SKETCH smallest scrambled triplets of consecutive points (a bottom-k sketch:
# copies sharing most triplets share most of their sketch), and a small file under its pairs too
SKETCH = 128
FAN = 3
PAIR_FRAMES = 63
MAX_BUCKET = 256  # a hash shared by more files than this (a common tone) proposes no pairs
MIN_SHARED = 2  # hashes two files must share to be compared, or all of the smaller sketch (a steady tone has one)
SMALL = 64  # points: a file this small is indexed under its point pairs too, as triplets are few

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


def _load(fp: "Fingerprint | bytes") -> Fingerprint:
    return fp if isinstance(fp, Fingerprint) else Fingerprint.from_bytes(fp)


def _pairs(sorted_b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j) with lo[i] <= j < hi[i]: indices into the queries and into sorted_b."""
    n = hi - lo
    i = np.repeat(np.arange(len(lo)), n)
    return i, np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(lo, n)


def _votes(a: Fingerprint, b: Fingerprint) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (frames to add to b's times) and how many point pairs of codes within CODE_SLACK each lines up
    within TIME_SLACK, the OFFSETS_TRIED best, best first. Tones vote by frequency alone and onsets all alike, so
    every point the score can match is counted: the votes bound the matches."""

    def voting(fp: Fingerprint) -> np.ndarray:
        c = fp.codes.astype(np.int64)
        return np.where(c >= ONSET, ONSET, c % TREND_STEP)

    ta, ca = a.times.astype(np.int64), voting(a)
    cb = voting(b)
    order = np.argsort(cb, kind="stable")
    tb, cb = b.times.astype(np.int64)[order], cb[order]
    votes = []
    for dc in range(-CODE_SLACK, CODE_SLACK + 1):
        ia, jb = _pairs(cb, np.searchsorted(cb, ca + dc, "left"), np.searchsorted(cb, ca + dc, "right"))
        votes.append(ta[ia] - tb[jb])
    v = np.concatenate(votes)
    if not len(v):
        return v, v
    counts = np.bincount(v - v.min())
    smooth = np.convolve(counts, np.ones(2 * TIME_SLACK + 1, np.int64), "same")
    best = np.argsort(-smooth, kind="stable")[:OFFSETS_TRIED]
    best = best[smooth[best] > 0]
    return best + v.min(), smooth[best]


def _near(t: np.ndarray, c: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which points (t, c) have one of the sorted keys (time * 8192 + code) within TIME_SLACK and CODE_SLACK."""
    hit = np.zeros(len(t), bool)
    if not len(keys) or not len(t):
        return hit
    for dt in range(-TIME_SLACK, TIME_SLACK + 1):
        base = (t + dt) * 8192 + c  # codes c-1..c+1 of one frame are adjacent keys: one search finds them all
        i = np.minimum(np.searchsorted(keys, base - CODE_SLACK), len(keys) - 1)
        hit |= np.abs(keys[i] - base) <= CODE_SLACK
    return hit


def _spectral_hits(ta: np.ndarray, ca: np.ndarray, tb: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """Which of a's peaks and tones have a partner among b's: a peak, or a tone of the same trend."""
    tone_a, tone_b = ca >= TREND_STEP, cb >= TREND_STEP
    keys_b = tb * 8192 + cb
    any_b = np.sort(tb * 8192 + cb % TREND_STEP)  # b's peaks and tones by frequency code alone
    tones_b, peaks_b = np.sort(keys_b[tone_b]), np.sort(keys_b[~tone_b])  # tones by code and trend
    hit = _near(ta, ca, any_b)
    hit[tone_a] = _near(ta[tone_a], ca[tone_a], tones_b) | _near(ta[tone_a], ca[tone_a] % TREND_STEP, peaks_b)
    return hit


def _onset_hits(fa: np.ndarray, fb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which onsets (times in 1/FINE frames, b's already offset) line up within FINE_TOL at one sub-frame offset."""
    ha, hb = np.zeros(len(fa), bool), np.zeros(len(fb), bool)
    if not len(fa) or not len(fb):
        return ha, hb
    order = np.argsort(fb, kind="stable")
    sb = fb[order]
    # partners within a frame, so that an onset pair matched at an offset also voted for it
    ia, jb = _pairs(sb, np.searchsorted(sb, fa - FINE, "left"), np.searchsorted(sb, fa + FINE, "right"))
    if not len(ia):
        return ha, hb
    d = fa[ia] - sb[jb]
    s = np.sort(d)
    lined_up = np.searchsorted(s, s + 2 * FINE_TOL, "right") - np.arange(len(s))  # in [s_k, s_k + 2 FINE_TOL]
    ok = np.abs(d - (s[int(np.argmax(lined_up))] + FINE_TOL)) <= FINE_TOL
    ha[ia[ok]] = True
    hb[order[jb[ok]]] = True
    return ha, hb


def _score(a: Fingerprint, b: Fingerprint, offset: int) -> float:
    ta, ca = a.times.astype(np.int64), a.codes.astype(np.int64)
    tb, cb = b.times.astype(np.int64) + offset, b.codes.astype(np.int64)
    lo, hi = max(0, offset), min(a.frames, b.frames + offset)
    if hi <= lo:
        return 0.0
    in_a, in_b = (ta >= lo) & (ta < hi), (tb >= lo) & (tb < hi)
    if not in_a.any() or not in_b.any():
        return 0.0
    ta, ca, tb, cb = ta[in_a], ca[in_a], tb[in_b], cb[in_b]
    sa, sb = ca < ONSET, cb < ONSET  # spectral points; the others are onsets
    hit_a, hit_b = np.zeros(len(ta), bool), np.zeros(len(tb), bool)
    hit_a[sa] = _spectral_hits(ta[sa], ca[sa], tb[sb], cb[sb])
    hit_b[sb] = _spectral_hits(tb[sb], cb[sb], ta[sa], ca[sa])
    hit_a[~sa], hit_b[~sb] = _onset_hits(ta[~sa] * FINE + ca[~sa] - ONSET, tb[~sb] * FINE + cb[~sb] - ONSET)
    share = min(hit_a.mean(), hit_b.mean())
    # peaks are this performance's own: as many as the two files have, so much must their peaks match too
    peak_a, peak_b = ca < TREND_STEP, cb < TREND_STEP
    n = min(peak_a.sum(), peak_b.sum())
    if n:
        peaks = min(hit_a[peak_a].mean(), hit_b[peak_b].mean())
        share = min(share, (n * peaks + PEAK_PRIOR * share) / (n + PEAK_PRIOR))
    cover = (hi - lo) / min(a.frames, b.frames)  # a short overlap of two long files is no evidence
    return float(share * min(1.0, cover))


def _ordered(a: Fingerprint, b: Fingerprint) -> tuple[Fingerprint, Fingerprint]:
    """One order for (a, b) and (b, a): the score is exactly symmetric."""
    ka, kb = (len(a.times), a.frames), (len(b.times), b.frames)
    return (b, a) if ka > kb or (ka == kb and a.to_bytes() > b.to_bytes()) else (a, b)


def similarity(a: "Fingerprint | bytes", b: "Fingerprint | bytes") -> float:
    """How surely a and b are one recording, from 0 (nothing in common) to 1; symmetric; NEAR and up means a copy."""
    a, b = _load(a), _load(b)
    if a.empty or b.empty:
        return 0.0
    a, b = _ordered(a, b)
    return max([_score(a, b, int(off)) for off in _votes(a, b)[0]], default=0.0)


def linked(a: "Fingerprint | bytes", b: "Fingerprint | bytes", threshold: float = NEAR) -> bool:
    """similarity(a, b) >= threshold, exactly, but faster: it scores only the offsets whose votes could reach the
    threshold (a point matched at an offset voted for it, so the pooled share there is at most votes / points)."""
    a, b = _load(a), _load(b)
    if a.empty or b.empty:
        return threshold <= 0.0
    a, b = _ordered(a, b)
    for off, votes in zip(*_votes(a, b)):
        lo, hi = max(0, off), min(a.frames, b.frames + off)
        if hi <= lo:
            continue
        inside = max(
            np.searchsorted(a.times, hi, "left") - np.searchsorted(a.times, lo, "left"),
            np.searchsorted(b.times, hi - off, "left") - np.searchsorted(b.times, lo - off, "left"),
        )
        cover = min(1.0, (hi - lo) / min(a.frames, b.frames))
        if inside and votes / inside * cover >= threshold and _score(a, b, int(off)) >= threshold:
            return True
    return threshold <= 0.0


def _mix(h: np.ndarray) -> np.ndarray:
    """A 64-bit scramble of each hash (splitmix64's finaliser), so that the smallest values are a fair sample."""
    h = (h.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(31)
    return h * np.uint64(0x94D049BB133111EB)


def _distinct(h: np.ndarray) -> np.ndarray:
    h = np.sort(h)
    first = np.ones(len(h), bool)
    first[1:] = h[1:] != h[:-1]
    return h[first]


def hashes(fp: "Fingerprint | bytes") -> np.ndarray:
    """The index keys of a fingerprint: the SKETCH smallest scrambled triplets of consecutive points (a point, the
    next two, their gaps); a small fingerprint adds all its pairs, as its few triplets may all be lost in a copy."""
    fp = _load(fp)
    # keys forget a tone's trend, an onset's sub-frame place, and halve the frequency code: the look-up must
    # survive what the score forgives
    raw = fp.codes.astype(np.int64)
    t, c = fp.times.astype(np.int64), np.where(raw >= ONSET, TREND_STEP - 1, raw % TREND_STEP) >> 1
    keys = [np.zeros(0, np.uint64)]
    if len(t) >= 3:
        d1, d2 = t[1:-1] - t[:-2], t[2:] - t[1:-1]
        ok = (d1 <= PAIR_FRAMES) & (d2 <= PAIR_FRAMES)
        keys.append(_distinct(_mix((c[:-2] << 36 | c[1:-1] << 24 | c[2:] << 12 | d1 << 6 | d2)[ok]))[:SKETCH])
    if 0 < len(t) < SMALL:  # kept apart from the sketch, so that a copy just over SMALL still shares triplets
        for k in range(1, FAN + 1):
            dt = t[k:] - t[:-k]
            keys.append(_mix((1 << 62) | (c[:-k] << 18 | c[k:] << 6 | dt)[dt <= PAIR_FRAMES]))
    return _distinct(np.concatenate(keys))


def _candidates(per_file: list[np.ndarray]) -> np.ndarray:
    """Pairs (i < j) of files sharing MIN_SHARED hashes, or every hash of the smaller sketch, in buckets of at
    most MAX_BUCKET files: (K, 2)."""
    sizes = np.array([len(h) for h in per_file], np.int64)
    hs = np.concatenate(per_file) if per_file else np.zeros(0, np.uint64)
    owner = np.repeat(np.arange(len(per_file)), sizes)
    order = np.argsort(hs, kind="stable")
    hs, owner = hs[order], owner[order]
    starts = np.flatnonzero(np.concatenate([[True], hs[1:] != hs[:-1]])) if len(hs) else np.zeros(0, np.int64)
    lengths = np.diff(np.append(starts, len(hs)))
    pairs = [np.zeros(0, np.int64)]
    for size in np.unique(lengths[(lengths >= 2) & (lengths <= MAX_BUCKET)]):
        first = starts[lengths == size]
        i, j = np.triu_indices(size, 1)
        a, b = owner[first[:, None] + i].ravel(), owner[first[:, None] + j].ravel()
        pairs.append(np.minimum(a, b) * len(per_file) + np.maximum(a, b))
    found, shared = np.unique(np.concatenate(pairs), return_counts=True)
    i, j = found // max(len(per_file), 1), found % max(len(per_file), 1)
    keep = shared >= np.minimum(MIN_SHARED, np.minimum(sizes[i], sizes[j]))
    return np.stack([i[keep], j[keep]], axis=1)


def group(
    fingerprints: Mapping[str, "Fingerprint | bytes"],
    threshold: float = NEAR,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[str]]:
    """Sets of keys whose fingerprints are linked by similarity >= threshold, transitively; largest first.

    Only pairs that share MIN_SHARED hashes (or the whole of a sketch smaller than that) are compared: an inverted
    index, never all pairs, each hash in a bucket of at most MAX_BUCKET files. progress(done, total) is called
    as candidate pairs are scored.
    """
    keys = sorted(fingerprints)  # one order whatever the mapping's: the result cannot depend on it
    prints = [_load(fingerprints[k]) for k in keys]
    pairs = _candidates([hashes(p) for p in prints])
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for done, (i, j) in enumerate(pairs.tolist(), 1):
        a, b = root(i), root(j)
        if a != b and linked(prints[i], prints[j], threshold):
            parent[max(a, b)] = min(a, b)
        if progress and (done % 1000 == 0 or done == len(pairs)):
            progress(done, len(pairs))
    sets: dict[int, list[str]] = {}
    for i, k in enumerate(keys):
        sets.setdefault(root(i), []).append(k)
    return sorted((s for s in sets.values() if len(s) > 1), key=lambda s: (-len(s), s))
