"""`audiofind bench`: the retrieval benchmarks (clotho, captions here; speed in cli/speed.py)."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from audiofind.cli.common import DeviceOpt, JsonOpt, WeightsOpt, app, console, err_console, json_text, sub_app

if TYPE_CHECKING:  # importing these at run time would pull in numpy before --help
    from audiofind.eval.clotho import CaptionSet, ClothoSplit
    from audiofind.eval.metrics import BenchResult

bench_app = sub_app("Benchmarks: retrieval quality (clotho, captions) and speed.")
app.add_typer(bench_app, name="bench")


class Split(str, Enum):
    evaluation = "evaluation"
    validation = "validation"
    development = "development"
    dcase2022_eval = "dcase2022-eval"


WriteOpt = Annotated[
    Path | None, typer.Option("--write-submission", help="Also write the ten best clips per caption to this CSV.")
]


@bench_app.command("clotho")
def clotho(
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="Folder holding clotho_captions_<split>.csv and <split>/.")
    ],
    split: Annotated[
        Split, typer.Option("--split", help="A Clotho v2 split, or dcase2022-eval: the challenge's evaluation set.")
    ] = Split.evaluation,
    submission: Annotated[
        Path | None, typer.Option("--submission", help="Score this submission CSV instead of running a model.")
    ] = None,
    write_submission: WriteOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Score text-to-audio retrieval on Clotho v2 with the DCASE 2022 Task 6b protocol."""
    from audiofind.errors import UsageError
    from audiofind.eval import clotho as bench

    if submission is not None:
        if write_submission is not None:
            raise UsageError("--write-submission needs a model run; it cannot be combined with --submission.")
        data = bench.load_split(directory, split.value, need_audio=False)
        result = bench.score_submission(data, bench.read_submission(submission))
        source, label = str(submission), submission.name
    else:
        data = bench.load_split(directory, split.value)  # before the model loads: a broken dataset fails fast
        if write_submission is None:
            bench.require_truth(data)  # a set without ground truth is only worth running for its submission
        result, label = _run_model(data, weights, device, write_submission, cache=f"clotho-{split.value}")
        source = label
    title = "DCASE 2022 Task 6b evaluation" if split.value == "dcase2022-eval" else f"Clotho v2 {split.value}"
    _report(title, split.value, source, label, len(data.files), len(data.captions), result, json_out)


@bench_app.command("captions")
def captions(
    csv_file: Annotated[Path, typer.Argument(metavar="CSV", help="Rows of path,caption; paths relative to the CSV.")],
    write_submission: WriteOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Score text-to-audio retrieval on your own path,caption pairs: each caption ranks every listed file."""
    from audiofind.train import data as sources

    clips = sources.read_captions(csv_file)
    if clips.problems:
        err_console.print(f"Skipped {len(clips.problems)} bad rows or missing files (details above).", highlight=False)
    queries = sources.caption_queries(clips)
    result, label = _run_model(queries, weights, device, write_submission)
    _report(f"Your captions: {csv_file.name}", str(csv_file), label, label, len(queries.files), len(queries.captions),
            result, json_out)


def _run_model(data: "ClothoSplit | CaptionSet", weights: str | None, device: str, write_submission: Path | None,
               cache: str | None = None) -> tuple["BenchResult | None", str]:
    """Embed, rank and score (where the set has ground truth) with a model; returns the result and the model name.

    With a cache name, clip vectors are kept per model in the data folder, so a second run embeds only the captions.
    """
    from audiofind.eval import clotho as bench
    from audiofind.model.encoder import load_encoder
    from audiofind.paths import data_dir

    enc = load_encoder(weights, device)
    cache_file = data_dir() / "cache" / f"{cache}-{enc.sha256[:16]}.npz" if cache else None
    with _item_progress("Embedding") as progress:
        args = (data, enc.embed_files, enc.embed_text, cache_file, progress)
        result, scores = bench.evaluate(*args) if data.caption_file is not None else (None, bench.similarities(*args))
    if write_submission is not None:
        bench.write_submission(write_submission, data, scores)
        err_console.print(f"Wrote {write_submission}")
    return result, enc.name


def _report(title: str, split: str, source: str, label: str, n_clips: int, n_captions: int,
            result: "BenchResult | None", json_out: bool) -> None:
    """The scores as one JSON object or a table; a set without ground truth reports its size only."""
    if json_out:
        scores = result.as_dict() if result else {"n_queries": n_captions}
        typer.echo(json_text({"split": split, "source": source, "n_clips": n_clips, **scores}))
        return
    if result is None:
        console.print(f"{title}: ranked {n_clips} clips for each of {n_captions} captions with {label}; its ground "
                      "truth is not published, so there are no scores to show.", highlight=False, soft_wrap=True)
        return
    caption = f"{label}\n{result.n_queries} captions, {n_clips} clips"
    table = Table(title=title, caption=caption)
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
