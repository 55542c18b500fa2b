"""Comparing two fingerprints (audio.fingerprint): how much of one recording the other holds, whatever the trim.

Two fingerprints are compared by voting for the frame offset that lines up most points of equal frequency, then
counting, at the best offsets, the points of each that find a partner: a peak or tone within one frame and one
step (a tone and a peak at one place are one spectral line whose prominence a codec changed; a tone must keep its
trend), an onset within FINE_TOL of the one sub-frame offset that lines up most onsets. The matched share of each
file's points is pooled, and the share of its peaks is weighed in as strongly as the two files have peaks
(PEAK_PRIOR): two takes of a gesture share their tones and rhythm, so they match on pooled points, but their noise
peaks match at chance. The similarity is that share times the share of the shorter file that the overlap covers.
"""

import numpy as np

from audiofind.audio.fingerprint import FINE, ONSET, TREND_STEP, Fingerprint, load

TIME_SLACK, CODE_SLACK = 1, 1  # a peak or tone matches a partner within one frame and one code step
FINE_TOL = 3  # an onset matches within 3/16 frame (1.1 ms); copies measured within 0.1 ms, an AAC one 0.9 ms
OFFSETS_TRIED = 3
PEAK_PRIOR = 8.0  # the peak share counts n / (n + 8) of the score when both files have n or more peaks

# A pair of files whose similarity is at least this is one recording. Measured with bench.prints.measure on the
# generated sounds and the recordings under tests/data/real (see the module's docstring there): the worst copy
# scored 0.44 (a 0.1 s noise burst through Opus), the closest two different sounds 0.26 (two takes of one gesture).
NEAR = 0.35


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
    a, b = load(a), load(b)
    if a.empty or b.empty:
        return 0.0
    a, b = _ordered(a, b)
    return max([_score(a, b, int(off)) for off in _votes(a, b)[0]], default=0.0)


def linked(a: "Fingerprint | bytes", b: "Fingerprint | bytes", threshold: float = NEAR) -> bool:
    """similarity(a, b) >= threshold, exactly, but faster: it scores only the offsets whose votes could reach the
    threshold (a point matched at an offset voted for it, so the pooled share there is at most votes / points)."""
    a, b = load(a), load(b)
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
