"""Text tags of audio files (title, artist, genre, ...), read with mutagen."""

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def read_tags(path: Path) -> dict[str, str]:
    """Text tags (title, artist, genre, ...) through mutagen; a file it cannot read simply has none."""
    import mutagen

    try:
        f = mutagen.File(path, easy=True)
    except (mutagen.MutagenError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
        log.debug("no tags for %s: %s", path, e)
        return {}
    if f is None or not f.tags:
        return {}
    tags = {}
    for key, value in f.tags.items():
        values = value if isinstance(value, list) else [value]
        text = "; ".join(str(v) for v in values if isinstance(v, str | int | float))
        if text:
            tags[str(key).lower()] = text
    return tags
