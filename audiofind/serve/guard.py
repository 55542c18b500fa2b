"""Who may talk to the server: requests for the address it listens on (no DNS rebinding) that carry its token.

The token is created at start and travels in the printed URL; the page keeps it and sends it back as the `token`
query parameter (audio elements) or as `Authorization: Bearer` (fetch). No CORS headers are ever sent, so other
web pages cannot read any answer, and a page from another site cannot send the token it does not know.
"""

import ipaddress
import secrets
import socket

from starlette.datastructures import Headers, QueryParams
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PUBLIC_PREFIX = "/static/"  # the page's own CSS and JavaScript: nothing from the library
PUBLIC_PATHS = {"/favicon.ico"}  # asked for by browsers without the token; the page's own icon
WILDCARDS = {"0.0.0.0", "::", ""}
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # the token in a URL never leaves in a Referer
    (b"x-frame-options", b"DENY"),
]


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    """Whether host only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(header: str | None, host: str, port: int) -> bool:
    """Whether a Host header names the address we listen on (an IP literal, or localhost for loopback)."""
    if not header:
        return False
    name, _, given_port = header.rpartition(":") if not header.endswith("]") else (header, "", "")
    if not name or not given_port.isdigit():
        name, given_port = header, "80"
    if int(given_port) != port:
        return False
    name = name.strip("[]").lower().rstrip(".")
    if name == host.lower() or (is_loopback(host) and name == "localhost"):
        return True
    if host in WILDCARDS:  # listening everywhere: any address of this machine, which an attacker's name is not
        return _is_ip(name) or name in {"localhost", socket.gethostname().lower()}
    return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def given_token(scope: Scope) -> str | None:
    """The token a request carries: `Authorization: Bearer T` or the `token` query parameter."""
    auth = Headers(scope=scope).get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return QueryParams(scope.get("query_string", b"")).get("token") or None


class Guard:
    """ASGI middleware: refuse foreign Host headers (403) and missing (401) or wrong (403) tokens."""

    def __init__(self, app: ASGIApp, token: str, host: str, port: int) -> None:
        self.app, self.token, self.host, self.port = app, token, host, port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope) -> Response | None:
        if not host_allowed(Headers(scope=scope).get("host"), self.host, self.port):
            return _refuse(scope, 403, "This server only answers requests for its own address.")
        if scope["path"].startswith(PUBLIC_PREFIX) or scope["path"] in PUBLIC_PATHS:
            return None
        token = given_token(scope)
        if token is None:
            return _refuse(scope, 401, "This needs the token: open the URL that `audiofind serve` printed.")
        if not secrets.compare_digest(token.encode(), self.token.encode()):
            return _refuse(scope, 403, "Wrong token: open the URL that `audiofind serve` printed.")
        return None


def _refuse(scope: Scope, status: int, message: str) -> Response:
    if scope["path"].startswith("/api/"):
        return JSONResponse({"error": message}, status)
    return PlainTextResponse(message + "\n", status, headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)
