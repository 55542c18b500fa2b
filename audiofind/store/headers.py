"""The header facts of an indexed file (container, codec, bit depth), read again for an index made before they were
recorded: only if the file is still the very one indexed (same size and modification time), from its header alone
(nothing decoded, nothing embedded). Each backend's migration finds the files; this reads them, with no SQL.
"""

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from audiofind.errors import DecodeError

if TYPE_CHECKING:
    from audiofind.audio.decode import AudioInfo

log = logging.getLogger(__name__)


def read(path: str, size: int, mtime_ns: int) -> "AudioInfo | None":
    """The header facts of the file at path if it is still the file that was indexed, else None."""
    from audiofind.audio import decode  # PyAV: loaded only when an old index is upgraded

    try:
        st = os.stat(path)
    except OSError:
        return None
    if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
        return None
    try:
        return decode.probe(Path(path), count=False)
    except DecodeError as e:
        log.debug("no facts for %s: %s", path, e)
        return None
