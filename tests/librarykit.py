"""A small library of test files in several formats, with broken and hidden ones: what a user's folder holds."""

from pathlib import Path

import audiogen


def put(writer, path: Path, *args, **kwargs) -> Path:  # type: ignore[no-untyped-def]
    """Write a test file, creating its folder first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return writer(path, *args, **kwargs)


def make_library(root: Path) -> dict[str, list[Path]]:
    """Several formats and channel counts, nested folders, spaces and accents, broken and hidden files."""
    good = [
        put(
            audiogen.write_audio,
            root / "Field Recordings" / "Forêt d'été" / "birds 01.flac",
            audiogen.chirp(800, 4000, 2.0, channels=2),
        ),
        put(audiogen.write_audio, root / "drums" / "kick.wav", audiogen.sine(60, 0.4, sr=22050), sr=22050),
        put(audiogen.write_audio, root / "synth" / "pad.mp3", audiogen.square(220, 1.5)),
        put(audiogen.write_audio, root / "synth" / "lead.ogg", audiogen.sine(1320, 1.0, channels=2)),
        put(audiogen.write_audio, root / "fx" / "whoosh.m4a", audiogen.noise(1.2, seed=3)),
        put(audiogen.write_audio, root / "fx" / "surround.wav", audiogen.noise(0.8, channels=6, seed=4)),
    ]
    broken = [
        put(audiogen.write_empty, root / "broken" / "empty.wav"),
        put(
            audiogen.write_truncated,
            root / "broken" / "cut.flac",
            put(audiogen.write_audio, root.parent / "src.flac", audiogen.sine(500, 3.0)),
        ),
        put(audiogen.write_not_audio, root / "broken" / "notes.wav"),
    ]
    put(audiogen.write_audio, root / ".hidden" / "secret.wav", audiogen.sine(100, 0.5))
    put(audiogen.write_audio, root / "fx" / ".dotfile.wav", audiogen.sine(100, 0.5))
    (root / "readme.txt").write_text("not audio, not picked up")
    return {"good": good, "broken": broken}
