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
# Audio formats FFmpeg decodes that the default list leaves out (rare, or mostly inside video): `index --ext` takes
# them, and without it `index` says how many of them it passed over.
OTHER_AUDIO_EXTS = frozenset(
    ["au", "snd", "tta", "ape", "mpc", "tak", "shn", "mp1", "mp2", "m4b", "ac3", "eac3", "dts", "amr", "spx", "voc",
     "ra", "dsf", "dff"]
)  # fmt: skip
# Names of audio formats (extensions, containers, codecs) that mix letters and digits: each stays one word of a name
# (audio.names.words), so `mp3` is not `mp 3` and a query's stop word "a" never finds an .m4a.
FORMAT_WORDS = frozenset(e for e in AUDIO_EXTS if not e.isalpha()) | frozenset(
    ["mp1", "mp2", "m4b", "m4r", "3gp", "3g2", "ac3", "eac3", "ac4", "wmav1", "wmav2", "g722", "g726", "atrac3"]
)
# Formats browsers play as they are (served untouched); every other indexed format is transcoded for a page.
# WAV is here by extension only: 24-bit and float WAV still need transcoding, which the server decides per file.
BROWSER_EXTS = frozenset(["wav", "wave", "flac", "mp3", "ogg", "oga", "opus", "m4a", "mp4", "aac", "webm"])


def extension(path: str) -> str:
    """Lower-case extension without the dot ('' for none): the rule every audio-or-not test uses."""
    name = os.path.basename(path)
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""
