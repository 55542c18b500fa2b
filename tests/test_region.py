"""Regions out: a span of a file as a WAV in the file's own format (audio.region), `audiofind export` and
`search --export`."""

import json
import os
import struct
import wave
from pathlib import Path

import audiogen as ag
import av
import numpy as np
import pytest
from modelkit import register_tiny
from typer.testing import CliRunner

from audiofind.audio import region
from audiofind.cli import app
from audiofind.errors import DecodeError, UsageError
from wavkit import chunks, decoded, samples

runner = CliRunner()
SIGNAL = ag.chirp(200, 3000, 5.0, channels=2)  # 5 s: a region from 3 s on makes the decoder seek


@pytest.mark.parametrize(
    ("name", "options", "kind", "tag"),
    [
        ("s16.wav", {}, "s16", 1),
        ("s24.wav", {"codec": "pcm_s24le"}, "s24", 1),
        ("s32.wav", {"codec": "pcm_s32le"}, "s32", 1),
        ("f32.wav", {"codec": "pcm_f32le"}, "f32", 3),
        ("f64.wav", {"codec": "pcm_f64le"}, "f64", 3),
        ("u8.wav", {"codec": "pcm_u8"}, "u8", 1),
        ("s24.flac", {"sample_fmt": "s32"}, "s24", 1),
        ("s24.aiff", {"codec": "pcm_s24be"}, "s24", 1),
        ("alac.m4a", {"codec": "alac", "sample_fmt": "s32p"}, "s24", 1),
        ("s16.mka", {}, "s16", 1),  # millisecond timestamps: read from the start, still exact
        ("lossy.mp3", {}, "f32", 3),
        ("lossy.m4a", {}, "f32", 3),
        ("lossy.ogg", {}, "f32", 3),
    ],
)
def test_a_region_is_exactly_that_span_in_the_files_own_format(
    tmp_path: Path, name: str, options: dict, kind: str, tag: int
) -> None:
    source = ag.write_audio(tmp_path / name, SIGNAL, sr=48000 if "s24" in name else 44100, **options)
    cut = region.plan(source, 3.1, 3.7)
    rate = 48000 if "s24" in name else 44100
    data = b"".join(region.wav_bytes(cut))
    assert len(data) == cut.size
    fmt, got = samples(data)
    assert (cut.kind, fmt["tag"], fmt["rate"], fmt["channels"]) == (kind, tag, rate, 2)
    assert fmt["bits"] == region.KINDS[kind][0] and len(got) == cut.frames == round(3.7 * rate) - round(3.1 * rate)
    want = decoded(source, kind)[cut.first : cut.first + cut.frames]
    fade = cut.fade_in
    assert fade == cut.fade_out == round(region.FADE_SECONDS * rate)
    assert np.array_equal(got[fade:-fade], want[fade:-fade])  # bit for bit between the fades
    # the fades: from almost nothing at the cut up to the signal, never louder than it
    centre = 128 if kind == "u8" else 0
    loud = np.abs(want.astype(float) - centre).max()
    assert (
        np.abs(got[0].astype(float) - centre).max() < 0.01 * loud
        and np.abs(got[-1].astype(float) - centre).max() < 0.01 * loud
    )
    assert np.all(np.abs(got[:fade].astype(float) - centre) <= np.abs(want[:fade].astype(float) - centre) + 1)


def test_no_fade_where_the_region_meets_the_files_own_start_or_end(tmp_path: Path) -> None:
    x = (ag.square(100, 1.0, channels=1) * 20000).astype(np.int16)
    source = ag.write_int16_wav(tmp_path / "square.wav", x)
    cut = region.plan(source, 0, 1.0)
    assert (cut.fade_in, cut.fade_out, cut.first, cut.frames) == (0, 0, 0, 44100)
    _, got = samples(b"".join(region.wav_bytes(cut)))
    assert np.array_equal(got[:, 0], x[0])  # the whole file, untouched
    cut = region.plan(source, 0.5, 1.02)  # an end a hair past the declared length is the end of the file
    assert cut.fade_in > 0 and cut.fade_out == 0 and cut.first + cut.frames == 44100


def test_the_bext_chunk_says_where_it_came_from(tmp_path: Path) -> None:
    source = ag.write_audio(tmp_path / "rain on a tin roof.wav", SIGNAL, codec="pcm_s24le")
    cut = region.plan(source, 1.25, 2.5)
    out = region.write(cut, tmp_path / "out" / region.default_name(source, cut.start, cut.end)).path
    assert out.name == "rain on a tin roof 1.250s-2.500s.wav"
    bext = chunks(out.read_bytes())[b"bext"]
    description = bext[:256].rstrip(b"\0").decode()
    assert str(source) in description and "1.250 s to 2.500 s" in description
    low, high, version = struct.unpack("<IIH", bext[338:348])
    assert (low | high << 32, version) == (55125, 1)  # 1.25 s at 44.1 kHz
    assert (
        b"audiofind" in bext[256:288] and str(source).encode() in bext[602:]
    )  # originator; the full path in the history
    with av.open(str(out)) as c:  # FFmpeg reads it back as BWF, at the source's depth
        assert c.metadata["time_reference"] == "55125" and c.streams.audio[0].codec_context.codec.name == "pcm_s24le"
    # a region of a region counts from the first source's start
    again = region.plan(out, 0.5, 1.0)
    assert again.time_reference == 55125 + 22050
    # a path too long for the 256 bytes keeps its end (the file's name) and the times
    deep = tmp_path / ("a" * 120) / ("b" * 120) / "name.wav"
    deep.parent.mkdir(parents=True)
    long_cut = region.plan(ag.write_audio(deep, SIGNAL), 1, 2)
    text = chunks(b"".join(region.wav_bytes(long_cut)))[b"bext"][:256].rstrip(b"\0").decode()
    assert text.startswith("...") and text.endswith("b/name.wav from 1.000 s to 2.000 s")


def test_a_seek_that_lands_past_the_region_reads_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = ag.write_audio(tmp_path / "a.wav", SIGNAL)
    real_open = av.open

    class Overshooting:  # a container whose seeks land a second later than asked, as some demuxers' do
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.real = real_open(*args, **kwargs)

        def __enter__(self) -> "Overshooting":
            return self

        def __exit__(self, *exc: object) -> None:
            self.real.close()

        def __getattr__(self, name: str) -> object:
            return getattr(self.real, name)

        def seek(self, offset: int, stream: av.audio.stream.AudioStream, **kwargs: object) -> None:
            self.real.seek(offset + int(1 / stream.time_base), stream=stream, **kwargs)

    monkeypatch.setattr(region.av, "open", Overshooting)
    cut = region.plan(source, 3.0, 3.5)
    _, got = samples(b"".join(region.wav_bytes(cut)))
    want = decoded(source, cut.kind)[cut.first : cut.first + cut.frames]
    assert np.array_equal(got[cut.fade_in : -cut.fade_out], want[cut.fade_in : -cut.fade_out])


def test_an_odd_number_of_sample_bytes_is_padded(tmp_path: Path) -> None:
    source = ag.write_audio(tmp_path / "a.wav", ag.sine(300, 1.0), codec="pcm_u8")
    cut = region.plan(source, 0.1, 0.3 + 1 / 44100)
    assert cut.frames % 2 and cut.frame_bytes == 1
    data = b"".join(region.wav_bytes(cut))
    assert len(data) == cut.size and len(data) % 2 == 0
    assert len(chunks(data)[b"data"]) == cut.frames  # the pad byte follows the chunk, outside it


def test_int_wavs_open_in_the_standard_library(tmp_path: Path) -> None:
    source = ag.write_audio(tmp_path / "a.flac", SIGNAL, sample_fmt="s32")
    out = region.write(region.plan(source, 1, 1.5), tmp_path / "a.wav").path
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (44100, 2, 3, 22050)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (-1, 2, "start must be 0 s or later"),
        (2, 2, "end must be after start"),
        (3, 1, "end must be after start"),
        (1, 9, "past the end of the file (5.000 s)"),
        (0, region.MAX_SECONDS + 1, f"at most {region.MAX_SECONDS:g} s"),
        (float("nan"), 1, "numbers of seconds"),
    ],
)
def test_bad_spans_are_one_sentence(tmp_path: Path, start: float, end: float, message: str) -> None:
    source = ag.write_audio(tmp_path / "a.wav", SIGNAL)
    with pytest.raises(UsageError) as e:
        region.plan(source, start, end)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_regions_never_touch_their_source(tmp_path: Path) -> None:
    source = ag.write_audio(tmp_path / "a.wav", SIGNAL)
    before = (source.read_bytes(), source.stat().st_mtime_ns)
    cut = region.plan(source, 1, 2)
    with pytest.raises(UsageError, match="source file itself"):
        region.write(cut, source)
    region.write(cut, tmp_path / "b.wav")
    assert (source.read_bytes(), source.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "b.wav"]  # no temporary file left behind
    with pytest.raises(DecodeError, match="file not found"):
        region.plan(tmp_path / "gone.wav", 0, 1)


def test_long_files_stream_in_blocks(tmp_path: Path) -> None:
    source = ag.write_audio(tmp_path / "long.wav", ag.noise(30.0, channels=2))
    cut = region.plan(source, 2.0, 28.0)
    pieces = list(region.wav_bytes(cut))
    assert max(len(p) for p in pieces[1:]) <= region.BLOCK_FRAMES * cut.frame_bytes + 4096 * cut.frame_bytes
    assert sum(map(len, pieces)) == cut.size


def test_unused_names_are_numbered(tmp_path: Path) -> None:
    assert region.unused(tmp_path / "a 1.000s-2.000s.wav") == tmp_path / "a 1.000s-2.000s.wav"
    (tmp_path / "a 1.000s-2.000s.wav").touch()
    (tmp_path / "a 1.000s-2.000s (2).wav").touch()
    assert region.unused(tmp_path / "a 1.000s-2.000s.wav") == tmp_path / "a 1.000s-2.000s (3).wav"
    assert region.default_name("/x/door.flac", 415, 425.5) == "door 6m55.000s-7m05.500s.wav"


# ---- the command line


def test_export_writes_the_region(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = ag.write_audio(tmp_path / "take.wav", SIGNAL, codec="pcm_s24le", sr=48000)
    out = tmp_path / "cut.wav"
    result = runner.invoke(app, ["export", str(source), "--start", "0:01.5", "--end", "2.5", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts == {"path": str(out), "source": str(source), "start": 1.5, "end": 2.5, "frames": 48000,
                     "sample_rate": 48000, "bits": 24, "channels": 2, "float": False, "silent_seconds": 0.0}  # fmt: skip
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (48000, 2, 3, 48000)
    monkeypatch.chdir(tmp_path)  # without -o: a name that says source and time, here, never overwriting
    for expected in ("take 1.500s-2.500s.wav", "take 1.500s-2.500s (2).wav"):
        result = runner.invoke(app, ["export", str(source), "--start", "1.5", "--end", "2.5"])
        assert result.exit_code == 0 and result.stdout.strip() == str(tmp_path / expected)


def test_export_never_replaces_what_is_not_a_file_and_says_why_it_cannot_write(tmp_path: Path) -> None:
    source = ag.write_audio(tmp_path / "take.wav", SIGNAL)
    export = lambda out: runner.invoke(app, ["export", str(source), "--start", "1", "--end", "2", "-o", str(out)])
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # as /dev/null would be: not a regular file, so never renamed over
    result = export(fifo)
    assert result.exit_code == 2 and "is not a regular file" in result.stderr and len(result.stderr.splitlines()) == 1
    assert fifo.is_fifo()
    (tmp_path / "a file").write_text("")
    result = export(tmp_path / "a file" / "x.wav")  # a folder that cannot be made: one line, no traceback
    assert (
        result.exit_code == 1 and result.stderr.startswith("error: Cannot write") and "Traceback" not in result.output
    )
    assert len(result.stderr.splitlines()) == 1
    folder = tmp_path / "regions"
    folder.mkdir()
    result = export(folder)  # a folder: the region's own name inside it
    assert result.exit_code == 0 and result.stdout.strip() == str(folder / "take 1.000s-2.000s.wav")
    mask = os.umask(0o022)
    try:
        export(tmp_path / "shared.wav")
    finally:
        os.umask(mask)
    assert (tmp_path / "shared.wav").stat().st_mode & 0o777 == 0o644  # readable by the team, as the umask says


def test_a_region_past_a_truncated_files_audio_is_refused_or_said(tmp_path: Path) -> None:
    whole = ag.write_int16_wav(tmp_path / "whole.wav", (ag.sine(440, 5.0)[0] * 20000).astype(np.int16))
    cut_short = ag.write_truncated(tmp_path / "cut short.wav", whole, fraction=0.3)  # 1.5 s; the header says 5 s
    export = lambda a, b: runner.invoke(app, ["export", str(cut_short), "--start", a, "--end", b, "-o",
                                              str(tmp_path / f"{a}-{b}.wav"), "--json"])  # fmt: skip
    result = export("2", "5")  # nothing of it is there
    assert result.exit_code == 2 and "holds no audio from 2 s on" in result.stderr
    assert not (tmp_path / "2-5.wav").exists() and not list(tmp_path.glob(".region-*"))
    result = export("1", "2")  # half of it is there: written, the silence said
    assert result.exit_code == 0 and "the last 0.50 s of the region are silence" in " ".join(result.stderr.split())
    assert json.loads(result.stdout)["silent_seconds"] == pytest.approx(0.5, abs=0.01)


def test_times_are_seconds_or_minutes_and_seconds() -> None:
    from audiofind.cli.export import seconds

    assert [seconds(t, "--start") for t in ("415.5", "6:55.5", "1:02:03", " 0:07 ")] == [415.5, 415.5, 3723.0, 7.0]
    for bad in ("", "1:2:3:4", "-1", "1:60", "a:10"):
        with pytest.raises(UsageError, match="--start takes seconds"):
            seconds(bad, "--start")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--start", "1", "--end", "99"], 2, "past the end of the file"),
        (["--start", "soon", "--end", "2"], 2, "--start takes seconds"),
        (["--start", "1:75", "--end", "2"], 2, "--start takes seconds"),
        (["--start", "2", "--end", "1"], 2, "end must be after start"),
    ],
)
def test_export_errors_are_one_line(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    source = ag.write_audio(tmp_path / "take.wav", SIGNAL)
    result = runner.invoke(app, ["export", str(source), *args, "-o", str(tmp_path / "out.wav")])
    assert result.exit_code == code and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out.wav").exists()
    missing = runner.invoke(app, ["export", str(tmp_path / "none.wav"), "--start", "0", "--end", "1"])
    assert missing.exit_code == 1 and "file not found" in missing.stderr


def test_search_export_writes_each_matching_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register_tiny()
    monkeypatch.chdir(tmp_path)  # --export given relative, as people type it; "export" comes back absolute
    lib = tmp_path / "Sounds"
    lib.mkdir()
    ag.write_audio(lib / "long rain.flac", ag.noise(24.0, channels=2, seed=3), sample_fmt="s32")
    ag.write_audio(lib / "short tone.wav", ag.sine(440, 1.5))
    db = tmp_path / "index.db"
    assert runner.invoke(app, ["index", str(lib), "--db", str(db), "-w", "tiny"]).exit_code == 0
    out = tmp_path / "regions"
    result = runner.invoke(app, ["search", "rain", "--db", str(db), "-w", "tiny", "--export", "regions", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert len(found) == 2 and "Wrote 2 of 2 segments" in result.stderr
    for hit in found:
        written = Path(hit["export"])
        assert written.parent == out and written.name == region.default_name(hit["path"], hit["start"], hit["end"])
        with wave.open(str(written)) as w:
            assert w.getnframes() == round(hit["end"] * 44100) - round(hit["start"] * 44100)
            assert (w.getnchannels(), 8 * w.getsampwidth()) == (hit["channels"], hit["bits"])
    assert any(h["end"] - h["start"] < h["duration"] for h in found)  # the long file gave a segment, not all of it
    # a file gone since indexing is a warning and exit 1; the others are still written
    (lib / "short tone.wav").unlink()
    result = runner.invoke(app, ["search", "rain", "--db", str(db), "-w", "tiny", "--export", str(out), "--paths"])
    assert result.exit_code == 1 and "not exported" in result.stderr and "Wrote 1 of 2" in result.stderr
    assert len(os.listdir(out)) == 3
