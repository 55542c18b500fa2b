"""A fine-tuning run as it goes: what stays fixed (Run), where it is (RunState), one optimizer step, an epoch's end,
the checkpoint, the metrics log, and the teardown that averages the best epochs and registers the model.
train/finetune.py sets a run up and drives the loop."""

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from audiofind.model import weights
from audiofind.model.audioclip import AudioCLIP
from audiofind.model.clap.config import CLAPConfig
from audiofind.model.clap.model import CLAP
from audiofind.model.config import AudioCLIPConfig
from audiofind.train import clap, data, runfolder
from audiofind.train.config import TrainConfig, config_dict
from audiofind.train.step import apply_gradients, step_loss
from audiofind.train.validation import score_validation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What a run did: how far it got, its validation scores, what it skipped, and the model it trained."""

    name: str
    path: Path | None  # the registered model file; None if the run stopped early, or on ranks other than 0
    out: Path
    finished: bool
    step: int
    total_steps: int
    history: list[dict]  # per epoch: epoch, step, train_loss, R1, R5, R10, mAP10, ...
    best_epochs: list[int]
    final: dict | None  # validation metrics of the averaged model
    problems: tuple[str, ...]  # data rows and files skipped when reading the sources
    unreadable: tuple[str, ...]  # files that failed to decode during training (replaced by the next clip)
    model: AudioCLIP | CLAP = field(repr=False)
    baseline: dict | None = None  # validation metrics of the starting weights, before any step
    thin: tuple[str, ...] = ()  # library files left out because their names and tags say too little
    notes: tuple[str, ...] = ()  # what of the recipe does not apply to this model (CLAP: the fbsp regulariser)


@dataclass
class RunState:
    """Where a run is: what a checkpoint keeps besides the weights, the optimizer and the random generators."""

    step: int = 0
    history: list[dict] = field(default_factory=list)  # one record per finished epoch
    epoch_loss: list = field(default_factory=lambda: [0.0, 0])  # the epoch's summed step losses, and its steps
    unreadable: set[str] = field(default_factory=set)
    baseline: dict | None = None


@dataclass(frozen=True)
class Run:
    """What stays fixed while a run trains: its recipe, its place among the ranks, its data, model and optimizer."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    amp: AbstractContextManager
    out: Path
    train_set: data.ClipSet
    val_set: data.ClipSet
    steps_per_epoch: int
    model_cfg: AudioCLIPConfig | CLAPConfig
    base: dict  # name and sha256 of the starting weights, and a CLAP model's tokenizer folder
    model: AudioCLIP | CLAP  # the unwrapped model: what is saved
    step_model: torch.nn.Module  # what steps: PairForward, under DDP on several ranks
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    on_metrics: Callable[[dict], None] | None

    @property
    def tokenizer(self) -> Path | None:
        """A CLAP model's tokenizer folder (its starting model's), None for AudioCLIP."""
        return Path(self.base["tokenizer"]) if self.base.get("tokenizer") else None

    @property
    def is_main(self) -> bool:
        """Rank 0, the only process that logs and writes files."""
        return self.rank == 0

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run."""
        return self.cfg.epochs * self.steps_per_epoch


def train_step(run: Run, state: RunState, micro: Iterator[dict]) -> float:
    """One optimizer step over cfg.accum micro-batches; returns its loss."""
    cfg, loss_sum = run.cfg, 0.0
    for k in range(cfg.accum):
        batch = next(micro)
        for reason in set(batch["unreadable"]) - state.unreadable:
            log.warning("unreadable, replaced by the next clip: %s", reason)
        state.unreadable.update(batch["unreadable"])
        if isinstance(run.step_model, DDP):  # sync gradients on the last micro-step only
            run.step_model.require_backward_grad_sync = k == cfg.accum - 1
        audio = batch["audio"].to(run.device, non_blocking=True)
        loss = step_loss(run.step_model, audio, batch["tokens"].to(run.device, non_blocking=True), cfg, run.amp)
        run.scaler.scale(loss / cfg.accum).backward()
        loss_sum += loss.item() / cfg.accum
    apply_gradients(run.model, run.optimizer, run.scaler, cfg.grad_clip)
    return loss_sum


def end_epoch(run: Run, state: RunState, epoch: int) -> None:
    """Score the epoch, then save: the checkpoint first, since the snapshot and the log line can be made from it."""
    scores = validation_scores(run, run.rank, run.world)
    state.history.append(
        {"epoch": epoch, "step": state.step, "train_loss": state.epoch_loss[0] / state.epoch_loss[1], **scores}
    )
    state.epoch_loss = [0.0, 0]
    checkpoint(run, state)
    if run.is_main:
        keep = runfolder.best_epochs(state.history, run.cfg.average_top)
        if epoch in keep:
            runfolder.save_snapshot(run.out, epoch, run.model.state_dict())
        runfolder.prune_snapshots(run.out, keep)
    record(run, {"kind": "epoch", **state.history[-1]})


def checkpoint(run: Run, state: RunState) -> None:
    """Everything an exact resume needs; gathering the random states is a collective, so every rank calls this."""
    rng = rng_states(run.device, run.world)
    if run.is_main:
        runfolder.save_checkpoint(
            run.out,
            {
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scaler": run.scaler.state_dict(),
                "step": state.step,
                "history": state.history,
                "epoch_loss": state.epoch_loss,
                "unreadable": sorted(state.unreadable),
                "rng": rng,
                "train_config": config_dict(run.cfg),
                "model_config": run.model_cfg.to_dict(),
                "base": run.base,
                "baseline": state.baseline,
            },
        )


def rng_states(device: torch.device, world: int) -> list[dict]:
    """Every rank's CPU and CUDA generator states, in rank order."""
    mine = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    if world == 1:
        return [mine]
    states: list = [None] * world
    dist.all_gather_object(states, mine)
    return states


def validation_scores(run: Run, rank: int, world: int) -> dict:
    """The model's validation metrics, without the list of clips that could not be decoded."""
    cfg = run.cfg
    scores = score_validation(
        run.model, run.val_set, run.device, run.amp, cfg.workers, cfg.val_seconds, rank, world, run.tokenizer
    )
    return {k: v for k, v in scores.items() if k != "unreadable"}


def record(run: Run, entry: dict) -> None:
    """Append one record to the metrics log and hand it to on_metrics (rank 0 only)."""
    if run.is_main:
        runfolder.append_record(run.out, entry)
        if run.on_metrics:
            run.on_metrics(entry)


def teardown(run: Run, state: RunState) -> TrainResult:
    """The result; on rank 0 of a finished run also the average of the best epochs, registered with its card."""
    finished = state.step >= run.total_steps
    if run.world > 1:
        for buffer in run.model.buffers():  # every rank ends with rank 0's BatchNorm statistics, the ones saved
            dist.broadcast(buffer, 0)
        dist.barrier()
    result = TrainResult(
        run.cfg.name,
        None,
        run.out,
        finished,
        state.step,
        run.total_steps,
        state.history,
        runfolder.best_epochs(state.history, run.cfg.average_top),
        None,
        run.train_set.problems + run.val_set.problems,
        tuple(sorted(state.unreadable)),
        run.model,
        state.baseline,
        run.train_set.thin,
    )
    if not (finished and run.is_main):
        return result
    run.model.load_state_dict(runfolder.average_snapshots(run.out, result.best_epochs))
    final = validation_scores(run, 0, 1)
    card = _card(run, result, final)
    model_state = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
    path = weights.save_model(model_state, run.cfg.name, run.model_cfg.to_dict(), card, run.tokenizer)
    runfolder.write_card(run.out, card)
    record(run, {"kind": "final", "step": state.step, "epochs": result.best_epochs, **final})
    return replace(result, path=path, final=final)


def _card(run: Run, result: TrainResult, final: dict) -> dict:
    """The model card: the base weights, the recipe, the data and the validation scores before and after."""
    train_set, val_set = run.train_set, run.val_set
    return {
        "description": f"{'CLAP' if run.tokenizer else 'AudioCLIP'} fine-tuned on {train_set.name} from {run.base['name']}.",
        "base": run.base,
        "recipe": config_dict(run.cfg),
        "model_config": run.model_cfg.to_dict(),
        "data": {
            "train": train_set.name,
            "train_clips": len(train_set),
            "left_out_thin_names": len(train_set.thin),
            "validation": val_set.name,
            "validation_clips": len(val_set),
            "skipped_rows": len(result.problems),
            "unreadable_files": len(result.unreadable),
        },
        "validation": {
            "averaged_epochs": result.best_epochs,
            "before": result.baseline,
            "final": final,
            "history": result.history,
        },
        "not_applied": clap.notes(run.cfg) if run.tokenizer else [],
    }
