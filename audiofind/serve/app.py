"""The web application: the page, its JSON API, audio and waveform peaks, behind the Host and token guard.

Routes (a public interface): GET / (the page), /api/search, /api/like, /api/audio/{id}, /api/region/{id},
/api/peaks/{id}, /api/status, and /static/ and /favicon.ico (the page's own assets, the only ones without the token).
Handlers are plain functions run in Starlette's thread pool.
"""

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from audiofind.audio import region
from audiofind.errors import AudiofindError, DecodeError, UsageError
from audiofind.serve import files, page, params, peaks, ranges, transcode
from audiofind.serve.guard import Guard
from audiofind.serve.library import Library
from audiofind.store import FileEntry

ASSETS = Path(__file__).parent / "assets"


def threaded(handler: Callable[[Request], Response]) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint running handler in the thread pool (the store and the model block), with library errors as JSON."""

    async def endpoint(request: Request) -> Response:
        try:
            return await run_in_threadpool(handler, request)
        except UsageError as e:
            return _error(400, str(e))
        except AudiofindError as e:
            return _error(500, str(e))

    return endpoint


def create_app(
    library: Library, token: str, host: str = "127.0.0.1", port: int = 8765, peaks_dir: Path | None = None
) -> Starlette:
    """The application serving library to requests for host:port that carry token (peaks cached in peaks_dir)."""

    def search(request: Request) -> Response:
        p = params.parse(request.query_params.getlist)
        if not p.q:
            raise UsageError("Give q, a description of the sound you are looking for.")
        return JSONResponse([r.as_dict() for r in library.search(p.q, p.k, p.filters, p.mode)])

    def like(request: Request) -> Response:
        p = params.parse(request.query_params.getlist)
        if p.like is None:
            raise UsageError("Give id, the id of an indexed file.")
        try:
            results = library.like(p.like, p.k, p.filters)
        except DecodeError as e:  # changed since indexing and no longer readable, or gone
            return _error(404, str(e))
        return (
            _error(404, f"No indexed file has id {p.like}.")
            if results is None
            else JSONResponse([r.as_dict() for r in results])
        )

    def audio(request: Request) -> Response:
        entry, checked = _servable(library, request)
        if entry is None or checked is None:
            return _error(404, "No such file in the index, or it changed or disappeared since it was indexed.")
        headers = {"Cache-Control": "private, no-cache", "Content-Disposition": _disposition(entry.path)}
        if request.query_params.get("original") or files.plays_as_is(entry.path, entry.hash):
            body = lambda a, b: files.read(entry.path, checked, a, b)
            return ranges.respond(request, checked.st_size, body, files.mime(entry.path), f'"{entry.hash}"', headers)
        wav = transcode.plan(Path(entry.path), entry.duration)
        body = lambda a, b: transcode.wav_bytes(Path(entry.path), wav, a, b)
        headers["Content-Disposition"] = _disposition(Path(entry.path).stem + ".wav")
        return ranges.respond(request, wav.size, body, "audio/wav", f'"{entry.hash}-wav"', headers)

    def region_of(request: Request) -> Response:
        entry, checked = _servable(library, request)
        if entry is None or checked is None:
            return _error(404, "No such file in the index, or it changed or disappeared since it was indexed.")
        start, end = params.span(request.query_params.getlist)
        try:
            cut = region.plan(Path(entry.path), start, end)
        except DecodeError as e:
            return _error(404, str(e))
        name = region.default_name(entry.path, cut.start, cut.end)
        headers = {"Content-Length": str(cut.size), "Cache-Control": "private, no-cache",
                   "Content-Disposition": _disposition(name, "attachment")}  # fmt: skip
        return StreamingResponse(region.wav_bytes(cut), 200, headers, "audio/wav")

    def peaks_of(request: Request) -> Response:
        entry, checked = _servable(library, request)
        if entry is None or checked is None:
            return _error(404, "No such file in the index, or it changed or disappeared since it was indexed.")
        values = peaks.peaks(Path(entry.path), entry.hash, entry.duration, peaks_dir)
        return JSONResponse({"id": entry.id, "hash": entry.hash, "duration": entry.duration, "peaks": values})

    def status(request: Request) -> Response:
        return JSONResponse(library.status())

    def favicon(request: Request) -> Response:
        return FileResponse(
            ASSETS / "favicon.ico", media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"}
        )

    def home(request: Request) -> Response:
        return HTMLResponse(
            page.render(library, request.query_params, token), headers={"Content-Security-Policy": page.CSP}
        )

    routes = [
        Route("/", threaded(home)),
        Route("/api/search", threaded(search)),
        Route("/api/like", threaded(like)),
        Route("/api/audio/{id:int}", threaded(audio)),
        Route("/api/region/{id:int}", threaded(region_of)),
        Route("/api/peaks/{id:int}", threaded(peaks_of)),
        Route("/api/status", threaded(status)),
        Route("/favicon.ico", favicon),
        Mount("/static", StaticFiles(directory=ASSETS)),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, token=token, host=host, port=port)],
        exception_handlers={404: _not_found},
    )


async def _not_found(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith("/api/"):
        return _error(404, "No such route or file.")
    return PlainTextResponse("Not found.\n", 404)


def _servable(library: Library, request: Request) -> tuple[FileEntry | None, os.stat_result | None]:
    entry = library.entry(request.path_params["id"])
    return entry, files.check(entry) if entry else None


def _disposition(name: str, how: str = "inline") -> str:
    return f"{how}; filename*=UTF-8''{quote(Path(name).name)}"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)
