"""`audiofind embed`: print embeddings of audio files and captions."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from audiofind.cli.common import DeviceOpt, JsonOpt, PrecisionOpt, WeightsOpt, app, console, json_text
from audiofind.errors import DecodeError, UsageError, WeightsError

# A whole-clip embedding needs memory in proportion to the clip (about 1.5 GB a minute at full size).
MAX_SECONDS = 300


@app.command()
def embed(
    audio: Annotated[list[Path] | None, typer.Argument(help="Audio files to embed.", show_default=False)] = None,
    text: Annotated[list[str] | None, typer.Option("--text", "-t", help="A caption to embed (repeatable).")] = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    json_out: JsonOpt = False,
) -> None:
    """Print the embedding of each AUDIO file and each --text caption, as the model's reference returns them
    (AudioCLIP's unnormalised; CLAP's unit vectors, a file longer than 10 s the unit mean of its 10 s windows')."""
    from audiofind.audio import decode
    from audiofind.device import check_precision, resolve_device
    from audiofind.model.encoder import load_encoder
    from audiofind.model.family import SAMPLE_RATES
    from audiofind.model.weights import Resolved, resolve

    audio, text = audio or [], text or []
    precision = precision or "fp32"  # (never None here: None means "the index's own" to the commands that have one)
    if not audio and not text:
        raise UsageError("Nothing to embed: give audio files and/or --text captions.")
    check_precision(precision, resolve_device(device))  # before any decoding
    try:  # the model's family says the rate to decode at (no torch yet)
        resolved: Resolved | None = resolve(weights)
    except WeightsError:  # said when the model loads: each file's own problem comes first, as it always has
        resolved = None
    rate = SAMPLE_RATES[resolved.family] if resolved else decode.SAMPLE_RATE
    clips, names, failed = [], [], 0
    for path in audio:
        try:
            clip = decode.load_audio(path, max_seconds=MAX_SECONDS + 1, rate=rate)
            if len(clip) > MAX_SECONDS * rate:
                raise DecodeError(
                    path,
                    f"longer than {MAX_SECONDS // 60} min; embed takes whole clips, so index long recordings (10 s windows) instead",
                )
            clips.append(clip)
            names.append(str(path))
        except DecodeError as e:
            typer.echo(f"error: {e}", err=True)
            failed += 1
    towers = (["audio"] if clips else []) + (["text"] if text else [])
    rows: list[tuple[str, str, list[float]]] = []
    if towers:
        enc = load_encoder(resolved or weights, device, towers, precision=precision)
        if clips:
            rows += [(n, "audio", e.tolist()) for n, e in zip(names, enc.embed_audio(clips))]
        if text:
            rows += [(t, "text", e.tolist()) for t, e in zip(text, enc.embed_text(text))]
    if json_out:
        for name, kind, vector in rows:
            typer.echo(json_text({"input": name, "kind": kind, "embedding": vector}))
    elif rows:
        table = Table("input", "kind", "dim", "norm", "first values")
        for name, kind, vector in rows:
            norm = sum(v * v for v in vector) ** 0.5
            table.add_row(name, kind, str(len(vector)), f"{norm:.4f}", " ".join(f"{v:+.4f}" for v in vector[:4]) + " …")
        console.print(table)
    if failed:
        raise typer.Exit(1)  # each failure already had its own line
