"""`audiofind finetune`: fine-tune both towers on captioned audio and register the result as a model."""

import logging
import os
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from audiofind.cli.common import DbOpt, DeviceOpt, JsonOpt, app, console, err_console, json_text
from audiofind.train.config import DTYPE_ALIASES, TrainConfig, default_workers  # torch-free, unlike the loop

# Defaults repeat TrainConfig's so that --help never imports torch; a test keeps the two equal.


@app.command()
def finetune(
    name: Annotated[
        str, typer.Option(help="Name of the fine-tuned model; --weights NAME uses it afterwards.")
    ] = "finetuned",
    clotho: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            show_default=False,
            help="Clotho v2 folder: development trains, validation scores each epoch.",
        ),
    ] = None,
    audiocaps: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            show_default=False,
            help="AudioCaps folder: train.csv (and val.csv) beside the audio, or in train/ and val/.",
        ),
    ] = None,
    captions: Annotated[
        Path | None,
        typer.Option(
            metavar="CSV", show_default=False, help="Your own pairs: rows of path,caption, paths relative to the CSV."
        ),
    ] = None,
    library: Annotated[
        bool,
        typer.Option(
            "--library",
            help="Your indexed sounds, captioned with their own file and "
            "folder names and title, description and comment tags; --val-fraction of them is held out "
            "and scored before and after.",
        ),
    ] = False,
    db: DbOpt = None,
    init: Annotated[
        str | None,
        typer.Option(
            metavar="NAME|PATH",
            show_default=False,
            envvar="AUDIOFIND_WEIGHTS",
            help="Weights to start from (default: AUDIOFIND_WEIGHTS, else the model other commands use).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            show_default=False,
            help="Run folder for checkpoints, best-epoch snapshots and the metrics log (default: runs/NAME "
            "in the data folder).",
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training clips.")] = 40,
    batch: Annotated[int, typer.Option(help="Pairs per contrastive batch, over all processes.")] = 6,
    accum: Annotated[
        int,
        typer.Option(
            help="Micro-batches per optimizer step. Each is its own contrastive batch: "
            "accumulation adds no negatives, only averages gradients."
        ),
    ] = 1,
    lr: Annotated[float, typer.Option(help="Adam learning rate after the warm-up.")] = 1e-5,
    warmup_steps: Annotated[int, typer.Option(help="Steps of linear learning-rate warm-up.")] = 500,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing of both cross-entropies.")] = 0.1,
    fbsp_weight: Annotated[float, typer.Option(help="Weight of the filter-bank norm regulariser.")] = 1.0,
    dropout: Annotated[
        float, typer.Option(help="Dropout on the pooled audio and text features (training only).")
    ] = 0.2,
    crop_seconds: Annotated[float, typer.Option(help="Length of the random crops; shorter clips are padded.")] = 20.0,
    grad_clip: Annotated[float, typer.Option(help="Clip the gradient norm to this (0: off).")] = 0.0,
    average_top: Annotated[int, typer.Option(help="Average the weights of this many best epochs.")] = 5,
    val_seconds: Annotated[float, typer.Option(help="Validation embeds each clip's first seconds.")] = 30.0,
    val_fraction: Annotated[
        float, typer.Option(help="Clips held out for validation from --library, or when only --captions is given.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the data order, crops, captions and dropout.")] = 0,
    device: DeviceOpt = "auto",
    precision: Annotated[
        str,
        typer.Option(
            metavar="auto|fp32|tf32|bf16",
            help="Arithmetic: auto (bf16 on CUDA, fp32 on "
            "CPU), fp32, tf32 (float32 on TF32 tensor cores) or bf16 (mixed precision).",
        ),
    ] = "auto",
    dtype: Annotated[
        str | None, typer.Option(hidden=True, help="Old name of --precision: auto, float32, bfloat16 or float16.")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Decoding processes per training process (by default 4, or fewer on a machine with fewer cores)."
        ),
    ] = default_workers(),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the interrupted run of --name (or --out) exactly.")
    ] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Also checkpoint every this many steps.")] = 500,
    max_steps: Annotated[
        int | None,
        typer.Option(show_default=False, help="Stop after this many steps in all, checkpointed; --resume continues."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Fine-tune both towers on captioned audio; the average of the best epochs becomes the model --name.

    Several GPUs: torchrun --nproc_per_node=N -m audiofind finetune ...
    """
    from audiofind.errors import UsageError
    from audiofind.train.finetune import finetune as run

    if dtype is not None:  # kept so that old scripts run: each old value means what it did
        if dtype not in DTYPE_ALIASES:
            raise UsageError(f"Unknown --dtype {dtype!r}; use --precision auto, fp32, tf32 or bf16.")
        precision = DTYPE_ALIASES[dtype]
    options = dict(locals())
    cfg = TrainConfig(**{k: options[k] for k in TrainConfig.__dataclass_fields__})
    main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 draws, prints and logs
    if not main:
        logging.getLogger("audiofind").setLevel(logging.ERROR)
    try:
        with _training_progress(enabled=main and not json_out) as (progress, on_metrics):
            result = run(cfg, progress, on_metrics)
    except KeyboardInterrupt:
        if main:
            err_console.print(_interrupted(cfg), highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    if not main:
        return
    summary = {
        "name": result.name,
        "path": str(result.path) if result.path else None,
        "out": str(result.out),
        "finished": result.finished,
        "step": result.step,
        "total_steps": result.total_steps,
        "best_epochs": result.best_epochs,
        "validation": result.final,
        "skipped_rows": len(result.problems),
        "unreadable_files": len(result.unreadable),
        "history": result.history,
        "baseline": result.baseline,
        "thin_files": len(result.thin),
        "notes": list(result.notes),
    }
    for note in result.notes:  # what of the recipe does not apply to this model's family
        err_console.print(note, highlight=False, soft_wrap=True)
    if json_out:
        typer.echo(json_text(summary))
        return
    if result.thin:
        err_console.print(
            f"Left out {len(result.thin)} files whose names and tags have fewer than two real words "
            "(numbers and take markers do not count).",
            highlight=False,
        )
    if result.problems or result.unreadable:
        err_console.print(
            f"Skipped {len(result.problems)} bad rows or missing files and replaced "
            f"{len(result.unreadable)} unreadable files (details in the log above).",
            highlight=False,
        )
    if not result.finished:
        console.print(
            f"Stopped after step {result.step} of {result.total_steps}; continue with: {_resume_command(cfg)}",
            highlight=False,
            soft_wrap=True,
        )
        return
    console.print(
        f"Saved {result.name} ({result.path}), the average of epochs "
        f"{', '.join(map(str, result.best_epochs))}. Use it with --weights {result.name}.",
        highlight=False,
        soft_wrap=True,
    )
    queries = (result.final or {}).get("n_queries", 0)
    console.print(f"Text-to-audio retrieval on the validation set ({queries} captions):", highlight=False)
    for label, scores in (("before", result.baseline), ("after", result.final)):
        if scores:
            console.print(f"  {label:<6} {_scores(scores)}", highlight=False)


def _resume_command(cfg: TrainConfig) -> str:
    """The exact command that continues this run."""
    again = f"--out {shlex.quote(str(cfg.out))}" if cfg.out else f"--name {shlex.quote(cfg.name)}"
    return f"audiofind finetune {again} --resume"


def _interrupted(cfg: TrainConfig) -> str:
    """What Ctrl-C left behind, and how to go on."""
    from audiofind import paths

    if (Path(cfg.out or paths.run_dir(cfg.name)).expanduser() / paths.RUN_CHECKPOINT).is_file():
        return f"Interrupted; continue from the last checkpoint with: {_resume_command(cfg)}"
    return (
        "Interrupted before the first checkpoint, so there is nothing to resume; run the same command to start again."
    )


def _scores(m: dict) -> str:
    """The four retrieval metrics on one line."""
    return f"R@1 {m['R1']:.4f}  R@5 {m['R5']:.4f}  R@10 {m['R10']:.4f}  mAP@10 {m['mAP10']:.4f}"


@contextmanager
def _training_progress(enabled: bool) -> Iterator[tuple[Callable[[int, int], None], Callable[[dict], None]]]:
    """A step bar on stderr with loss, learning rate, clips per second and ETA; a line per epoch."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.2e}  {task.fields[speed]:.1f} clips/s"),
        TimeRemainingColumn(),
    )
    show = enabled and err_console.is_terminal
    with Progress(*columns, console=err_console, transient=True, disable=not show) as bar:
        task = bar.add_task("Fine-tuning", total=None, loss=float("nan"), lr=0.0, speed=0.0)

        def progress(step: int, total: int) -> None:
            bar.update(task, completed=step, total=total)

        def on_metrics(entry: dict) -> None:
            if entry["kind"] == "step":
                bar.update(task, loss=entry["loss"], lr=entry["lr"], speed=entry["clips_per_s"])
            elif entry["kind"] == "baseline" and enabled:
                bar.console.print(f"before fine-tuning: validation {_scores(entry)}", highlight=False)
            elif entry["kind"] == "epoch" and enabled:
                bar.console.print(
                    f"epoch {entry['epoch']}: train loss {entry['train_loss']:.4f}, validation "
                    f"mAP@10 {entry['mAP10']:.4f}, R@1 {entry['R1']:.4f}, R@10 {entry['R10']:.4f}",
                    highlight=False,
                )

        yield progress, on_metrics
