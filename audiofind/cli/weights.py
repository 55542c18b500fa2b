"""`audiofind weights`: list, download, import and remove checkpoints."""

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from audiofind.cli.common import JsonOpt, app, byte_progress, console, json_text, sub_app

if TYPE_CHECKING:  # importing weights at run time would pull in torch before --help
    from audiofind.model.weights import ModelInfo

weights_app = sub_app("List, download, import and remove model checkpoints.")
app.add_typer(weights_app, name="weights")

_STATUS = {"imported": "imported", "finetuned": "fine-tuned"}


def _status(info: "ModelInfo") -> str:
    if info.source == "registered":
        return "downloaded" if info.path else "not downloaded"
    return _STATUS[info.source]


def _size(size: int | None) -> str:
    return f"{size / 1e6:,.0f} MB" if size else ""


@weights_app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """Show registered and local models and whether each is on disk."""
    from audiofind.model.weights import available_models

    models = available_models()
    if json_out:
        rows = [asdict(m) | {"path": str(m.path) if m.path else None, "status": _status(m)} for m in models]
        typer.echo(json_text(rows))
        return
    table = Table("name", "family", "status", "size", "description")
    for m in models:
        table.add_row(m.name, m.family, _status(m), _size(m.size), m.description)
    console.print(table)


@weights_app.command()
def download(
    name: Annotated[
        str | None,
        typer.Argument(
            help="A registered model name (default: the default model; see: audiofind weights list).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Download a registered model (the default one without NAME), check its sha256 and convert it to safetensors."""
    from audiofind.model.weights import default_model
    from audiofind.model.weights import download as fetch

    name = name or default_model()
    with byte_progress(f"Downloading {name}") as progress:
        path = fetch(name, progress=progress)
    console.print(str(path), soft_wrap=True, highlight=False)


@weights_app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="A .pt or .safetensors checkpoint.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Name to register it under (default: the file name).")
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer",
            metavar="DIR",
            help="For a CLAP checkpoint: the folder holding RoBERTa's vocab.json and merges.txt.",
        ),
    ] = None,
) -> None:
    """Convert a checkpoint you already have (AudioCLIP, or LAION-CLAP with --tokenizer) into a local model."""
    from audiofind.errors import UsageError
    from audiofind.model.weights import chosen_model, import_checkpoint

    with byte_progress(f"Hashing {path.name}") as progress:
        out = import_checkpoint(path, name=name, progress=progress, tokenizer=tokenizer)
    console.print(f"Imported '{out.stem}' as {out}", soft_wrap=True, highlight=False)
    try:
        default = chosen_model() == out.stem
    except UsageError:  # several models and none chosen
        default = False
    if default:
        console.print("Commands use it when no --weights is given: audiofind index FOLDER", highlight=False)
    else:
        console.print(
            f"Use it with: audiofind index FOLDER --weights {out.stem} "
            f"(or set AUDIOFIND_WEIGHTS={out.stem} for every command)",
            highlight=False,
            soft_wrap=True,
        )


@weights_app.command()
def remove(
    name: Annotated[str, typer.Argument(help="A downloaded, imported or fine-tuned model.")],
    keep_runs: Annotated[
        bool, typer.Option("--keep-runs", help="Keep the folder of the run that fine-tuned it.")
    ] = False,
) -> None:
    """Delete a local model, any partial download of it, and the training run that fine-tuned it."""
    from audiofind.model.weights import remove as delete

    removed = delete(name, keep_runs=keep_runs)
    console.print(f"Removed {name}." if removed.files else f"No model '{name}' is installed.", highlight=False)
    if removed.run is None:
        return
    size = _size(removed.run_bytes) or "empty"
    done = "Kept" if removed.run_kept else "Removed"
    why = ", as --keep-runs asked" if removed.run_kept else ""
    console.print(f"{done} its training run {removed.run} ({size}){why}.", highlight=False, soft_wrap=True)
