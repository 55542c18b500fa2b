"""Tags of every format under one set of names: ID3 in WAV and AIFF, RIFF INFO, BWF bext, Vorbis comments, MP4
atoms; multi-valued tags kept apart, searchable by any value; corrupt files give what they can, never an error."""

import io
import struct
from pathlib import Path

import audiogen
import mutagen
import numpy as np
import pytest
from mutagen.aiff import AIFF
from mutagen.asf import ASF, ASFByteArrayAttribute, ASFDWordAttribute
from mutagen.id3 import APIC, COMM, TCON, TDRC, TIT2, TPE1, TXXX
from mutagen.mp4 import MP4, MP4Cover, MP4FreeForm
from mutagen.wave import WAVE

from audiofind.audio import tags as tags_module
from audiofind.audio.tags import MAX_CHUNK, read_tags
from audiofind.store import AudioRow, FileRow, Filters, ModelBinding
from audiofind.store.sqlite.store import SqliteStore


def chunk(cid: bytes, body: bytes, size: int | None = None) -> bytes:
    """A little-endian RIFF chunk, padded to an even length; size overrides the true one (a lying chunk)."""
    return cid + struct.pack("<I", len(body) if size is None else size) + body + b"\0" * (len(body) & 1)


def info(*entries: tuple[bytes, bytes]) -> bytes:
    return chunk(b"LIST", b"INFO" + b"".join(chunk(cid, text + b"\0") for cid, text in entries))


def bext(description: bytes, originator: bytes) -> bytes:
    # Description, Originator, OriginatorReference, OriginationDate and Time, TimeReference, Version, UMID, ...
    body = description.ljust(256, b"\0") + originator.ljust(32, b"\0") + bytes(32) + b"2024-01-0210:11:12"
    return chunk(b"bext", body + bytes(8) + struct.pack("<H", 2) + bytes(64 + 10 + 180) + b"A=PCM,F=44100\r\n")


FMT = chunk(b"fmt ", struct.pack("<HHIIHH", 1, 1, 44100, 88200, 2, 16))
DATA = chunk(b"data", bytes(882))
INFO = info(
    (b"INAM", b"Door creak"),
    (b"IART", "Björk".encode("latin-1")),
    (b"ICMT", b"Recorded at night"),
    (b"IGNR", b"Foley"),
    (b"ICRD", b"2024-01-02"),
    (b"IKEY", b"door; creak;wood"),
    (b"IENG", b"  "),
    (b"ISFT", b"Reaper"),
    (b"ZZZZ", b"unknown"),
)
INFO_TAGS = {
    "title": ["Door creak"],
    "artist": ["Björk"],
    "comment": ["Recorded at night"],
    "genre": ["Foley"],
    "date": ["2024-01-02"],
    "keywords": ["door", "creak", "wood"],
    "encoder": ["Reaper"],
}
BEXT_TAGS = {"description": ["Old oak door, slow open"], "originator": ["Zoom F8"]}


def riff(*chunks: bytes, form: bytes = b"RIFF", size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return form + struct.pack("<I", len(body) if size is None else size) + body


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_riff_info_and_bext_by_hand(tmp_path: Path) -> None:
    wav = write(tmp_path / "door.wav", riff(FMT, bext(b"Old oak door, slow open", b"Zoom F8"), DATA, INFO))
    assert read_tags(wav) == INFO_TAGS | BEXT_TAGS  # INFO after the data chunk, as most recorders write it


def test_rf64_finds_chunks_after_a_data_chunk_sized_in_ds64(tmp_path: Path) -> None:
    ds64 = chunk(b"ds64", struct.pack("<QQQI", 0, len(DATA) - 8, 441, 0))
    data = b"data" + struct.pack("<I", 0xFFFFFFFF) + DATA[8:]
    wav = write(tmp_path / "long.wav", riff(ds64, FMT, data, INFO, form=b"RF64", size=0xFFFFFFFF))
    assert read_tags(wav) == INFO_TAGS


def _id3_frames() -> list:
    return [
        TIT2(encoding=3, text=["Gulls"]),
        TPE1(encoding=3, text=["A", "B"]),
        TCON(encoding=3, text=["(17)"]),
        COMM(encoding=3, lang="eng", desc="", text=["windy"]),
        TDRC(encoding=3, text=["2024-05-06"]),
        TXXX(encoding=3, desc="Mood", text=["calm"]),
        COMM(encoding=3, lang="eng", desc="iTunNORM", text=["00 01"]),
        APIC(encoding=3, mime="image/png", type=3, desc="cover", data=b"\x89PNG" + bytes(64)),
    ]


ID3_TAGS = {
    "title": ["Gulls"],
    "artist": ["A", "B"],
    "genre": ["Rock"],
    "comment": ["windy"],
    "date": ["2024-05-06"],
    "mood": ["calm"],
}


@pytest.mark.parametrize("ext,kind", [("wav", WAVE), ("aiff", AIFF)])
def test_id3_inside_wav_and_aiff(tmp_path: Path, ext: str, kind: type) -> None:
    path = tmp_path / f"gulls.{ext}"
    if ext == "wav":  # written by hand: FFmpeg's WAV muxer adds an INFO chunk of its own
        write(path, riff(FMT, DATA, info((b"IART", b"B"), (b"IART", b"C"))))
    else:  # with AIFF's own text chunks after the sound
        aiff = audiogen.write_audio(path, audiogen.sine(440, 0.1)).read_bytes()
        text = b"".join(
            cid + struct.pack(">I", len(t)) + t + b"\0" * (len(t) & 1)
            for cid, t in ((b"NAME", b"Gulls at dawn"), (b"AUTH", b"C"), (b"ANNO", b"windy"), (b"(c) ", b"me"))
        )
        write(path, b"FORM" + struct.pack(">I", len(aiff) - 8 + len(text)) + aiff[8:] + text)
    audio = kind(path)
    audio.add_tags()
    for frame in _id3_frames():
        audio.tags.add(frame)
    audio.save()
    # Both kinds of chunk, each value once.
    if ext == "wav":
        expected = ID3_TAGS | {"artist": ["B", "C", "A"]}
    else:
        expected = ID3_TAGS | {"title": ["Gulls at dawn", "Gulls"], "artist": ["C", "A", "B"], "copyright": ["me"]}
    assert read_tags(path) == expected


@pytest.mark.parametrize("ext", ["flac", "ogg", "opus", "wv"])
def test_vorbis_comments_and_apev2(tmp_path: Path, ext: str) -> None:
    path = audiogen.write_audio(tmp_path / f"gulls.{ext}", audiogen.sine(440, 0.5, channels=2))
    f = mutagen.File(path)
    if f.tags is None:
        f.add_tags()
    f["TITLE"], f["ARTIST"], f["DESCRIPTION"] = "Gulls", ["A", "B"], "  Gulls over the pier  "
    f["Location"], f["KEYWORDS"], f["ALBUMARTIST"] = "Brighton", "sea; wind", ""
    f["METADATA_BLOCK_PICTURE"] = "AAAA"
    f.save()
    tags = read_tags(path)
    assert tags.pop("encoder")[0].startswith("Lavf")  # FFmpeg's own
    assert tags == {
        "title": ["Gulls"],
        "artist": ["A", "B"],
        "description": ["Gulls over the pier"],
        "location": ["Brighton"],
        "keywords": ["sea", "wind"],
    }


def test_mp4_atoms(tmp_path: Path) -> None:
    path = audiogen.write_audio(tmp_path / "gulls.m4a", audiogen.sine(440, 0.5))
    f = MP4(path)
    f["©nam"], f["©ART"], f["©gen"], f["trkn"], f["tmpo"] = ["Gulls"], ["A", "B"], ["Ambience"], [(3, 10)], [120]
    f["----:com.apple.iTunes:MOOD"] = [MP4FreeForm(b"calm")]
    f["----:com.apple.iTunes:iTunSMPB"] = [MP4FreeForm(b" 00000000 00000840")]
    f["covr"] = [MP4Cover(b"\x89PNG" + bytes(64), MP4Cover.FORMAT_PNG)]
    f.save()
    tags = read_tags(path)
    assert tags.pop("encoder")[0].startswith("Lavf")
    assert tags == {
        "title": ["Gulls"],
        "artist": ["A", "B"],
        "genre": ["Ambience"],
        "tracknumber": ["3/10"],
        "bpm": ["120"],
        "mood": ["calm"],
    }


def test_asf_attributes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(audiogen._FORMATS, "wma", ("asf", "wmav2"))
    path = audiogen.write_audio(tmp_path / "gulls.wma", audiogen.sine(440, 0.5), bit_rate=64000)
    f = ASF(path)
    f["Title"], f["Author"], f["WM/Genre"] = ["Gulls"], ["A", "B"], ["Ambience"]
    f["WM/TrackNumber"] = [ASFDWordAttribute(3)]
    f["WM/Picture"] = [ASFByteArrayAttribute(b"\x89PNG" + bytes(64))]
    f.save()
    tags = read_tags(path)
    assert tags.pop("encoder")[0].startswith("Lavf")  # FFmpeg's, as WM/EncodingSettings
    assert tags == {"title": ["Gulls"], "artist": ["A", "B"], "genre": ["Ambience"], "tracknumber": ["3"]}


class Counting(io.FileIO):
    """A file that counts the bytes read through it."""

    total = 0

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        Counting.total += len(data)
        return data


def test_a_lying_chunk_size_reads_a_bounded_amount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A LIST chunk claiming 4 GB in a 64 MB file: its entries are read, but never more than MAX_CHUNK of it.
    entries = INFO[12:]
    wav = write(tmp_path / "liar.wav", riff(FMT, DATA, chunk(b"LIST", b"INFO" + entries, size=0xFFFFFFF0)))
    with open(wav, "r+b") as f:
        f.truncate(64 << 20)  # sparse: costs no disk
    monkeypatch.setattr(tags_module, "open", lambda path, mode: Counting(path, mode), raising=False)
    assert read_tags(wav) == INFO_TAGS
    assert 0 < Counting.total <= MAX_CHUNK + 100


def test_truncated_and_corrupt_files(tmp_path: Path) -> None:
    whole = riff(FMT, bext(b"Old oak door, slow open", b"Zoom F8"), DATA, INFO)
    cut = write(tmp_path / "cut.wav", whole[: whole.index(b"IART") + 10])  # inside the second INFO entry
    assert read_tags(cut) == BEXT_TAGS | {"title": ["Door creak"]}
    bad_id3 = write(tmp_path / "bad-id3.wav", riff(FMT, chunk(b"id3 ", b"ID3\x04\0\0\xff\xff\xff\xff junk"), INFO))
    assert read_tags(bad_id3) == INFO_TAGS  # the broken chunk costs only its own tags
    huge_bext = write(tmp_path / "huge.wav", riff(FMT, chunk(b"bext", b"x" * 100, size=0xFFFFFFFF)))
    assert read_tags(huge_bext) == {}
    rng = np.random.default_rng(0)
    for name in ("noise.flac", "noise.m4a", "noise.mp3", "noise.ogg", "noise.wav"):
        assert read_tags(write(tmp_path / name, rng.bytes(4096))) == {}
    flac = audiogen.write_audio(tmp_path / "half.flac", audiogen.sine(440, 0.5))
    write(flac, flac.read_bytes()[:30])
    assert read_tags(flac) == {}
    assert read_tags(tmp_path / "missing.wav") == {} and read_tags(tmp_path) == {}


def test_a_list_tag_is_found_by_any_of_its_values(tmp_path: Path) -> None:
    path = audiogen.write_audio(tmp_path / "duet.flac", audiogen.sine(440, 0.5))
    f = mutagen.File(path)
    f["ARTIST"] = ["A", "B"]
    f.save()
    row = FileRow(str(path), str(tmp_path), 1, 1, "h", tags=read_tags(path))
    dim = 4
    with SqliteStore.open(tmp_path / "index.db") as index:
        index.bind_model(ModelBinding("tiny", "ab" * 32, dim, 5.0, 2.5))
        index.add_file(row, AudioRow("h", 0.5, 44100, 1), [(0.0, 0.5)], np.ones((1, dim), dtype=np.float32))

        def found(**tags: str) -> list[str]:
            return [h.path for h in index.search(np.ones(dim), k=5, filters=Filters(tags=tags))]

        assert found(artist="b") == found(ARTIST="A") == [str(path)]
        assert found(artist="a; b") == found(artist="c") == []
