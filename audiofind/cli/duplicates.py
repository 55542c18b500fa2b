"""`audiofind duplicates`: list exact and near copies, and the bytes they waste; never deletes."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from audiofind.cli.bench import bench_app
from audiofind.cli.common import DbOpt, DeviceOpt, JsonOpt, WeightsOpt, app, console, json_text
from audiofind.search.duplicates import NEAR


@app.command()
def duplicates(
    paths: Annotated[list[Path] | None, typer.Argument(help="Only files under these folders (default: the whole index).", show_default=False)] = None,
    near: Annotated[float, typer.Option("--near", min=0, max=2, help="Cosine distance under which two different files count as the same sound; 0 lists exact copies only.")] = NEAR,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List groups of copies: exact (same content) and near (same sound, other format or trim), with wasted bytes."""
    from audiofind.search.duplicates import find
    from audiofind.store import (
        open_store,  # no torch: the vectors are in the index already
    )

    with open_store(db) as index:
        groups = find(index, [p.expanduser() for p in paths or []], near)
    if json_out:
        typer.echo(json.dumps([g.as_dict() for g in groups], ensure_ascii=False))
        return
    if not groups:
        console.print("No duplicates.")
        return
    table = Table("kind", "files", "size", "wasted")
    for g in groups:
        table.add_row(g.kind, escape("\n".join(g.paths)), f"{g.bytes / 2**20:.2f} MiB", f"{g.wasted / 2**20:.2f} MiB")
    console.print(table)
    wasted = sum(g.wasted for g in groups)
    console.print(f"{len(groups)} group(s); keeping the largest file of each would free {wasted / 2**20:.2f} MiB.")


@bench_app.command("near")
def near_cmd(
    folder: Annotated[Path | None, typer.Argument(help="Real sounds to copy (default: generated ones).", show_default=False)] = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    limit: Annotated[int, typer.Option("--limit", min=2, help="At most this many sounds from FOLDER.")] = 40,
    json_out: JsonOpt = False,
) -> None:
    """How far transcoded and trimmed copies sit from their sound, against different sounds: the measure behind
    `duplicates --near`, for the model given."""
    from audiofind.bench import near as nearcopies
    from audiofind.bench import speed as bench
    from audiofind.model.encoder import load_encoder

    sounds = nearcopies.source_files(folder, limit) if folder else nearcopies.generated_sounds()
    encoder = load_encoder(weights, device, ["audio"])
    with bench.scratch_dir() as tmp:
        report = nearcopies.measure(encoder, sounds, Path(tmp))
    if json_out:
        typer.echo(json_text(report.as_dict()))
        return
    table = Table("copies of a sound", "largest cosine distance")
    for kind, d in report.copies.items():
        table.add_row(kind, f"{d:.2e}")
    table.add_row("[bold]different sounds[/] (smallest)", f"{report.different:.2e}")
    console.print(table)
    if report.suggested is None:
        console.print(f"{report.sounds} sounds: some copy sits farther than two different sounds; no threshold separates them.")
    else:
        console.print(f"{report.sounds} sounds ({encoder.name}): --near {report.suggested:.2g} separates them (default {NEAR:g}).")
