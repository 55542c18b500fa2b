"""The fine-tuning recipe: one dataclass whose fields are the `audiofind finetune` options, its JSON form and checks.

Free of torch, so the command line can read it without slowing `--help`.
"""

import logging
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from audiofind.errors import UsageError

log = logging.getLogger(__name__)

RUNTIME_FIELDS = (
    "device",
    "precision",
    "workers",
    "resume",
    "checkpoint_every",
    "max_steps",
    "out",
)  # free on --resume
PATH_FIELDS = ("clotho", "audiocaps", "captions", "db", "out")
DTYPE_ALIASES = {"auto": "auto", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # the old --dtype values
MAX_WORKERS = 4  # decoding keeps up with a GPU's training step at four processes


def default_workers() -> int:
    """Decoding processes per rank: MAX_WORKERS, but never more than the cores this process may run on."""
    try:
        cores = len(os.sched_getaffinity(0))  # what PyTorch's DataLoader compares the worker count with
    except AttributeError:  # macOS and Windows have no affinity mask
        cores = os.cpu_count() or 1
    return min(MAX_WORKERS, cores)


@dataclass(frozen=True)
class TrainConfig:
    """The recipe as defaults; every field is one `audiofind finetune` option and goes into each checkpoint."""

    name: str = "finetuned"  # the model name --weights accepts once training ends
    clotho: Path | None = None  # its development split trains, its validation split scores
    audiocaps: Path | None = None
    captions: Path | None = None  # a CSV of path,caption rows
    library: bool = False  # the indexed files, captioned with their own names and tags; val_fraction of them score
    db: Path | None = None  # the index --library reads (None: the default index)
    init: str | None = None  # starting weights, a name or a path (None: the default model)
    out: Path | None = None  # the run folder (None: <data dir>/runs/<name>)
    epochs: int = 40
    batch: int = 6  # pairs per contrastive batch over all ranks; each rank takes batch // world
    accum: int = 1  # micro-batches per optimizer step: each is its own contrastive batch, so it adds no negatives
    lr: float = 1e-5  # Adam, reached by a linear warm-up, then constant
    warmup_steps: int = 500
    label_smoothing: float = 0.1
    fbsp_weight: float = 1.0  # weight of the filter-norm regulariser of spec (d)
    dropout: float = 0.2  # on the pooled audio and text features before their projections, training only
    crop_seconds: float = 20.0  # random crops; shorter clips are padded with zeros
    grad_clip: float = 0.0  # 0: off, as in the recipe
    average_top: int = 5  # the best epochs by validation mAP@10 are averaged into the final model
    val_seconds: float = 30.0  # validation embeds each clip's first seconds (Clotho clips are 15 to 30 s)
    val_fraction: float = 0.1  # held out for validation from --library, or when the only data is --captions
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA where supported, else fp16 with a GradScaler; fp32 on CPU
    workers: int = field(default_factory=default_workers)  # decoding processes per rank
    resume: bool = False
    checkpoint_every: int = 500  # optimizer steps; a checkpoint is also written at every epoch's end
    max_steps: int | None = None  # stop, checkpointed, after this many steps in all; --resume continues


def config_dict(cfg: TrainConfig) -> dict:
    """Plain JSON-able form (paths as strings) for checkpoints, logs and the model card."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}


def config_from_dict(d: dict) -> TrainConfig:
    """Inverse of config_dict; unknown keys (from another version) are ignored."""
    known = {f.name for f in fields(TrainConfig)}
    values: dict[str, Any] = {
        k: Path(v) if k in PATH_FIELDS and v is not None else v for k, v in d.items() if k in known
    }
    return TrainConfig(**values)


def resumed_config(given: TrainConfig, saved: dict) -> TrainConfig:
    """The recipe a run started with, and this invocation's runtime settings; other options given anew are ignored."""
    start = config_from_dict(saved)
    for f in fields(TrainConfig):
        value = getattr(given, f.name)
        if f.name not in RUNTIME_FIELDS + ("name",) and value not in (f.default, getattr(start, f.name)):
            log.warning(
                "resuming: --%s stays %r as the run started (%r ignored)", f.name, getattr(start, f.name), value
            )
    return replace(start, **{k: getattr(given, k) for k in RUNTIME_FIELDS})


def check_config(cfg: TrainConfig, world: int) -> None:
    """UsageError for a recipe that cannot run on `world` processes."""
    if cfg.batch < 2 or cfg.batch % world:
        raise UsageError(f"--batch must be at least 2 and a multiple of the {world} process(es); got {cfg.batch}.")
    if min(cfg.epochs, cfg.accum, cfg.average_top) < 1 or cfg.crop_seconds <= 0:
        raise UsageError("--epochs, --accum and --average-top must be at least 1, and --crop-seconds above 0.")
