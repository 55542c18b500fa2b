"""Running the server: bind the socket, serve with uvicorn until Ctrl-C or SIGTERM, then close everything."""

import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn

from audiofind.errors import UsageError
from audiofind.serve.app import create_app
from audiofind.serve.guard import new_token
from audiofind.serve.library import Library

GRACE_SECONDS = 2  # open audio streams get this long to finish when stopping


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one); UsageError if that cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UsageError(
            f"Cannot listen on {host} port {port}: {e.strerror or e}; choose another --port or --host."
        ) from e
    return sock


def page_url(host: str, port: int, token: str) -> str:
    """The address to open: http://HOST:PORT/?token=TOKEN (loopback for a server listening everywhere)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/?token={token}"


class Server(uvicorn.Server):
    """uvicorn, stopping on the first Ctrl-C or SIGTERM (a second Ctrl-C stops at once) and then returning normally
    instead of raising the signal again, so the command ends with its own message and exit code 0."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(library: Library, sock: socket.socket, host: str, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve library on a listening socket (from bind(host, ...)) until stopped; on_ready gets the page's URL."""
    port = sock.getsockname()[1]
    token = new_token()
    config = uvicorn.Config(
        create_app(library, token, host, port),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACE_SECONDS,
    )
    server = Server(config)
    if on_ready:
        on_ready(page_url(host, port, token))
    server.run(sockets=[sock])
