"""Which files are audio: the one list of extensions every part of audiofind uses, and how browsers take them."""

import os

AUDIO_EXTS = frozenset(
    [
        "wav",
        "wave",
        "flac",
        "mp3",
        "ogg",
        "oga",
        "opus",
        "m4a",
        "mp4",
        "aac",
        "aif",
        "aiff",
        "aifc",
        "caf",
        "w64",
        "wv",
        "mka",
        "webm",
        "wma",
    ]
)
# Formats browsers play as they are (served untouched); every other indexed format is transcoded for a page.
# WAV is here by extension only: 24-bit and float WAV still need transcoding, which the server decides per file.
BROWSER_EXTS = frozenset(["wav", "wave", "flac", "mp3", "ogg", "oga", "opus", "m4a", "mp4", "aac", "webm"])


def extension(path: str) -> str:
    """Lower-case extension without the dot ('' for none): the rule every audio-or-not test uses."""
    name = os.path.basename(path)
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""
