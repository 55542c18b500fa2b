"""HTTP Range requests over any byte source of known size: 206 for one range, 416 past the end, 200 otherwise."""

import re
from collections.abc import Callable, Iterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")

Body = Callable[[int, int], Iterator[bytes]]  # (start, end) -> the bytes [start, end), made lazily


def parse(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end) of a single `bytes=` range, end exclusive; None to send everything (no, several or bad ranges).

    A range that starts at or past the end comes back as (size, size): not satisfiable.
    """
    m = _RANGE.fullmatch(header or "")
    if not m or not (m[1] or m[2]):
        return None  # several ranges or a malformed one: RFC 9110 lets a server ignore it
    if not m[1]:  # bytes=-N: the last N bytes
        n = int(m[2])
        return (size, size) if n == 0 else (max(0, size - n), size)
    start = int(m[1])
    if m[2] and int(m[2]) < start:
        return None
    return (min(start, size), min(int(m[2]) + 1, size) if m[2] else size)


def respond(request: Request, size: int, body: Body, media_type: str, etag: str, headers: dict[str, str]) -> Response:
    """The whole source (200) or the requested range (206), or 416 for a range past the end."""
    base = {"Accept-Ranges": "bytes", "ETag": etag, **headers}
    span = parse(request.headers.get("range"), size)
    if span is not None and request.headers.get("if-range", etag) != etag:
        span = None  # the client holds another version: send the whole of this one
    if span is None:
        return StreamingResponse(body(0, size), 200, base | {"Content-Length": str(size)}, media_type)
    start, end = span
    if start >= end:
        return Response(status_code=416, headers=base | {"Content-Range": f"bytes */{size}"})
    headers = base | {"Content-Range": f"bytes {start}-{end - 1}/{size}", "Content-Length": str(end - start)}
    return StreamingResponse(body(start, end), 206, headers, media_type)
