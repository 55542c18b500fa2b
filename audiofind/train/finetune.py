"""Fine-tuning AudioCLIP or CLAP on captioned audio, nanoGPT style: config, setup, data, model, optimizer, loop,
teardown. The model's family decides its forward, its crops and its tokenizer (CLAP's: train/clap.py).

It runs alone on the CPU or one GPU, or under `torchrun --nproc_per_node=N -m audiofind finetune ...` with the same
code: the environment decides. Only rank 0 logs, reports progress and writes files. A run's folder (runfolder.py)
holds the checkpoint (resumed exactly with --resume), the snapshots of the best epochs and a JSON-lines metrics log.
"""

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from audiofind import paths
from audiofind.device import resolve_device
from audiofind.errors import DatasetError, UsageError
from audiofind.model import weights
from audiofind.model.audioclip import AudioCLIP
from audiofind.model.clap.config import CLAPConfig
from audiofind.model.clap.model import CLAP
from audiofind.model.config import AudioCLIPConfig
from audiofind.model.load import from_state_dict
from audiofind.train import clap, data, runfolder
from audiofind.train.config import TrainConfig, check_config, config_dict, resumed_config
from audiofind.train.loss import PairForward
from audiofind.train.step import amp_context, apply_gradients, float32_matmuls, prepare_for_training, step_loss
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


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up to cfg.lr, then constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


def finetune(
    cfg: TrainConfig,
    progress: Callable[[int, int], None] | None = None,
    on_metrics: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Fine-tune both towers and register the average of the best epochs as model `cfg.name`.

    progress(step, total_steps) follows the optimizer steps; on_metrics receives every record of the metrics
    log (kind "step", "epoch" or "final"). Both are called on rank 0 only.
    """
    rank = int(os.environ.get("RANK", -1))  # set by torchrun, absent otherwise
    distributed = rank != -1
    rank, world = max(rank, 0), int(os.environ.get("WORLD_SIZE", 1)) if distributed else 1
    device = resolve_device(cfg.device)
    if distributed:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        main = rank == 0
        with float32_matmuls(cfg.precision):
            return _finetune(cfg, rank, world, device, progress if main else None, on_metrics if main else None)
    finally:
        if distributed:
            dist.destroy_process_group()


def _finetune(
    cfg: TrainConfig,
    rank: int,
    world: int,
    device: torch.device,
    progress: Callable[[int, int], None] | None,
    on_metrics: Callable[[dict], None] | None,
) -> TrainResult:
    """The run itself, top to bottom: folder, data, model, optimizer, baseline, loop, teardown."""
    # ---- the run folder; on --resume the checkpoint's recipe wins and only runtime settings come from cfg
    out = Path(cfg.out or paths.run_dir(cfg.name)).expanduser()
    ckpt = runfolder.load_checkpoint(out) if cfg.resume else None
    if ckpt:
        cfg = resumed_config(cfg, ckpt["train_config"])
    else:
        _check_new_run(out, cfg.name)
    check_config(cfg, world)
    dtype, amp = amp_context(cfg.precision, device)

    # ---- data: every rank reads the same lists; batches come from (seed, epoch) alone
    train_set, val_set = data.load_sources(
        cfg.clotho, cfg.audiocaps, cfg.captions, cfg.val_fraction, cfg.seed, cfg.library, cfg.db
    )
    steps_per_epoch = len(data.epoch_batches(len(train_set), 0, cfg.seed, cfg.batch, rank, world)) // cfg.accum
    if steps_per_epoch == 0:
        raise DatasetError(
            f"{len(train_set)} training clips do not fill one step of {cfg.batch} x {cfg.accum} pairs; "
            "lower --batch or --accum."
        )

    # ---- model: the checkpoint's when resuming, else the init weights
    model_cfg, base, model = _starting_model(cfg, ckpt, out, rank, world)
    notes = clap.notes(cfg) if isinstance(model, CLAP) else []
    for note in notes:
        log.warning("%s", note)
    if isinstance(model, AudioCLIP):
        prepare_for_training(model, cfg.dropout)
    model.to(device).train()
    step_model: torch.nn.Module = (
        PairForward(model) if isinstance(model, AudioCLIP) else clap.ClapPairForward(model, cfg.dropout)
    )
    if world > 1:
        step_model = DDP(step_model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    log.info(
        "fine-tuning %d parameters on %s (%s), %d x %d steps",
        sum(p.numel() for p in params),
        device,
        str(dtype).removeprefix("torch."),
        cfg.epochs,
        steps_per_epoch,
    )

    # ---- optimizer, and the exact state of an interrupted run
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # a no-op unless fp16
    state = _resumed_state(ckpt, optimizer, scaler, cfg.seed, rank, world, device) if ckpt else RunState()
    if not ckpt:
        torch.manual_seed(cfg.seed + rank)  # dropout differs between ranks
    run = Run(
        cfg,
        rank,
        world,
        device,
        amp,
        out,
        train_set,
        val_set,
        steps_per_epoch,
        model_cfg,
        base,
        model,
        step_model,
        optimizer,
        scaler,
        on_metrics,
    )
    dataset, collate_fn = _pairs(run)
    if run.is_main:
        runfolder.start(out, ckpt, cfg.average_top)

    # ---- the starting weights scored on the validation set, so the run can say what fine-tuning changed
    if not ckpt:
        state.baseline = _validation_scores(run, rank, world)
        _record(run, {"kind": "baseline", "step": 0, **state.baseline})

    # ---- the loop
    last = time.perf_counter()
    loader, order = data.pair_loader(dataset, cfg.workers, pin=device.type == "cuda", collate_fn=collate_fn)
    while state.step < run.total_steps and (cfg.max_steps is None or state.step < cfg.max_steps):
        epoch, first = divmod(state.step, steps_per_epoch)
        batches = data.epoch_batches(len(train_set), epoch, cfg.seed, cfg.batch, rank, world)
        order.set(batches[first * cfg.accum : steps_per_epoch * cfg.accum], epoch)
        micro = iter(loader)
        for _ in range(first, steps_per_epoch):
            lr = lr_at(state.step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = _train_step(run, state, micro)
            state.step += 1
            state.epoch_loss = [state.epoch_loss[0] + loss, state.epoch_loss[1] + 1]
            now = time.perf_counter()
            _record(
                run,
                {
                    "kind": "step",
                    "step": state.step,
                    "epoch": epoch + 1,
                    "loss": loss,
                    "lr": lr,
                    "clips_per_s": cfg.batch * cfg.accum / max(now - last, 1e-9),
                },
            )
            last = now
            if progress:
                progress(state.step, run.total_steps)
            if state.step % steps_per_epoch == 0:  # the epoch's end: score, checkpoint, keep the best snapshots
                _end_epoch(run, state, epoch + 1)
                last = time.perf_counter()
            elif state.step % cfg.checkpoint_every == 0 or state.step == cfg.max_steps:
                _checkpoint(run, state)
            if state.step == cfg.max_steps:
                break

    # ---- teardown: rank 0 averages the best epochs, scores the average and registers it
    return replace(_teardown(run, state), notes=tuple(notes))


def _pairs(run: Run) -> tuple[data.PairDataset, Callable[[list], dict]]:
    """The training pairs and how a batch of them is stacked, as the model's family takes them."""
    if isinstance(run.model, CLAP) and run.tokenizer is not None:
        return clap.pairs(run.train_set, run.cfg.seed, run.tokenizer, run.model.cfg)
    return data.PairDataset(run.train_set, run.cfg.crop_seconds, run.cfg.seed), data.collate


def _check_new_run(out: Path, name: str) -> None:
    """UsageError unless both the run folder and the model name are free for a new run."""
    if (out / runfolder.CHECKPOINT).exists():
        raise UsageError(f"{out} already holds a run; continue it with --resume, or pick another --name or --out.")
    weights.check_name(name)
    for m in weights.available_models():
        if m.name == name and (m.source == "registered" or m.path is not None):
            raise UsageError(
                f"A model named '{name}' already exists; pick another --name or remove it first "
                f"(audiofind weights remove {name})."
            )


def _starting_model(
    cfg: TrainConfig, ckpt: dict | None, out: Path, rank: int, world: int
) -> tuple[AudioCLIPConfig | CLAPConfig, dict, AudioCLIP | CLAP]:
    """(its config, the base weights' name and sha256, the model): the checkpoint's, else the init weights'."""
    if ckpt and ckpt["base"].get("tokenizer"):  # a CLAP run
        model = clap.whole_model(ckpt["model"], ckpt["model_config"], str(out / runfolder.CHECKPOINT))
        return model.cfg, ckpt["base"], model
    if ckpt:
        model_cfg = AudioCLIPConfig.from_dict(ckpt["model_config"])
        return model_cfg, ckpt["base"], _whole_model(ckpt["model"], model_cfg, str(out / runfolder.CHECKPOINT))
    if world > 1 and rank != 0:
        dist.barrier()  # rank 0 resolves first: a .pt init is converted once, then the others find the result
    resolved = weights.resolve(cfg.init)
    if world > 1 and rank == 0:
        dist.barrier()
    if resolved.family == "clap":
        clap_cfg, clap_model = clap.start_model(resolved)
        return (
            clap_cfg,
            {"name": resolved.name, "sha256": resolved.sha256, "tokenizer": str(resolved.tokenizer)},
            clap_model,
        )
    model_cfg = AudioCLIPConfig.from_dict(resolved.config) if resolved.config else AudioCLIPConfig()
    base = {"name": resolved.name, "sha256": resolved.sha256}
    return model_cfg, base, _whole_model(weights.read_state_dict(resolved), model_cfg, f"Model '{resolved.name}'")


def _whole_model(state: dict[str, torch.Tensor], model_cfg: AudioCLIPConfig, source: str) -> AudioCLIP:
    """Both towers from a state dict, as the one AudioCLIP module that trains."""
    model = from_state_dict(state, model_cfg, source=source)
    assert isinstance(model, AudioCLIP), f"{source} loaded as {type(model).__name__}, not AudioCLIP"
    return model


def _resumed_state(
    ckpt: dict,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    seed: int,
    rank: int,
    world: int,
    device: torch.device,
) -> RunState:
    """Put the optimizer, the scaler and the random generators back as the checkpoint left them."""
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    state = RunState(ckpt["step"], ckpt["history"], ckpt["epoch_loss"], set(ckpt["unreadable"]), ckpt.get("baseline"))
    if len(ckpt["rng"]) == world:
        torch.set_rng_state(ckpt["rng"][rank]["cpu"])
        if device.type == "cuda" and ckpt["rng"][rank]["cuda"] is not None:
            torch.cuda.set_rng_state(ckpt["rng"][rank]["cuda"], device)
    else:
        log.warning("resuming on %d processes instead of %d: dropout draws new random numbers", world, len(ckpt["rng"]))
        torch.manual_seed(seed + rank + state.step)
    return state


def _train_step(run: Run, state: RunState, micro: Iterator[dict]) -> float:
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


def _end_epoch(run: Run, state: RunState, epoch: int) -> None:
    """Score the epoch, then save: the checkpoint first, since the snapshot and the log line can be made from it."""
    scores = _validation_scores(run, run.rank, run.world)
    state.history.append(
        {"epoch": epoch, "step": state.step, "train_loss": state.epoch_loss[0] / state.epoch_loss[1], **scores}
    )
    state.epoch_loss = [0.0, 0]
    _checkpoint(run, state)
    if run.is_main:
        keep = runfolder.best_epochs(state.history, run.cfg.average_top)
        if epoch in keep:
            runfolder.save_snapshot(run.out, epoch, run.model.state_dict())
        runfolder.prune_snapshots(run.out, keep)
    _record(run, {"kind": "epoch", **state.history[-1]})


def _checkpoint(run: Run, state: RunState) -> None:
    """Everything an exact resume needs; gathering the random states is a collective, so every rank calls this."""
    rng = _rng_states(run.device, run.world)
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


def _rng_states(device: torch.device, world: int) -> list[dict]:
    """Every rank's CPU and CUDA generator states, in rank order."""
    mine = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    if world == 1:
        return [mine]
    states: list = [None] * world
    dist.all_gather_object(states, mine)
    return states


def _validation_scores(run: Run, rank: int, world: int) -> dict:
    """The model's validation metrics, without the list of clips that could not be decoded."""
    cfg = run.cfg
    scores = score_validation(
        run.model, run.val_set, run.device, run.amp, cfg.workers, cfg.val_seconds, rank, world, run.tokenizer
    )
    return {k: v for k, v in scores.items() if k != "unreadable"}


def _record(run: Run, entry: dict) -> None:
    """Append one record to the metrics log and hand it to on_metrics (rank 0 only)."""
    if run.is_main:
        runfolder.append_record(run.out, entry)
        if run.on_metrics:
            run.on_metrics(entry)


def _teardown(run: Run, state: RunState) -> TrainResult:
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
    final = _validation_scores(run, 0, 1)
    card = _card(run, result, final)
    model_state = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
    path = weights.save_model(model_state, run.cfg.name, run.model_cfg.to_dict(), card, run.tokenizer)
    runfolder.write_card(run.out, card)
    _record(run, {"kind": "final", "step": state.step, "epochs": result.best_epochs, **final})
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
