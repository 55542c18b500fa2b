"""Text tags of audio files, under one set of lower-case names whatever the format, each a list of values.

One table maps every format's own names to ours. ID3 frames, RIFF INFO and AIFF text chunks and MP4 atoms are
opaque codes, so only the ones listed are kept; the free-form names of Vorbis comments (FLAC, Ogg, Opus), APEv2,
ASF, ID3 TXXX frames and MP4 "----" atoms are kept too, lower-cased, through the last column's aliases. BWF
`bext` chunks give `description` and `originator`. Keywords are split at ";" (the RIFF INFO convention).

WAV and AIFF chunks are walked here, bounded (a corrupt size never makes us read more than MAX_CHUNK); ID3
inside them, and every other format, is parsed by mutagen.
"""

import io
import logging
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

import mutagen
from mutagen.id3 import ID3
from mutagen.mp4 import AtomDataType, MP4FreeForm, MP4Tags

log = logging.getLogger(__name__)

# BWF bext adds description (its Description field) and originator (Originator). "-": the format has none.
# ours          ID3    RIFF INFO, AIFF  MP4    Vorbis, APEv2, ASF, TXXX, freeform
_TABLE = """
title           TIT2   INAM,NAME        ©nam   title
artist          TPE1   IART,AUTH        ©ART   artist,author
album           TALB   IPRD             ©alb   album,wm/albumtitle
albumartist     TPE2   -                aART   albumartist,album_artist,album artist,wm/albumartist
genre           TCON   IGNR             ©gen   genre,wm/genre
comment         COMM   ICMT,ANNO        ©cmt   comment
description     TIT3   ISBJ             desc   description,subject
originator      -      -                -      originator
date            TDRC   ICRD             ©day   date,year,wm/year
keywords        -      IKEY             keyw   keywords
composer        TCOM   IMUS             ©wrt   composer,wm/composer
copyright       TCOP   ICOP,(c)         cprt   copyright
encoder         TSSE   ISFT             ©too   encoder,software,wm/encodingsettings
engineer        -      IENG             -      engineer
tracknumber     TRCK   IPRT,ITRK        trkn   tracknumber,track,wm/tracknumber
discnumber      TPOS   -                disk   discnumber,disc
bpm             TBPM   -                tmpo   bpm
"""
_ROWS = [line.split(maxsplit=4) for line in _TABLE.strip().splitlines()]
_ID3 = {row[1]: row[0] for row in _ROWS if row[1] != "-"}
_CHUNKS = {c.ljust(4).encode(): row[0] for row in _ROWS for c in row[2].split(",") if c != "-"}
_MP4 = {row[3]: row[0] for row in _ROWS if row[3] != "-"}
_NAMES = {n: row[0] for row in _ROWS for n in row[4].split(",")}
_BINARY = {"metadata_block_picture", "coverart", "coverartmime"}  # base64 pictures, not text

MAX_CHUNK = 1 << 20  # bytes read from any one chunk: tags are small, and a lying size must not cost gigabytes
MAX_CHUNKS = 10_000  # chunks walked in one file, so a file of empty chunks cannot keep us busy
_ID3_CHUNKS = (b"id3 ", b"ID3 ")

Pairs = Iterable[tuple[str, str]]


def read_tags(path: Path) -> dict[str, list[str]]:
    """A file's text tags, name -> values in file order; a file without tags, or one we cannot read, gives {}."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
                return _collect(_from_chunks(f, "<"))
            if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
                return _collect(_from_chunks(f, ">"))
        tagged = mutagen.File(path)
        return _collect(_from_mutagen(tagged.tags)) if tagged is not None and tagged.tags else {}
    except Exception as e:  # tags are extras: no parser's failure, ours or mutagen's, may cost a file its place
        log.debug("no tags for %s: %s: %s", path, type(e).__name__, e, exc_info=True)
        return {}


def _collect(pairs: Pairs) -> dict[str, list[str]]:
    """Name -> distinct non-empty values, in the order met."""
    tags: dict[str, list[str]] = {}
    for name, text in pairs:
        for value in text.split(";") if name == "keywords" else [text]:
            value = value.replace("\0", "").strip()
            values = tags.setdefault(name, [])
            if value and value not in values:
                values.append(value)
    return {name: values for name, values in tags.items() if values}


def _name(raw: str) -> str | None:
    """Our name for a free-form tag name; None for names that hold binary data or player bookkeeping."""
    name = raw.strip().lower()
    if not name or name in _BINARY or name.startswith("itun"):  # iTunNORM, iTunSMPB: volume and gapless data
        return None
    return _NAMES.get(name, name)


def _texts(value: object) -> list[str]:
    """The text in one tag value of any format; pictures and other binary values hold none."""
    if isinstance(value, MP4FreeForm):
        return [value.decode("utf-8", "replace")] if value.dataformat == AtomDataType.UTF8 else []
    if isinstance(value, str | int) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):  # lists, APEv2 text values
        return [text for item in value for text in _texts(item)]
    inner = getattr(value, "value", None)  # ASF attributes
    return _texts(inner) if isinstance(inner, str | int) else []


# ---------------------------------------------------------------- what mutagen reads


class _DictTags(Protocol):
    """Mutagen's dict-like tags (APEv2; ID3 and MP4 are read their own way)."""

    def items(self) -> Iterable[tuple[object, object]]: ...


def _from_mutagen(tags: list[tuple[object, object]] | _DictTags) -> Pairs:
    if isinstance(tags, ID3):
        return _from_id3(tags)
    if isinstance(tags, MP4Tags):
        return _from_mp4(tags)
    # Vorbis comments and ASF tags are lists of (name, value) pairs, so repeated names stay separate values.
    pairs = list(tags) if isinstance(tags, list) else list(tags.items())
    return ((name, text) for key, value in pairs if (name := _name(str(key))) for text in _texts(value))


def _from_id3(tags: ID3) -> Iterator[tuple[str, str]]:
    for frame in tags.values():
        desc = getattr(frame, "desc", "")
        if desc.lower().startswith("itun"):
            continue
        name = _name(desc) if frame.FrameID == "TXXX" else _ID3.get(frame.FrameID)
        # mutagen has already turned ID3v1 genre numbers such as "(17)" into names; str() writes timestamps.
        yield from ((name, str(text)) for text in getattr(frame, "text", []) if name)


def _from_mp4(tags: MP4Tags) -> Iterator[tuple[str, str]]:
    for key, values in tags.items():
        name = _name(key.rsplit(":", 1)[-1]) if key.startswith("----:") else _MP4.get(key)
        if not name:
            continue
        for value in values:
            if isinstance(value, tuple):  # trkn and disk: (number, total)
                value = f"{value[0]}/{value[1]}" if value[1] else value[0]
            yield from ((name, text) for text in _texts(value))


# ---------------------------------------------------------------- WAV and AIFF chunks


def _from_chunks(f: BinaryIO, order: str) -> Iterator[tuple[str, str]]:
    """Tags of a RIFF/RF64 WAVE ("<") or IFF AIFF (">") file, from the chunks after its 12-byte header."""
    pos, data64 = 12, None
    for _ in range(MAX_CHUNKS):
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8:
            return
        cid, size = head[:4], struct.unpack(order + "I", head[4:])[0]
        if cid == b"data" and size == 0xFFFFFFFF and data64 is not None:
            size = data64  # RF64 keeps the size of a data chunk over 4 GB in its ds64 chunk
        if cid in (b"ds64", b"LIST", b"bext", *_ID3_CHUNKS) or cid in _CHUNKS:
            body = f.read(min(size, MAX_CHUNK))  # past the end of the file, read simply returns less
            if cid == b"ds64" and len(body) >= 16:
                data64 = struct.unpack("<Q", body[8:16])[0]
            elif cid == b"LIST" and body[:4] == b"INFO":
                yield from _info(body[4:])
            elif cid == b"bext" and len(body) >= 288:
                yield from (("description", _text(body[:256])), ("originator", _text(body[256:288])))
            elif cid in _ID3_CHUNKS:
                yield from _id3_chunk(body)
            elif cid in _CHUNKS:  # AIFF's NAME, AUTH, ANNO and (c) chunks hold one text each
                yield _CHUNKS[cid], _text(body)
        pos += 8 + size + (size & 1)  # chunks are padded to an even length


def _info(body: bytes) -> Iterator[tuple[str, str]]:
    """The text entries of a LIST INFO chunk, up to the first that overruns it (a truncated file or a lying size)."""
    pos = 0
    while pos + 8 <= len(body):
        cid, size = body[pos : pos + 4], struct.unpack_from("<I", body, pos + 4)[0]
        if pos + 8 + size > len(body):
            return
        if name := _CHUNKS.get(cid):
            yield name, _text(body[pos + 8 : pos + 8 + size])
        pos += 8 + size + (size & 1)


def _id3_chunk(body: bytes) -> Iterator[tuple[str, str]]:
    try:
        tags = ID3(io.BytesIO(body), load_v1=False)
    except (mutagen.MutagenError, ValueError, struct.error, EOFError) as e:
        log.debug("skipping an unreadable ID3 chunk: %s", e)  # the file's other chunks may still hold tags
        return
    yield from _from_id3(tags)


def _text(data: bytes) -> str:
    """A NUL-terminated chunk string: UTF-8 when it is valid, else Latin-1 (what older tools wrote)."""
    data = data.split(b"\0", 1)[0]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# What wrote a file, on nearly every file: noise in a list of results (the terminal table, the page).
HIDDEN_TAGS = frozenset({"encoder", "encoded_by", "encodedby", "encoding"})


def shown_tags(tags: dict[str, str | list[str]]) -> dict[str, str]:
    """Tags as people read them: writer tags left out, several values joined with '; '."""
    return {k: "; ".join(v) if isinstance(v, list) else str(v) for k, v in tags.items() if k not in HIDDEN_TAGS}
