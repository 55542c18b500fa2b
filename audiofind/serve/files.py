"""Which bytes of an indexed file may be served, and whether a browser plays them as they are."""

import functools
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from audiofind.audio import decode
from audiofind.audio.formats import BROWSER_EXTS, extension
from audiofind.errors import DecodeError
from audiofind.store import FileEntry
from audiofind.store.records import folder_prefix

CHUNK = 1 << 16
# Codecs every current browser decodes, in the containers of BROWSER_EXTS; 8- and 16-bit PCM only, as 24-bit and
# float WAV still fail in some browsers.
BROWSER_CODECS = frozenset({"pcm_s16le", "pcm_u8", "flac", "mp3", "vorbis", "opus", "aac"})
MIME = {
    "wav": "audio/wav", "wave": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg",
    "oga": "audio/ogg", "opus": "audio/ogg", "m4a": "audio/mp4", "mp4": "audio/mp4", "aac": "audio/aac",
    "webm": "audio/webm", "aif": "audio/aiff", "aiff": "audio/aiff", "aifc": "audio/aiff", "caf": "audio/x-caf",
    "wv": "audio/x-wavpack", "mka": "audio/x-matroska", "wma": "audio/x-ms-wma",
}  # fmt: skip


def check(entry: FileEntry) -> os.stat_result | None:
    """The file's stat if it is, inside its root, still the very file that was indexed; else None (serve 404).

    "The very file" means a regular file with the indexed size and modification time, reached by the indexed path.
    A file deleted or changed since, or a symlink put in its place pointing anywhere else, is not served.
    """
    if not entry.path.startswith(folder_prefix(entry.root)):
        return None
    try:
        st = os.stat(entry.path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
        return None
    return st


def read(path: str, checked: os.stat_result, start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of the file, if what is opened is still the file that was checked."""
    with open(path, "rb") as f:
        now = os.fstat(f.fileno())
        if (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) != (
            checked.st_dev,
            checked.st_ino,
            checked.st_size,
            checked.st_mtime_ns,
        ):
            return  # swapped between the check and the open: send nothing
        f.seek(start)
        left = end - start
        while left > 0 and (chunk := f.read(min(CHUNK, left))):
            left -= len(chunk)
            yield chunk


@functools.lru_cache(maxsize=4096)
def plays_as_is(path: str, hash: str) -> bool:
    """Whether browsers play this content untouched (by extension and codec); hash keys the cache to the content."""
    if extension(path) not in BROWSER_EXTS:
        return False
    try:
        return decode.probe(Path(path)).codec in BROWSER_CODECS
    except DecodeError:
        return False


def mime(path: str) -> str:
    """The media type of the file as it is on disk."""
    return MIME.get(extension(path), "application/octet-stream")
