"""Formats browsers do not play, as 16-bit PCM WAV made on the fly with PyAV: streamed, and seekable by byte.

The WAV is a virtual file of known size: the file's own sample rate, mono or stereo, exactly as many frames as the
indexed duration (padded with silence or cut), so any byte range maps to a sample and a Range request seeks the
decoder instead of decoding from the start. Memory stays at one decoded packet plus one output block.
"""

import logging
import struct
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.audio.stream import AudioStream

from audiofind.audio import decode

log = logging.getLogger(__name__)

HEADER_BYTES = 44
BLOCK = 1 << 16  # bytes per chunk sent


@dataclass(frozen=True)
class Wav:
    """The shape of the WAV a file is served as."""

    rate: int
    channels: int  # 1 or 2
    frames: int

    @property
    def frame_bytes(self) -> int:
        """Bytes per sample frame (all channels)."""
        return 2 * self.channels

    @property
    def size(self) -> int:
        """Bytes of the whole WAV, header included."""
        return HEADER_BYTES + self.frames * self.frame_bytes

    def header(self) -> bytes:
        """The 44-byte canonical PCM WAV header (sizes capped at 4 GiB, which players read as 'to the end')."""
        data = min(self.frames * self.frame_bytes, 0xFFFFFFFF - 36)
        return struct.pack(
            "<4sI4s4sIHHIIHH4sI",
            b"RIFF",
            data + 36,
            b"WAVE",
            b"fmt ",
            16,
            1,
            self.channels,
            self.rate,
            self.rate * self.frame_bytes,
            self.frame_bytes,
            16,
            b"data",
            data,
        )


def plan(path: Path, duration: float) -> Wav:
    """The WAV for this file: its own rate, mono kept mono and everything else mixed to stereo."""
    info = decode.probe(path)
    return Wav(info.sample_rate, 1 if info.channels == 1 else 2, round(duration * info.sample_rate))


def wav_bytes(path: Path, wav: Wav, start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of the WAV of path."""
    if start < HEADER_BYTES:
        yield wav.header()[start:end]
    if end <= HEADER_BYTES:
        return
    offset = max(start, HEADER_BYTES) - HEADER_BYTES  # into the sample data
    first, skip = divmod(offset, wav.frame_bytes)
    left = end - max(start, HEADER_BYTES)
    pending: list[bytes] = []
    held = 0
    for piece in _pcm(path, wav, first):
        if skip:
            piece, skip = piece[skip:], 0
        piece = piece[:left]
        left -= len(piece)
        pending.append(piece)
        held += len(piece)
        if held >= BLOCK or left <= 0:
            yield b"".join(pending)
            pending, held = [], 0
        if left <= 0:
            return
    if pending:
        yield b"".join(pending)


def _pcm(path: Path, wav: Wav, first: int) -> Iterator[bytes]:
    """Interleaved s16 frames [first, wav.frames) of path: decoded, then silence up to wav.frames."""
    pos = first
    for block in _decoded(path, wav, first):
        n = min(len(block) // wav.frame_bytes, wav.frames - pos)
        if n <= 0:
            return
        yield block[: n * wav.frame_bytes]
        pos += n
    silence = bytes(min(BLOCK, (wav.frames - pos) * wav.frame_bytes))
    while pos < wav.frames:
        n = min(len(silence) // wav.frame_bytes, wav.frames - pos)
        yield silence[: n * wav.frame_bytes]
        pos += n


def _decoded(path: Path, wav: Wav, first: int, seek: bool = True) -> Iterator[bytes]:
    """Decoded s16 frames from frame `first` on until the file ends or fails; seeks there unless told not to."""
    layout = "mono" if wav.channels == 1 else "stereo"
    restart = False
    with av.open(str(path), metadata_errors="ignore") as container:
        best = container.streams.best("audio")  # typed as any Stream, though it only ever returns an audio one
        stream = best if isinstance(best, AudioStream) else container.streams.audio[0]
        base = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
        pos: int | None = 0
        if seek and first > 0 and stream.time_base is not None:
            container.seek(int((base + first / wav.rate) / stream.time_base), stream=stream, backward=True)
            pos = None  # the first frame after the seek says where it landed
        resampler, setup = None, None
        try:
            for frame in _frames(container, stream, path):
                if pos is None:
                    pts, time_base = frame.pts, frame.time_base
                    landed = (
                        None if pts is None or time_base is None else round((float(pts * time_base) - base) * wav.rate)
                    )
                    if landed is None or landed > first:
                        restart = True  # landed past the frame asked for, or frames carry no time
                        break
                    pos = landed
                key = (frame.format.name, frame.layout.name, frame.sample_rate)
                if resampler is None or key != setup:  # resampler is None only before the first frame
                    if resampler is not None:
                        pos = yield from _emit(resampler.resample(None), wav, first, pos)
                    resampler, setup = av.AudioResampler(format="s16", layout=layout, rate=wav.rate), key
                pos = yield from _emit(resampler.resample(frame), wav, first, pos)
            if resampler is not None and pos is not None and not restart:  # (pos is set once a frame came)
                yield from _emit(resampler.resample(None), wav, first, pos)
        except av.error.FFmpegError as e:  # the container is unreadable from here on: the rest is silence
            log.warning("%s: transcoding stopped: %s", path, e)
            return
    if restart:
        yield from _decoded(path, wav, first, seek=False)


def _frames(container: av.container.InputContainer, stream: AudioStream, path: Path) -> Iterator[av.AudioFrame]:
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.FFmpegError as e:  # one bad packet: skip it, as indexing does
            log.debug("%s: packet not decoded: %s", path, e)


def _emit(frames: list[av.AudioFrame], wav: Wav, first: int, pos: int) -> Generator[bytes, None, int]:
    """Yield the bytes of frames at or after `first`; return the position after them."""
    for out in frames:
        x = out.to_ndarray().reshape(-1)  # packed s16: (n * channels,)
        n = len(x) // wav.channels
        if pos + n > first:
            yield np.ascontiguousarray(x[max(0, first - pos) * wav.channels :]).tobytes()
        pos += n
    return pos
