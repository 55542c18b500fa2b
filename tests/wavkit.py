"""Reading in tests what audio.region writes: RIFF chunks, fmt facts and samples, and the samples the decoder gives
for a whole file, to compare them with."""

import struct
from pathlib import Path

import av
import numpy as np


def decoded(path: Path, kind: str) -> np.ndarray:
    """(frames, channels) of the whole file, as the decoder gives them (24-bit shifted down), decoded from the start."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        pieces = []
        for frame in c.decode(stream):
            x = frame.to_ndarray()
            pieces.append(x.T if frame.format.is_planar else x.reshape(-1, stream.codec_context.channels))
    x = np.concatenate(pieces)
    return x >> 8 if kind == "s24" else x


def chunks(data: bytes) -> dict[bytes, bytes]:
    """The RIFF chunks of a WAV, by name."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    found, i = {}, 12
    while i < len(data):
        name, size = data[i : i + 4], struct.unpack("<I", data[i + 4 : i + 8])[0]
        found[name] = data[i + 8 : i + 8 + size]
        i += 8 + size + size % 2
    return found


def samples(data: bytes) -> tuple[dict[str, int], np.ndarray]:
    """The fmt facts and (frames, channels) samples of a WAV this module wrote (24-bit sign-extended)."""
    c = chunks(data)
    tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", c[b"fmt "][:16])
    raw = c[b"data"]
    if bits == 24:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = np.where(x >= 1 << 23, x - (1 << 24), x)
    else:
        x = np.frombuffer(
            raw, {(1, 8): "<u1", (1, 16): "<i2", (1, 32): "<i4", (3, 32): "<f4", (3, 64): "<f8"}[(tag, bits)]
        )
    return {"tag": tag, "channels": channels, "rate": rate, "bits": bits, "align": align}, x.reshape(-1, channels)
