"""A region of an audio file as a new WAV in the file's own format: cut at its own sample rate, faded a few
milliseconds at each cut, with its origin in a BWF `bext` chunk; streamed, so memory stays at one block.

PCM and lossless sources keep their channels and bit depth (8-bit unsigned; 16, 24 or 32-bit integer; 32 or 64-bit
float). Lossy ones (mp3, aac, vorbis, opus...) decode to floats and become 32-bit float WAV, which keeps every
decoded value, peaks above full scale included. The source is only ever read.
"""

import logging
import os
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from audiofind.audio import decode
from audiofind.errors import AudiofindError, DecodeError, UsageError

log = logging.getLogger(__name__)

FADE_SECONDS = 0.005  # at each cut inside the file (none at the file's own start or end), so the cut never clicks
MAX_SECONDS = 600.0  # the longest region
PREROLL_SECONDS = 0.5  # decoding starts this much before the region, so a lossy decoder has settled when it begins
SLACK_SECONDS = 0.05  # an end this little past the declared length is taken as the end of the file
BLOCK_FRAMES = 1 << 14  # frames per block sent or written
RIFF_LIMIT = 0xFFFFFFFF  # a WAV's sizes are 32-bit

# Sample kinds: name -> (bits, WAVE format tag: 1 integer PCM, 3 IEEE float; the numpy type written, little-endian)
KINDS = {"u8": (8, 1, "<u1"), "s16": (16, 1, "<i2"), "s24": (24, 1, "<i4"), "s32": (32, 1, "<i4"),
         "f32": (32, 3, "<f4"), "f64": (64, 3, "<f8")}  # fmt: skip
# The packed sample format the decoder is asked for, per kind (s24 arrives left-aligned in 32 bits).
DECODED = {"u8": "u8", "s16": "s16", "s24": "s32", "s32": "s32", "f32": "flt", "f64": "dbl"}


@dataclass(frozen=True)
class Region:
    """A span of one file and the WAV it becomes."""

    path: Path
    first: int  # the first frame, at the file's own rate
    frames: int
    rate: int
    channels: int
    kind: str  # a key of KINDS
    fade_in: int  # frames faded in (0 where the region starts the file)
    fade_out: int  # frames faded out (0 where it ends the file)
    time_reference: int  # where it begins on the source's timeline: its own bext TimeReference plus first

    @property
    def start(self) -> float:
        """Seconds from the file's start to the region's first frame."""
        return self.first / self.rate

    @property
    def end(self) -> float:
        """Seconds from the file's start to the region's end."""
        return (self.first + self.frames) / self.rate

    @property
    def bits(self) -> int:
        """Bits per sample of the WAV."""
        return KINDS[self.kind][0]

    @property
    def frame_bytes(self) -> int:
        """Bytes per frame (all channels)."""
        return self.bits // 8 * self.channels

    @property
    def data_bytes(self) -> int:
        """Bytes of samples."""
        return self.frames * self.frame_bytes

    @property
    def size(self) -> int:
        """Bytes of the whole WAV, header included (and the pad byte after an odd number of sample bytes)."""
        return len(self.header()) + self.data_bytes + self.data_bytes % 2

    def header(self) -> bytes:
        """RIFF, fmt, bext, fact (for float) and the data chunk's header."""
        bits, tag, _ = KINDS[self.kind]
        align = self.frame_bytes
        fmt = struct.pack("<HHIIHH", tag, self.channels, self.rate, self.rate * align, align, bits)
        chunks = _chunk(b"fmt ", fmt + (b"\0\0" if tag == 3 else b"")) + _chunk(b"bext", self._bext())
        if tag == 3:  # non-integer formats carry their length in frames
            chunks += _chunk(b"fact", struct.pack("<I", self.frames))
        data = self.data_bytes
        riff = 4 + len(chunks) + 8 + data + data % 2
        return b"RIFF" + struct.pack("<I", riff) + b"WAVE" + chunks + b"data" + struct.pack("<I", data)

    def description(self) -> str:
        """Where the region comes from, in words (the bext description, shortened to its 256 bytes)."""
        path = os.fsencode(self.path).decode("utf-8", "replace")  # a name that is not UTF-8 still says something
        span = f"frames {self.first}-{self.first + self.frames} at {self.rate} Hz"
        return f"{path} from {self.start:.3f} s to {self.end:.3f} s ({span})"

    def _bext(self) -> bytes:
        now = time.localtime()
        text = self.description()
        if len(text.encode()) > 256:  # keep the end of the path (the file's name) and the times
            tail = f" from {self.start:.3f} s to {self.end:.3f} s"
            name = os.fsencode(self.path)[-(256 - 3 - len(tail)) :].decode("utf-8", "ignore")
            text = "..." + name + tail
        history = f"A=PCM,F={self.rate},W={self.bits},T=audiofind region: {self.description()}\r\n".encode()
        ref = self.time_reference
        fixed = struct.pack(
            "<256s32s32s10s8sIIH64s190s", text.encode()[:256], b"audiofind", b"", time.strftime("%Y-%m-%d", now).encode(),
            time.strftime("%H:%M:%S", now).encode(), ref & 0xFFFFFFFF, ref >> 32, 1, b"", b"",
        )  # fmt: skip
        return fixed + history


def _chunk(name: bytes, body: bytes) -> bytes:
    return name + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def plan(path: Path | str, start: float, end: float) -> Region:
    """The region [start, end) seconds of the file at path; UsageError if it is not inside the file, DecodeError if
    the file cannot be read."""
    path = Path(os.path.abspath(path))  # the description names it wherever the region goes
    if not (np.isfinite(start) and np.isfinite(end)):
        raise UsageError("start and end must be numbers of seconds.")
    if start < 0:
        raise UsageError(f"start must be 0 s or later, got {start:g} s.")
    if end <= start:
        raise UsageError(f"end must be after start (got start {start:g} s, end {end:g} s).")
    if end - start > MAX_SECONDS:
        raise UsageError(f"A region is at most {MAX_SECONDS:g} s long; this one is {end - start:g} s.")
    info = decode.probe(path)
    if info.duration and end > info.duration + SLACK_SECONDS:
        raise UsageError(f"end {end:g} s is past the end of the file ({info.duration:.3f} s).")
    kind, reference = _source(path, info)
    rate = info.sample_rate
    total = round(info.duration * rate) if info.duration else None
    first = round(start * rate)
    last = min(round(end * rate), total) if total else round(end * rate)
    if last <= first:
        raise UsageError(f"The region {start:g}-{end:g} s holds no sample of the file.")
    fade = max(1, round(FADE_SECONDS * rate))
    fade = min(fade, (last - first) // 2)
    region = Region(path, first, last - first, rate, info.channels, kind, fade if first > 0 else 0,
                    fade if total is None or last < total else 0, reference + first)  # fmt: skip
    if region.size > RIFF_LIMIT:
        raise UsageError(
            f"A {end - start:g} s region of this file is over 4 GiB, more than a WAV file holds; choose a shorter one."
        )
    return region


def _source(path: Path, info: decode.AudioInfo) -> tuple[str, int]:
    """The sample kind the region is written in, and the source's own bext TimeReference (0 without one)."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            stream = _audio_stream(container)
            fmt = stream.codec_context.format
            reference = container.metadata.get("time_reference", "0")
    except (av.error.FFmpegError, OSError, IndexError) as e:
        raise DecodeError(path, f"cannot open the file: {e}") from e
    name = fmt.name.rstrip("p") if fmt is not None else "flt"
    if name == "s32":
        kind = "s24" if info.bits is not None and info.bits <= 24 else "s32"
    else:
        kind = {"u8": "u8", "s16": "s16", "dbl": "f64"}.get(name, "f32")  # float, and anything rarer, as 32-bit float
    return kind, int(reference) if str(reference).isdigit() else 0


@dataclass(frozen=True)
class Written:
    """A region written to a file: where, and how much of its end is silence because the file's audio stops early
    (a truncated file whose header promises more)."""

    path: Path
    silent_seconds: float = 0.0


def wav_bytes(region: Region, decoded: list[int] | None = None) -> Iterator[bytes]:
    """The WAV, header first, then blocks of samples: exactly region.size bytes (silence where the file ends early);
    decoded[0], if given, counts the frames that came from the file."""
    yield region.header()
    for block in _blocks(region, decoded if decoded is not None else [0]):
        yield _encode(block, region.kind)
    if region.data_bytes % 2:
        yield b"\0"  # RIFF chunks are padded to an even length


def write(region: Region, out: Path | str) -> Written:
    """Write the region's WAV to the file out, whole or not at all (through a temporary file beside it, readable as
    the umask allows). UsageError if out is the source, or not a regular file (a folder, a device: never replaced),
    or if the file holds no audio in the region; AudiofindError if out cannot be written."""
    out = Path(out)
    if out.exists() and os.path.samefile(out, region.path):
        raise UsageError(f"{out} is the source file itself; a region never replaces its source.")
    if out.exists() and not out.is_file():
        raise UsageError(f"{out} is not a regular file; give the name of the WAV file to write.")
    decoded = [0]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".region-", suffix=".wav")
    except OSError as e:
        raise AudiofindError(f"Cannot write {out}: {e.strerror or e}.") from None
    try:
        with os.fdopen(fd, "wb") as f:
            for piece in wav_bytes(region, decoded):
                f.write(piece)
        if decoded[0] == 0:
            raise UsageError(
                f"{region.path} holds no audio from {region.start:g} s on (its header promises more than is there: "
                "a truncated file); choose a region before its audio ends."
            )
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would keep the region from the rest of the team
        os.replace(tmp, out)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise AudiofindError(f"Cannot write {out}: {e.strerror or e}.") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Written(out, (region.frames - decoded[0]) / region.rate)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def default_name(path: Path | str, start: float, end: float) -> str:
    """A file name that says the source and the time: 'rain 6m55.000s-7m05.000s.wav'."""
    return f"{Path(path).stem} {_clock(start)}-{_clock(end)}.wav"


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds, 3), 60)
    return f"{int(m)}m{s:06.3f}s" if m else f"{s:.3f}s"


def _blocks(region: Region, decoded: list[int]) -> Iterator[np.ndarray]:
    """(n, channels) blocks of the region's samples as integers or floats of its kind, faded, padded with silence;
    decoded[0] counts the frames taken from the file."""
    done = 0
    pending: list[np.ndarray] = []
    held = 0
    for x in _decoded(region):
        x = x[: region.frames - done - held]
        decoded[0] += len(x)
        pending.append(x)
        held += len(x)
        if held >= BLOCK_FRAMES or done + held >= region.frames:
            block = np.concatenate(pending)
            yield _faded(block, done, region)
            done += len(block)
            pending, held = [], 0
        if done >= region.frames:
            return
    if pending:
        block = np.concatenate(pending)
        yield _faded(block, done, region)
        done += len(block)
    silence = 128 if region.kind == "u8" else 0
    while done < region.frames:
        n = min(BLOCK_FRAMES, region.frames - done)
        yield np.full((n, region.channels), silence, _dtype(region.kind))
        done += n


def _dtype(kind: str) -> np.dtype:
    return np.dtype(KINDS[kind][2])


def _faded(block: np.ndarray, at: int, region: Region) -> np.ndarray:
    """block (frames at..at+n of the region) with the fades applied where it overlaps them."""
    n = len(block)
    pos = np.arange(at, at + n)
    gain = np.ones(n)
    if region.fade_in:
        inside = pos < region.fade_in
        gain[inside] = np.sin(0.5 * np.pi * (pos[inside] + 0.5) / region.fade_in) ** 2
    if region.fade_out:
        left = region.frames - pos  # frames from here to the end, this one included
        inside = left <= region.fade_out
        gain[inside] *= np.sin(0.5 * np.pi * (left[inside] - 0.5) / region.fade_out) ** 2
    if np.all(gain == 1.0):
        return block
    if block.dtype.kind == "f":
        return (block * gain[:, None]).astype(block.dtype)
    centre = 128 if region.kind == "u8" else 0
    info = np.iinfo(block.dtype) if region.kind != "s24" else None
    lo, hi = (info.min, info.max) if info else (-(1 << 23), (1 << 23) - 1)
    faded = np.rint((block.astype(np.float64) - centre) * gain[:, None]) + centre
    return np.clip(faded, lo, hi).astype(block.dtype)


def _encode(block: np.ndarray, kind: str) -> bytes:
    """Little-endian WAV bytes of an (n, channels) block; s24 as three bytes a sample."""
    if kind == "s24":
        return np.ascontiguousarray(block, "<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    return block.astype(_dtype(kind)).tobytes()


def _decoded(region: Region, seek: bool = True) -> Iterator[np.ndarray]:
    """(n, channels) arrays of the file's samples from region.first on, until the file ends (24-bit already shifted
    down); seeks a little before the region unless told not to, and starts again without seeking if a seek lands
    past it. A failure part way is logged and ends the samples (the rest becomes silence)."""
    rate, first = region.rate, region.first
    target = max(0, first - round(PREROLL_SECONDS * rate))
    restart = False
    try:
        with av.open(str(region.path), metadata_errors="ignore") as container:
            stream = _audio_stream(container)
            tick = stream.time_base
            base = float(stream.start_time * tick) if stream.start_time and tick else 0.0
            pos: int | None = 0
            # Timestamps coarser than a sample (Matroska's milliseconds) cannot say where a seek landed: read from the start.
            if seek and target > 0 and tick is not None and tick <= Fraction(1, rate):
                container.seek(int((base + target / rate) / tick), stream=stream, backward=True)
                pos = None  # the first frame after the seek says where it landed
            resampler = None
            for frame in _frames(container, stream, region.path):
                if pos is None:
                    landed = (
                        None
                        if frame.pts is None or frame.time_base is None
                        else round((float(frame.pts * frame.time_base) - base) * rate)
                    )
                    if landed is None or landed > first:
                        restart = True
                        break
                    pos = landed
                have = (frame.format.name.rstrip("p"), frame.sample_rate, len(frame.layout.channels))
                if have != (DECODED[region.kind], rate, region.channels):  # planar or packed alike; else convert
                    resampler = resampler or av.AudioResampler(
                        format=DECODED[region.kind], layout=stream.codec_context.layout, rate=rate
                    )
                    frames = resampler.resample(frame)
                else:
                    frames = [frame]
                for out in frames:
                    x = _interleaved(out, region)
                    if pos + len(x) > first:
                        yield x[max(0, first - pos) :]
                    pos += len(x)
    except av.error.FFmpegError as e:
        log.warning("%s: reading the region stopped: %s", region.path, e)
        return
    if restart:
        yield from _decoded(region, seek=False)


def _frames(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream, path: Path
) -> Iterator[av.AudioFrame]:
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.FFmpegError as e:  # one bad packet: skip it, as indexing does
            log.debug("%s: packet not decoded: %s", path, e)


def _audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream:
    stream = container.streams.best("audio") or container.streams.audio[0]
    assert isinstance(stream, av.audio.stream.AudioStream)
    return stream


def _interleaved(frame: av.AudioFrame, region: Region) -> np.ndarray:
    x: np.ndarray = frame.to_ndarray()
    x = x.T if frame.format.is_planar else x.reshape(-1, region.channels)  # (n, channels)
    return x >> 8 if region.kind == "s24" else x


def unused(path: Path | str) -> Path:
    """path, or the first of 'NAME (2).wav', 'NAME (3).wav'... that does not exist yet."""
    path = Path(path)
    n = 2
    while path.exists() or path.is_symlink():
        stem = path.stem.rsplit(" (", 1)[0] if path.stem.endswith(")") else path.stem
        path = path.with_name(f"{stem} ({n}){path.suffix}")
        n += 1
    return path
