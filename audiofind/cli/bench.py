"""`audiofind bench`: the benchmark commands (clotho here; speed in cli/speed.py)."""

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from audiofind.cli.common import DeviceOpt, JsonOpt, WeightsOpt, app, console, err_console, sub_app

bench_app = sub_app("Benchmarks: retrieval quality (clotho) and speed.")
app.add_typer(bench_app, name="bench")


class Split(str, Enum):
    evaluation = "evaluation"
    validation = "validation"
    development = "development"


@bench_app.command("clotho")
def clotho(
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="Folder holding clotho_captions_<split>.csv and <split>/.")
    ],
    split: Annotated[Split, typer.Option("--split", help="Which Clotho v2 split to score.")] = Split.evaluation,
    submission: Annotated[
        Path | None, typer.Option("--submission", help="Score this submission CSV instead of running a model.")
    ] = None,
    write_submission: Annotated[
        Path | None, typer.Option("--write-submission", help="Also write the ten best clips per caption to this CSV.")
    ] = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Score text-to-audio retrieval on Clotho v2 with the DCASE 2022 Task 6b protocol."""
    from audiofind import clotho as bench
    from audiofind.errors import UsageError

    if submission is not None:
        if write_submission is not None:
            raise UsageError("--write-submission needs a model run; it cannot be combined with --submission.")
        data = bench.load_split(directory, split.value, need_audio=False)
        result = bench.score_submission(data, bench.read_submission(submission))
        source, label = str(submission), submission.name
    else:
        data = bench.load_split(directory, split.value)  # before the model loads: a broken dataset fails fast
        from audiofind.encoder import load_encoder
        from audiofind.paths import data_dir

        enc = load_encoder(weights, device)
        cache = data_dir() / "cache" / f"clotho-{split.value}-{enc.sha256[:16]}.npz"
        with _item_progress("Embedding") as progress:
            result, scores = bench.evaluate(data, enc.embed_files, enc.embed_text, cache=cache, progress=progress)
        if write_submission is not None:
            bench.write_submission(write_submission, data, scores)
            err_console.print(f"Wrote {write_submission}")
        source = label = enc.name

    if json_out:
        typer.echo(json.dumps({"split": split.value, "source": source, "n_clips": len(data.files), **result.as_dict()}))
        return
    caption = f"{label}\n{result.n_queries} captions, {len(data.files)} clips"
    table = Table(title=f"Clotho v2 {split.value}", caption=caption)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI (jackknife)", justify="right")
    for name, label in (("R1", "R@1"), ("R5", "R@5"), ("R10", "R@10"), ("mAP10", "mAP@10")):
        lo, hi = result.ci[name]
        table.add_row(label, f"{result.metrics[name]:.4f}", f"[{lo:.4f}, {hi:.4f}]")
    console.print(table)


@contextmanager
def _item_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A clips-and-captions progress bar on stderr, driven by the library's (done, total) callback."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update
