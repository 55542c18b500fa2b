"""Fetching a file over HTTP: streamed, resumable with Range requests, hashed as it arrives (checkpoints, datasets)."""

import hashlib
import http.client
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from audiofind.errors import DownloadError
from audiofind.paths import HASH_CHUNK, feed

log = logging.getLogger(__name__)

TIMEOUT_S = 60

Progress = Callable[[int, int], None]


def fetch(
    name: str, url: str, part: Path, size: int | None, progress: Progress | None, algorithm: str = "sha256"
) -> str:
    """Stream url into part, resuming what is there; returns the hex digest (sha256, md5, ...) of the whole file."""
    done = part.stat().st_size if part.exists() else 0
    if size is not None and done > size:
        part.unlink()
        done = 0
    h = feed(hashlib.new(algorithm), part) if done else hashlib.new(algorithm)
    if size is not None and done == size:
        return h.hexdigest()
    if done and progress:
        progress(done, size or 0)
    headers = {"User-Agent": "audiofind"} | ({"Range": f"bytes={done}-"} if done else {})
    total = size
    try:
        with (
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as response,
            open(part, "ab") as out,
        ):
            length = response.headers.get("Content-Length")
            if done and response.status == 206:
                if not (response.headers.get("Content-Range") or "").startswith(f"bytes {done}-"):
                    part.unlink()
                    raise DownloadError(f"The server sent the wrong part of '{name}'; run the same command again.")
                total = done + int(length) if length else size
                log.info("resuming %s at byte %d", name, done)
            else:  # a fresh download, or a server that ignores Range: start over
                out.truncate(0)
                done, h = 0, hashlib.new(algorithm)
                total = int(length) if length else size
            while chunk := response.read(HASH_CHUNK):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total or 0)
    except urllib.error.HTTPError as e:
        if e.code == 416 and done:  # nothing past what we have: the partial file is the whole file
            return h.hexdigest()
        raise DownloadError(f"Could not download '{name}' from {url}: HTTP {e.code} {e.reason}.") from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        hint = "; run the same command again to resume" if part.exists() and part.stat().st_size else ""
        raise DownloadError(f"Could not download '{name}' from {url} ({reason}){hint}.") from e
    # http.client returns a short body without complaint when the connection drops.
    expected = total or size
    if expected is not None and done < expected:
        raise DownloadError(
            f"The connection closed after {done} of {expected} bytes of '{name}'; run the same command again to resume."
        )
    return h.hexdigest()
