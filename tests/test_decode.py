"""The audio front end: exact PCM, down-mixing, resampling, every encodable format, windows, memory, bad files."""

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from tests import audiogen as ag

from audiofind.audio.decode import (
    SAMPLE_RATE,
    AudioInfo,
    iter_windows,
    load_audio,
    load_crop,
    pad_or_crop,
    probe,
    stream_audio,
    window_bounds,
)
from audiofind.errors import DecodeError, UsageError


def random_int16(channels: int, n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).integers(-32768, 32768, size=(channels, n)).astype(np.int16)
    x[:, :2] = [-32768, 32767]  # both extremes, which a wrong scale would clip or overflow
    return x


def peak_hz(y: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    return float(np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(np.abs(np.fft.rfft(y)))])


# -- exact values -------------------------------------------------------------------------------------------


def test_int16_wav_comes_back_bit_exact(tmp_path: Path) -> None:
    x = random_int16(1, 30000)
    y = load_audio(ag.write_int16_wav(tmp_path / "a.wav", x))
    assert y.dtype == np.float32 and y.shape == (30000,)
    np.testing.assert_array_equal(y, x[0].astype(np.float32))


def test_stereo_is_the_exact_mean_of_both_channels(tmp_path: Path) -> None:
    x = random_int16(2, 30000, seed=1)
    y = load_audio(ag.write_int16_wav(tmp_path / "a.wav", x))
    np.testing.assert_array_equal(y, (x[0].astype(np.float32) + x[1].astype(np.float32)) / 2)


def test_six_channels_are_averaged(tmp_path: Path) -> None:
    x = random_int16(6, 20000, seed=2)
    y = load_audio(ag.write_int16_wav(tmp_path / "a.wav", x))
    np.testing.assert_allclose(y, x.astype(np.float64).mean(axis=0), atol=0.01)
    assert probe(tmp_path / "a.wav").channels == 6


def test_six_channel_flac_with_a_named_layout(tmp_path: Path) -> None:
    x = ag.noise(0.5, channels=6, seed=3)
    y = load_audio(ag.write_audio(tmp_path / "a.flac", x))
    expected = np.round(x * 32767).astype(np.float64).mean(axis=0)  # flac stores s16
    np.testing.assert_allclose(y, expected, atol=1.0)


@pytest.mark.parametrize("codec", ["pcm_f32le", "pcm_f64le", "pcm_s24le"])
def test_other_sample_formats_are_scaled_to_the_int16_range(tmp_path: Path, codec: str) -> None:
    y = load_audio(ag.write_audio(tmp_path / "a.wav", ag.sine(441, 1.0, amp=0.5), codec=codec))
    assert abs(np.abs(y).max() - 16384) < 1
    assert probe(tmp_path / "a.wav").codec == codec


@pytest.mark.parametrize("sr", [8000, 22050, 48000])
def test_resampling_keeps_length_and_pitch(tmp_path: Path, sr: int) -> None:
    x = (ag.sine(1234, 1.5, sr=sr, amp=0.5) * 32767).astype(np.int16)
    y = load_audio(ag.write_int16_wav(tmp_path / "a.wav", x, sr=sr))
    assert abs(len(y) - round(x.shape[1] * SAMPLE_RATE / sr)) <= 1
    assert abs(peak_hz(y) - 1234) < 2
    rms = np.sqrt(np.mean(y[len(y) // 4 : -len(y) // 4] ** 2))  # the middle, away from the edges' ringing
    assert abs(rms - 0.5 * 32767 / np.sqrt(2)) < 200  # int16 range, not [-1, 1]


@pytest.mark.parametrize("ext", ag.ENCODABLE_EXTS)
def test_every_encodable_format_decodes(tmp_path: Path, ext: str) -> None:
    path = ag.write_audio(tmp_path / f"a.{ext}", ag.sine(440, 1.0, channels=2))
    y = load_audio(path)
    assert 0.95 < len(y) / SAMPLE_RATE < 1.1  # codecs add priming and frame padding
    assert abs(peak_hz(y) - 440) < 3
    assert 14000 < np.abs(y).max() < 19000
    info = probe(path)
    assert info.channels == 2 and info.sample_rate in (44100, 48000) and info.codec
    assert 0.95 < info.duration < 1.1


def test_probe_reads_metadata_without_resampling(tmp_path: Path) -> None:
    x = (ag.sine(300, 1.5, sr=22050, channels=2) * 32767).astype(np.int16)
    assert probe(ag.write_int16_wav(tmp_path / "a.wav", x, sr=22050)) == AudioInfo(
        1.5, 22050, 2, "pcm_s16le", "wav", 16
    )
    info = probe(ag.write_audio(tmp_path / "a.mp3", ag.chirp(200, 2000, 2.0)))
    assert info.codec == "mp3" and info.channels == 1 and abs(info.duration - 2.0) < 0.05


@pytest.mark.parametrize(
    ("name", "options", "container", "codec", "bits"),
    [
        ("a.wav", {"codec": "pcm_s24le"}, "wav", "pcm_s24le", 24),
        ("a.wav", {"codec": "pcm_f32le"}, "wav", "pcm_f32le", 32),
        ("a.wav", {"codec": "pcm_u8"}, "wav", "pcm_u8", 8),
        ("a.aiff", {"codec": "pcm_s24be"}, "aiff", "pcm_s24be", 24),
        ("a.flac", {}, "flac", "flac", 16),
        ("a.flac", {"sample_fmt": "s32"}, "flac", "flac", 24),  # FFmpeg's FLAC encoder writes 24 bits from s32
        ("a.mka", {}, "matroska", "flac", 16),
        ("a.m4a", {"codec": "alac", "sample_fmt": "s32p"}, "m4a", "alac", 24),
        ("a.m4a", {}, "m4a", "aac", None),
        ("a.mp3", {}, "mp3", "mp3", None),
        ("a.ogg", {}, "ogg", "vorbis", None),
    ],
)
def test_probe_reads_container_codec_and_bit_depth(tmp_path: Path, name: str, options: dict, container: str, codec: str,
                                                   bits: int | None) -> None:  # fmt: skip
    info = probe(ag.write_audio(tmp_path / name, ag.chirp(200, 2000, 0.5, channels=2), **options), count=False)
    assert (info.container, info.codec, info.bits, info.channels) == (container, codec, bits, 2)


# -- streaming and windows ----------------------------------------------------------------------------------


def test_stream_audio_gives_full_chunks_that_add_up_to_load_audio(tmp_path: Path) -> None:
    path = ag.write_int16_wav(tmp_path / "a.wav", random_int16(2, 3 * SAMPLE_RATE + 123))
    chunks = list(stream_audio(path, chunk_seconds=1.0))
    assert [len(c) for c in chunks] == [SAMPLE_RATE] * 3 + [123]
    np.testing.assert_array_equal(np.concatenate(chunks), load_audio(path))


def test_load_audio_max_seconds(tmp_path: Path) -> None:
    path = ag.write_audio(tmp_path / "a.flac", ag.noise(2.0))
    assert len(load_audio(path, max_seconds=0.5)) == SAMPLE_RATE // 2
    np.testing.assert_array_equal(load_audio(path, max_seconds=0.5), load_audio(path)[: SAMPLE_RATE // 2])


@pytest.mark.parametrize(
    "seconds, expected",
    [
        (3, [(0, 3)]),
        (10, [(0, 10)]),
        (12, [(0, 10), (2, 12)]),
        (20, [(0, 10), (5, 15), (10, 20)]),
        (23, [(0, 10), (5, 15), (10, 20), (13, 23)]),
    ],
)
def test_iter_windows(tmp_path: Path, seconds: int, expected: list[tuple[int, int]]) -> None:
    path = ag.write_int16_wav(tmp_path / "a.wav", random_int16(1, seconds * SAMPLE_RATE, seed=seconds))
    windows = list(iter_windows(path))
    assert [(w.start, w.end) for w in windows] == expected
    y = load_audio(path)
    assert [(s / SAMPLE_RATE, e / SAMPLE_RATE) for s, e in window_bounds(len(y), 10.0, 5.0)] == expected
    for w in windows:
        np.testing.assert_array_equal(w.samples, y[round(w.start * SAMPLE_RATE) : round(w.end * SAMPLE_RATE)])


@pytest.mark.parametrize("window, hop", [(1.0, 0.25), (0.7, 1.1), (2.0, 2.0), (5.0, 1.0)])
def test_iter_windows_follows_window_bounds(tmp_path: Path, window: float, hop: float) -> None:
    n = int(3.3 * SAMPLE_RATE)
    path = ag.write_int16_wav(tmp_path / "a.wav", random_int16(1, n))
    y = load_audio(path)
    windows = list(iter_windows(path, window, hop))
    got = [(round(w.start * SAMPLE_RATE), round(w.end * SAMPLE_RATE), w.samples) for w in windows]
    assert [(s, e) for s, e, _ in got] == window_bounds(n, window, hop)
    for s, e, samples in got:
        np.testing.assert_array_equal(samples, y[s:e])


def test_window_bounds_rule() -> None:
    w = 10 * SAMPLE_RATE
    assert window_bounds(0, 10.0, 5.0) == []
    assert window_bounds(100, 10.0, 5.0) == [(0, 100)]
    assert window_bounds(w, 10.0, 5.0) == [(0, w)]
    assert window_bounds(w + 1, 10.0, 5.0) == [(0, w), (1, w + 1)]
    assert window_bounds(2 * w, 10.0, 10.0) == [(0, w), (w, 2 * w)]  # ends exactly at the end: no extra window
    with pytest.raises(UsageError):
        window_bounds(w, 0.0, 5.0)
    with pytest.raises(UsageError):
        window_bounds(w, 10.0, -1.0)


def test_streaming_memory_does_not_grow_with_file_length(tmp_path: Path) -> None:
    # 5 minutes: 53 MB once decoded, 1.4 MB on disk (an 8 kHz tone, so the resampler is exercised too)
    path = ag.write_audio(tmp_path / "long.flac", ag.sine(440, 300, sr=8000), sr=8000)
    decoded_bytes = 300 * SAMPLE_RATE * 4

    tracemalloc.start()
    try:
        n = sum(len(c) for c in stream_audio(path))
        _, stream_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        windows = sum(1 for _ in iter_windows(path))
        _, windows_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 300 * SAMPLE_RATE and windows == 59
    assert stream_peak < decoded_bytes / 10, f"stream_audio peaked at {stream_peak / 1e6:.1f} MB"
    assert windows_peak < decoded_bytes / 3, f"iter_windows peaked at {windows_peak / 1e6:.1f} MB"


def test_a_crop_is_decoded_only_up_to_its_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audiofind.audio import decode

    path = ag.write_int16_wav(tmp_path / "long.wav", random_int16(2, 40 * SAMPLE_RATE + 123))
    short = ag.write_audio(tmp_path / "short.flac", ag.sine(440, 0.5))
    whole = load_audio(path)
    decoded: list[int] = []
    plain = decode.decoded_pieces

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        for x in plain(*args, **kwargs):
            decoded.append(len(x))
            yield x

    monkeypatch.setattr(decode, "decoded_pieces", counting)
    n = 5 * SAMPLE_RATE
    for seed in range(6):
        decoded.clear()
        crop = load_crop(path, n, np.random.default_rng(seed))
        assert np.array_equal(crop, pad_or_crop(whole, n, np.random.default_rng(seed)))  # the same crop, bitwise
        start = int(np.random.default_rng(seed).integers(0, len(whole) - n + 1))
        assert sum(decoded) - max(decoded) < start + n  # it stopped at the piece holding the crop's end
    assert np.array_equal(load_crop(short, n, np.random.default_rng(0)), pad_or_crop(load_audio(short), n))
    # A container that states twice its real length (as an MP3's estimate can): a crop of real audio all the same.
    monkeypatch.setattr(decode, "probe", lambda p: AudioInfo(2 * len(whole) / SAMPLE_RATE, SAMPLE_RATE, 2, "pcm"))
    crop = load_crop(path, n, np.random.default_rng(3))
    again = np.random.default_rng(3)
    assert int(again.integers(0, 2 * len(whole) - n + 1)) > len(whole)  # the stated length put the crop past the end
    assert np.array_equal(crop, pad_or_crop(whole, n, again))  # so it was taken from the audio really there


def test_pad_or_crop() -> None:
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(pad_or_crop(x, 4), x[:4])
    np.testing.assert_array_equal(pad_or_crop(x, 13), np.r_[x, 0, 0, 0])
    np.testing.assert_array_equal(pad_or_crop(x, 10), x)
    starts = set()
    for seed in range(20):
        y = pad_or_crop(x, 4, np.random.default_rng(seed))
        assert len(y) == 4 and np.array_equal(np.diff(y), np.ones(3))  # a contiguous slice
        starts.add(int(y[0]))
    assert len(starts) > 3 and starts <= set(range(7))
    again = [pad_or_crop(x, 4, np.random.default_rng(5)) for _ in range(2)]
    np.testing.assert_array_equal(again[0], again[1])  # seeded, so reproducible
    assert pad_or_crop(np.ones((2, 5)), 8).shape == (2, 8)


# -- bad files ----------------------------------------------------------------------------------------------


def _bad(tmp_path: Path, kind: str) -> Path:
    good = tmp_path / "good.flac"
    if kind in ("truncated", "truncated_mp3"):
        ag.write_audio(good.with_suffix(".mp3") if kind == "truncated_mp3" else good, ag.sine(440, 3.0))
    makers = {
        "missing": lambda p: p,
        "directory": lambda p: (p.mkdir(), p)[1],
        "empty": ag.write_empty,
        "not_audio": ag.write_not_audio,
        "no_audio_stream": ag.write_no_audio_stream,
        "unsupported_codec": ag.write_unsupported_codec,
        "truncated": lambda p: ag.write_truncated(p, good),
        "truncated_mp3": lambda p: ag.write_truncated(p, good.with_suffix(".mp3")),
        "corrupt": lambda p: ag.write_corrupt(p, ag.write_audio(tmp_path / "g.mp3", ag.sine(440, 3.0)), 0, 2000),
    }
    exts = {"no_audio_stream": ".mkv", "truncated": ".flac", "truncated_mp3": ".mp3", "corrupt": ".mp3"}
    ext = exts.get(kind, ".wav")
    return makers[kind](tmp_path / f"bad{ext}")


BAD_FILES = {  # kind -> words the one-line reason must contain
    "missing": "not found",
    "directory": "directory",
    "empty": "empty",
    "not_audio": "not an audio file",
    "no_audio_stream": "no audio stream",
    "unsupported_codec": "unsupported codec",
    "truncated": "truncated: decoded 1.1 s of 3.0 s",
    "truncated_mp3": "truncated: decoded 1.5 s of 3.0 s",
    "corrupt": "corrupt data",
}
FOUND_BY_PROBE = {"missing", "directory", "empty", "not_audio", "no_audio_stream", "unsupported_codec"}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_files_raise_one_line_decode_errors(tmp_path: Path, kind: str, capfd: pytest.CaptureFixture) -> None:
    path = _bad(tmp_path, kind)
    calls = [load_audio, lambda p: list(stream_audio(p)), lambda p: list(iter_windows(p))]
    if kind in FOUND_BY_PROBE:  # probe reads headers only, so it cannot see damage further in
        calls.append(probe)
    for call in calls:
        with pytest.raises(DecodeError) as e:
            call(path)
        assert BAD_FILES[kind] in e.value.reason
        assert e.value.path == path and str(e.value) == f"{path}: {e.value.reason}"
        assert "\n" not in str(e.value) and len(e.value.reason) < 120
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # FFmpeg's own logging stays quiet


def test_truncation_shows_only_at_the_end_of_a_stream(tmp_path: Path) -> None:
    good = ag.write_audio(tmp_path / "a.flac", ag.noise(12.0))
    bad = ag.write_truncated(tmp_path / "b.flac", good, 0.6)
    got = []
    with pytest.raises(DecodeError, match="truncated"):
        for w in iter_windows(bad, window=2.0, hop=2.0):
            got.append(w)
    assert got  # windows came before the verdict: callers must drop them
