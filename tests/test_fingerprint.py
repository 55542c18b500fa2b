"""Acoustic fingerprints: every copy of a recording groups with it, no two recordings group, whatever the order."""

import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from audiofind.audio import decode
from audiofind.audio import fingerprint as fp
from audiofind.audio import printmatch as pm
from audiofind.bench import prints as nearprints
from audiofind.search import copies

REAL = Path(__file__).parent / "data" / "real"
SR = fp.SAMPLE_RATE


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, fp.Fingerprint]]:
    """sound -> copy kind -> fingerprint, for the generated sounds and the real recordings, each copy written once."""
    sounds = {**nearprints.generated_sounds(), **nearprints.real_sounds(REAL)}
    return nearprints.fingerprint_files(sounds, tmp_path_factory.mktemp("copies"))


def flat(library: dict[str, dict[str, fp.Fingerprint]]) -> dict[str, bytes]:
    return {f"{name} / {kind}": p.to_bytes() for name, kinds in library.items() for kind, p in kinds.items()}


def as_sets(groups: list[list[str]]) -> set[frozenset[str]]:
    return {frozenset(g) for g in groups}


def test_every_copy_groups_with_its_original_and_no_two_sounds_group(library) -> None:
    assert len(library) == 42 and all(len(kinds) >= 12 for kinds in library.values())
    low = {
        (name, kind): pm.similarity(kinds["source"], p) for name, kinds in library.items() for kind, p in kinds.items()
    }
    assert {k: s for k, s in low.items() if s < pm.NEAR} == {}
    # every pair, not only those group() looks up: a sound that scores NEAR with another must not hide behind hashes
    others = [(a, b, kind) for a in library for b in library if a != b for kind in library[b]]
    assert [x for x in others if pm.linked(library[x[0]]["source"], library[x[1]][x[2]])] == []
    expected = {frozenset(f"{name} / {kind}" for kind in kinds) for name, kinds in library.items()}
    assert as_sets(copies.group(flat(library))) == expected


def test_grouping_does_not_depend_on_order_or_names(library) -> None:
    prints = flat(library)
    names = list(prints)
    random.Random(1).shuffle(names)
    alias = {k: f"{i:04d}" for i, k in enumerate(names)}  # another sort order inside group()
    back = {v: k for k, v in alias.items()}
    shuffled = {alias[k]: prints[k] for k in names}
    assert as_sets([[back[k] for k in g] for g in copies.group(shuffled)]) == as_sets(copies.group(prints))


def test_a_tone_matches_a_peak_at_its_place_but_never_a_tone_that_moves_otherwise() -> None:
    # a codec can push a partial under the 15 dB tone line (a peak now) but does not turn a held tone into a fading one
    times = np.arange(0, 400, fp.TONE_EVERY, dtype=np.uint16)
    line = fp.code(np.array([40.0]))[0]
    held, fading, peak = (fp.Fingerprint(400, times, np.full(len(times), c, np.uint16)) for c in
                          (line + fp.TREND_STEP, line + 2 * fp.TREND_STEP, line))  # fmt: skip
    assert pm.similarity(held, peak) == 1.0 and pm.linked(held, peak)
    assert pm.similarity(held, fading) == 0.0 and not pm.linked(held, fading, 0.01)


def test_two_takes_of_one_gesture_never_group(library) -> None:
    # the same knocks on the same ringing tone, within a few ms and 1 % of pitch: only the noise tells them apart
    takes = [f"gesture take {k}" for k in (1, 2, 3)]
    for a, b in itertools.combinations(takes, 2):
        closest = max(pm.similarity(p, q) for p in library[a].values() for q in library[b].values())
        assert closest < pm.NEAR, (a, b, closest)


@pytest.fixture(scope="module")
def some_pairs(library) -> tuple[dict[str, bytes], dict[tuple[str, str], float]]:
    """A dozen sounds' copies and the similarity of every pair of them, computed once."""
    some = ["tone 440.0 Hz", "tone 466.2 Hz", "white noise 1", "clicks 8 Hz", "clicks irregular", "gesture take 1",
            "gesture take 2", "one-shot noise a", "one-shot click", "bell.oga", "conf-muted.flac", "conf-unmuted.flac"]  # fmt: skip
    prints = {k: v for k, v in flat(library).items() if k.split(" / ")[0] in some}
    return prints, {(a, b): pm.similarity(prints[a], prints[b]) for a, b in itertools.combinations(sorted(prints), 2)}


@pytest.mark.parametrize("threshold", [0.3, pm.NEAR, 0.5])
def test_bucketed_grouping_finds_every_pair_all_pairs_would(some_pairs, threshold: float) -> None:
    prints, scores = some_pairs
    parent = {k: k for k in prints}

    def root(k: str) -> str:
        while parent[k] != k:
            k = parent[k]
        return k

    for (a, b), score in scores.items():
        if score >= threshold:
            parent[root(b)] = root(a)
    every_pair: dict[str, set[str]] = {}
    for k in prints:
        every_pair.setdefault(root(k), set()).add(k)
    assert as_sets(copies.group(prints, threshold)) == {frozenset(s) for s in every_pair.values() if len(s) > 1}


def test_grouping_finds_every_planted_copy_that_scores_near() -> None:
    prints = nearprints.synthetic_prints(3000, seed=1)
    planted = {k[: -len(" copy")] for k in prints if k.endswith(" copy")}
    linked = {k for k in planted if pm.similarity(prints[k], prints[k + " copy"]) >= pm.NEAR}
    assert len(linked) >= 0.9 * len(planted) > 20
    assert as_sets(copies.group(prints)) == {frozenset([k, k + " copy"]) for k in linked}


def test_similarity_is_symmetric_and_bounded(library) -> None:
    prints = list(flat(library).values())[::7]
    for a, b in zip(prints, prints[1:] + prints[:1]):
        s = pm.similarity(a, b)
        assert 0.0 <= s <= 1.0 and s == pm.similarity(b, a)
    assert pm.similarity(prints[0], prints[0]) == 1.0


def test_streaming_equals_the_whole_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sounds = [nearprints.generated_sounds()["gesture take 1"], decode.load_audio(REAL / "complete.oga") / 32768]
    for samples in sounds:
        path = nearprints.write(tmp_path / "s.flac", samples)
        whole = fp.fingerprint(decode.load_audio(path)).to_bytes()
        streamed = fp.Fingerprinter()
        for chunk in decode.stream_audio(path, chunk_seconds=0.37):
            streamed.feed(chunk)
        assert streamed.finish().to_bytes() == whole
        ragged, x, at = fp.Fingerprinter(), decode.load_audio(path), 0
        while at < len(x):  # pieces of any length, down to one sample
            n = int(rng.integers(1, 5000))
            ragged.feed(x[at : at + n])
            at += n
        assert ragged.finish().to_bytes() == whole


def onset_samples(p: fp.Fingerprint) -> np.ndarray:
    onset = p.codes >= fp.ONSET
    return (p.times[onset].astype(np.int64) * fp.FINE + p.codes[onset] - fp.ONSET) * fp.HOP / fp.FINE


def test_onsets_are_placed_to_a_fraction_of_a_frame_whatever_the_trim() -> None:
    clicks = np.array([11025, 23456, 40001, 61234, 70000])
    x = np.zeros(2 * SR, np.float32)
    x[clicks] = 16000.0
    at = onset_samples(fp.fingerprint(x))
    assert len(at) == len(clicks) and np.all(np.abs(at - clicks) < 64)  # 1.5 ms, the rise of a 2.9 ms window
    for trim in (1, 77, 128, 255, 1001):  # the frame grid moves by every fraction of a hop
        moved = onset_samples(fp.fingerprint(x[trim:]))
        assert np.all(np.abs(moved - (at - trim)) <= fp.HOP / fp.FINE)  # one step of 0.36 ms


def test_a_rhythm_played_again_a_few_ms_off_is_not_a_copy() -> None:
    # clicks every 125 ms, then the same clicks late by 0, 3, 6 or 9 ms in turn: within a frame or two, but a
    # copy keeps every onset within 0.1 ms of one offset
    clicks = np.arange(20) * SR // 8 + 2000
    late = clicks + np.round(np.array([0.0, 3.0, 6.0, 9.0])[np.arange(20) % 4] * SR / 1000).astype(int)
    first, again = np.zeros(3 * SR, np.float32), np.zeros(3 * SR, np.float32)
    first[clicks], again[late] = 16000.0, 16000.0
    assert pm.similarity(fp.fingerprint(first), fp.fingerprint(first[1001:])) >= 0.9
    assert pm.similarity(fp.fingerprint(first), fp.fingerprint(again)) < pm.NEAR


def test_stored_form_round_trips() -> None:
    p = fp.fingerprint(nearprints.generated_sounds()["sweep up"] * 32768)
    q = fp.Fingerprint.from_bytes(p.to_bytes())
    assert q.frames == p.frames and np.array_equal(q.times, p.times) and np.array_equal(q.codes, p.codes)
    assert q.to_bytes() == p.to_bytes() and len(p.to_bytes()) == 12 + 4 * len(p.times)
    for bad in (b"", b"RIFF" + bytes(8), p.to_bytes()[:-2], b"AFP1" + p.to_bytes()[4:]):
        with pytest.raises(ValueError):
            fp.Fingerprint.from_bytes(bad)


def test_silence_has_an_empty_fingerprint_that_matches_nothing() -> None:
    rng = np.random.default_rng(0)
    digital = np.zeros(SR, np.float32)
    dither = rng.uniform(-1, 1, SR).astype(np.float32) * 32768 * 10 ** (-100 / 20)  # below SILENCE_DB
    hum = nearprints.tone(50, 1.0) * 32768 * 10 ** (-60 / 20)  # 50 Hz: below LO_BIN, nothing to see
    silent = {name: fp.fingerprint(x) for name, x in [("digital", digital), ("dither", dither), ("hum", hum)]}
    assert all(p.empty and p.frames > 0 for p in silent.values())
    assert pm.similarity(silent["digital"], silent["digital"]) == 0.0
    other = fp.fingerprint(digital[: SR // 2])
    assert copies.group({**{k: p.to_bytes() for k, p in silent.items()}, "half": other.to_bytes()}, 0.0) == []
    room = fp.fingerprint(rng.standard_normal(SR).astype(np.float32) * 32768 * 10 ** (-50 / 20))  # quiet, not silent
    assert not room.empty and pm.similarity(room, room) == 1.0
    assert fp.fingerprint(np.zeros(0, np.float32)).empty


def test_a_long_file_is_fingerprinted_up_to_max_seconds_only() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-16000, 16000, int(fp.MAX_SECONDS * SR) + 5 * SR).astype(np.float32)
    long = fp.fingerprint(x)
    assert long.to_bytes() == fp.fingerprint(x[: fp.MAX_SAMPLES]).to_bytes()
    assert long.frames == fp.MAX_SAMPLES // fp.HOP + 1
    # broadband noise is the densest: two peaks a frame at most, plus the odd onset
    assert len(long.to_bytes()) / fp.MAX_SECONDS < 4 * 2.1 * fp.FRAMES_PER_SECOND


def test_other_rates_and_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="44100"):
        fp.fingerprint(np.zeros(100, np.float32), rate=48000)
    with pytest.raises(ValueError, match="mono"):
        fp.fingerprint(np.zeros((2, 100), np.float32))


def test_measure_reports_copies_against_different_sounds(tmp_path: Path) -> None:
    sounds = {k: v for k, v in nearprints.generated_sounds().items() if k in ("tone 440.0 Hz", "white noise 1")}
    parts = {"tone 440.0 Hz": "tones", "white noise 1": "noises"}
    report = nearprints.measure(sounds, tmp_path, parts).as_dict()
    assert list(report)[:4] == ["sounds", "copies", "different", "suggested"] and report["sounds"] == 2
    assert set(report["copies"]) == set(nearprints.KINDS)
    assert report["copies"]["flac"] == 1.0 and min(report["copies"].values()) > report["different"]
    assert min(report["copies"].values()) > report["suggested"] > report["different"]
    assert report["ms_per_file"] > 0 and 0 < report["bytes_per_second"] < 4 * 2.1 * fp.FRAMES_PER_SECOND
    assert list(report["parts"]) == ["tones", "noises"] and report["parts"]["tones"]["sounds"] == 1
    lows = [min(part["copies"].values()) for part in report["parts"].values()]
    assert min(lows) == min(report["copies"].values())
    assert max(part["different"] for part in report["parts"].values()) == report["different"]
