"""Fine-tuning AudioCLIP or CLAP on captioned audio, nanoGPT style: config, setup, data, model, optimizer, loop,
teardown (the run as it goes: train/run.py). The model's family decides its forward, its crops and its tokenizer (CLAP's: train/clap.py).

It runs alone on the CPU or one GPU, or under `torchrun --nproc_per_node=N -m audiofind finetune ...` with the same
code: the environment decides. Only rank 0 logs, reports progress and writes files. A run's folder (runfolder.py)
holds the checkpoint (resumed exactly with --resume), the snapshots of the best epochs and a JSON-lines metrics log.
"""

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
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
from audiofind.train import batches, clap, data, runfolder
from audiofind.train.config import TrainConfig, check_config, resumed_config
from audiofind.train.loss import PairForward
from audiofind.train.run import (
    Run,
    RunState,
    TrainResult,
    checkpoint,
    end_epoch,
    record,
    teardown,
    train_step,
    validation_scores,
)
from audiofind.train.step import amp_context, float32_matmuls, prepare_for_training

log = logging.getLogger(__name__)


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
    steps_per_epoch = len(batches.epoch_batches(len(train_set), 0, cfg.seed, cfg.batch, rank, world)) // cfg.accum
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
        state.baseline = validation_scores(run, rank, world)
        record(run, {"kind": "baseline", "step": 0, **state.baseline})

    # ---- the loop
    _loop(run, state, dataset, collate_fn, progress)

    # ---- teardown: rank 0 averages the best epochs, scores the average and registers it
    return replace(teardown(run, state), notes=tuple(notes))


def _pairs(run: Run) -> tuple[batches.PairDataset, Callable[[list], dict]]:
    """The training pairs and how a batch of them is stacked, as the model's family takes them."""
    if isinstance(run.model, CLAP) and run.tokenizer is not None:
        return clap.pairs(run.train_set, run.cfg.seed, run.tokenizer, run.model.cfg)
    return batches.PairDataset(run.train_set, run.cfg.crop_seconds, run.cfg.seed), batches.collate


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


def _loop(
    run: Run,
    state: RunState,
    dataset: batches.PairDataset,
    collate_fn: Callable[[list], dict],
    progress: Callable[[int, int], None] | None,
) -> None:
    """Train from state.step to the run's end (or --max-steps): steps, records, epoch ends and checkpoints."""
    cfg, steps_per_epoch = run.cfg, run.steps_per_epoch
    last = time.perf_counter()
    loader, order = batches.pair_loader(dataset, cfg.workers, pin=run.device.type == "cuda", collate_fn=collate_fn)
    while state.step < run.total_steps and (cfg.max_steps is None or state.step < cfg.max_steps):
        epoch, first = divmod(state.step, steps_per_epoch)
        mine = batches.epoch_batches(len(run.train_set), epoch, cfg.seed, cfg.batch, run.rank, run.world)
        order.set(mine[first * cfg.accum : steps_per_epoch * cfg.accum], epoch)
        micro = iter(loader)
        for _ in range(first, steps_per_epoch):
            lr = lr_at(state.step, cfg)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            loss = train_step(run, state, micro)
            state.step += 1
            state.epoch_loss = [state.epoch_loss[0] + loss, state.epoch_loss[1] + 1]
            now = time.perf_counter()
            record(
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
                end_epoch(run, state, epoch + 1)
                last = time.perf_counter()
            elif state.step % cfg.checkpoint_every == 0 or state.step == cfg.max_steps:
                checkpoint(run, state)
            if state.step == cfg.max_steps:
                break
