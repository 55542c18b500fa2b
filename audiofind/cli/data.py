"""`audiofind data`: download datasets into the layout fine-tuning and the benchmarks read."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from audiofind.cli.common import app, console, err_console, sub_app

data_app = sub_app("Download datasets for fine-tuning and the benchmarks.")
app.add_typer(data_app, name="data")
download_app = sub_app("Download a dataset, check it and unpack it.")
data_app.add_typer(download_app, name="download")


class Split(StrEnum):
    """The --split values; StrEnum, so help and errors show them as they are typed."""

    development = "development"
    validation = "validation"
    evaluation = "evaluation"
    all = "all"
    dcase2022_eval = "dcase2022-eval"


@download_app.command("clotho")
def clotho(
    to: Annotated[
        Path | None,
        typer.Option(
            "--to", metavar="DIR", show_default=False, help="Folder to fill (default: clotho in the data folder)."
        ),
    ] = None,
    split: Annotated[
        Split,
        typer.Option(
            "--split", help="A Clotho v2.1 split, all three, or dcase2022-eval: the DCASE 2022 Task 6b retrieval set."
        ),
    ] = Split.all,
) -> None:
    """Download Clotho v2.1 from Zenodo, check every md5, unpack it as finetune --clotho and bench clotho read it.

    A partial download resumes; a split that is complete already is checked and skipped.
    """
    from audiofind.train.datasets import download_clotho

    with _steps() as progress:
        root, reports = download_clotho(to, split.value, progress)
    for r in reports:
        what = f"fetched {', '.join(r.fetched)}" if r.fetched else "unpacked" if r.unpacked else "complete, checked"
        console.print(f"{r.split}: {r.clips} clips, {r.captions} captions ({what})", highlight=False)
    console.print(f"Clotho is in {root}", soft_wrap=True, highlight=False)


@contextmanager
def _steps() -> Iterator[Callable[[str, int, int], None]]:
    """A byte bar on stderr for each step the library reports: checking, downloading, unpacking each file."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, disable=not err_console.is_terminal) as bar:
        tasks: dict[str, TaskID] = {}

        def update(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total or None)
            bar.update(tasks[what], completed=done, total=total or None)

        yield update
