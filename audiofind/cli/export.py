"""`audiofind export`: a region of an audio file as a new WAV in the file's own format."""

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from audiofind.cli.common import JsonOpt, app, err_console, json_text
from audiofind.errors import UsageError

if TYPE_CHECKING:
    from audiofind.audio.region import Region


def seconds(text: str, name: str) -> float:
    """A time as typed: seconds (415.5), M:SS(.s) (6:55.5) or H:MM:SS(.s); UsageError otherwise."""
    parts = text.strip().split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"{name} takes seconds (415.5) or minutes:seconds (6:55.5), got {text!r}.") from None
    if len(values) > 3 or any(v < 0 for v in values) or any(v >= 60 for v in values[1:]):
        raise UsageError(f"{name} takes seconds (415.5) or minutes:seconds (6:55.5), got {text!r}.")
    total = 0.0
    for v in values:
        total = total * 60 + v
    return total


@app.command()
def export(
    path: Annotated[Path, typer.Argument(help="The audio file to take a region of (it is only read).")],
    start: Annotated[
        str,
        typer.Option("--start", help="Where the region begins: seconds (415.5) or M:SS (6:55.5).", show_default=False),
    ],
    end: Annotated[str, typer.Option("--end", help="Where it ends, written as --start.", show_default=False)],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="The WAV to write, or a folder for it (default: 'NAME START-END.wav' here, numbered if taken).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a region of PATH as a WAV in its own sample rate, bit depth and channels (BWF, with where it came from)."""
    from audiofind.audio import region

    cut = region.plan(path.expanduser(), seconds(start, "--start"), seconds(end, "--end"))
    name = Path(region.default_name(path, cut.start, cut.end))
    out = output.expanduser() if output is not None else name
    if out.is_dir():  # -o FOLDER: the region's own name in that folder
        out = region.unused(out / name)
    elif output is None:
        out = region.unused(out)
    done = region.write(cut, out)
    written = Path(os.path.abspath(done.path))
    if done.silent_seconds > 0:
        err_console.print(
            f"[yellow]warning:[/] {escape(str(cut.path))} ends early (truncated): the last "
            f"{done.silent_seconds:.2f} s of the region are silence.",
            highlight=False,
        )
    if json_out:
        typer.echo(json_text({**describe(cut, written), "silent_seconds": round(done.silent_seconds, 6)}))
    else:
        typer.echo(str(written))


def describe(cut: "Region", written: Path) -> dict:
    """The object `export --json` prints for one written region."""
    return {
        "path": str(written), "source": str(cut.path), "start": cut.start, "end": cut.end, "frames": cut.frames,
        "sample_rate": cut.rate, "bits": cut.bits, "channels": cut.channels, "float": cut.kind.startswith("f"),
    }  # fmt: skip
