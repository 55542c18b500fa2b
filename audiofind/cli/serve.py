"""`audiofind serve`: a local web page to search, audition the matching segment and drag the sound away."""

from typing import Annotated

import typer

from audiofind.cli.common import DbOpt, DeviceOpt, PrecisionOpt, WeightsOpt, app, err_console


@app.command()
def serve(
    db: DbOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = None,
    host: Annotated[
        str,
        typer.Option("--host", help="Address to listen on; anything but 127.0.0.1 opens your library to the network."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")] = 8765,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open the page in the web browser.")] = True,
) -> None:
    """Search, listen to and drag out sounds in a local web page, until Ctrl-C."""
    from rich.markup import escape

    from audiofind.serve.guard import is_loopback
    from audiofind.serve.library import Library
    from audiofind.serve.server import bind
    from audiofind.serve.server import serve as run

    if not is_loopback(host):
        err_console.print(
            f"[yellow]warning:[/] listening on {escape(host)}, not only on this computer: anyone who can reach port {port} "
            "here and learns the token can search and download your sound library.",
            highlight=False,
        )

    def ready(url: str) -> None:
        typer.echo(url)
        err_console.print("press Ctrl-C to stop", style="dim", highlight=False)
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    sock = bind(host, port)  # first: a port in use fails before the model loads
    try:
        with Library.open(db, weights, device, precision or "fp32") as library:
            run(library, sock, host, on_ready=ready)
    finally:
        sock.close()
    err_console.print("stopped.", style="dim", highlight=False)
