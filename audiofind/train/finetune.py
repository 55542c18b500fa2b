"""Fine-tuning AudioCLIP on captioned audio, nanoGPT style: config, setup, data, model, optimizer, loop, teardown.

It runs alone on the CPU or one GPU, or under `torchrun --nproc_per_node=N -m audiofind finetune ...` with the same
code: the environment decides. Only rank 0 logs, reports progress and writes files. A run's folder holds the
checkpoint (resumed exactly with --resume), the snapshots of the best epochs and a JSON-lines metrics log.
"""

import json
import logging
import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel as DDP

from audiofind import paths
from audiofind.audio.decode import SAMPLE_RATE
from audiofind.device import resolve_device
from audiofind.errors import DatasetError, UsageError, WeightsError
from audiofind.eval.metrics import ranks_from_scores, summarize
from audiofind.model import weights
from audiofind.model.audioclip import AudioCLIP
from audiofind.model.config import AudioCLIPConfig
from audiofind.model.encoder import from_model
from audiofind.model.load import from_state_dict
from audiofind.model.tokenizer import tokenize
from audiofind.train import data
from audiofind.train.loss import PairForward, contrastive_loss, gather_batch, rescale_fbsp_grads

log = logging.getLogger(__name__)

CHECKPOINT, METRICS_LOG, SNAPSHOTS = paths.RUN_CHECKPOINT, paths.RUN_METRICS, paths.RUN_SNAPSHOTS
RUNTIME_FIELDS = ("device", "precision", "workers", "resume", "checkpoint_every", "max_steps", "out")  # free on --resume
PATH_FIELDS = ("clotho", "audiocaps", "captions", "db", "out")
VAL_AUDIO_BATCH = 16
# fp32 and tf32 both compute in float32; tf32 lets CUDA tensor cores round matmul and convolution inputs to TF32.
# fp16 is what auto picks on GPUs without bf16, with a GradScaler.
PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_ALIASES = {"auto": "auto", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # the old --dtype values


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
    workers: int = 4  # decoding processes per rank
    resume: bool = False
    checkpoint_every: int = 500  # optimizer steps; a checkpoint is also written at every epoch's end
    max_steps: int | None = None  # stop, checkpointed, after this many steps in all; --resume continues


@dataclass(frozen=True)
class TrainResult:
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
    model: AudioCLIP = field(repr=False)
    baseline: dict | None = None  # validation metrics of the starting weights, before any step
    thin: tuple[str, ...] = ()  # library files left out because their names and tags say too little


def config_dict(cfg: TrainConfig) -> dict:
    """Plain JSON-able form (paths as strings) for checkpoints, logs and the model card."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}


def config_from_dict(d: dict) -> TrainConfig:
    """Inverse of config_dict; unknown keys (from another version) are ignored."""
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: Path(v) if k in PATH_FIELDS and v is not None else v for k, v in d.items() if k in known})


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up to cfg.lr, then constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


def best_epochs(history: list[dict], k: int, key: str = "mAP10") -> list[int]:
    """The k epochs with the highest validation score, best first; a tie goes to the earlier epoch."""
    return [h["epoch"] for h in sorted(history, key=lambda h: (-h[key], h["epoch"]))[:k]]


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors (summed in float64); other tensors are taken from the first."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = (sum(s[key].double() for s in states) / len(states)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


@torch.no_grad()
def evaluate(model: AudioCLIP, clips: data.ClipSet, device: torch.device, amp: AbstractContextManager | None = None,
             workers: int = 0, max_seconds: float = 30.0, rank: int = 0, world: int = 1) -> dict:
    """R@1/5/10 and mAP@10 of text-to-audio retrieval, every caption a query (metrics.py, as `bench clotho`).

    Under torchrun each rank embeds its share of clips and captions and all ranks get the same result.
    Clips that cannot be decoded leave the ranking together with their captions (listed under "unreadable").
    """
    was_training = model.training
    enc = from_model(model, model.cfg, device, "validation", "")
    mine = list(range(rank, len(clips), world))
    queries = [(i, c) for i, clip in enumerate(clips.clips) for c in clip.captions]
    audio: dict[int, np.ndarray] = {}
    failed: dict[int, str] = {}
    with amp or nullcontext():
        pending: list[tuple[int, np.ndarray]] = []
        for j, x in data.file_loader([clips.clips[i].path for i in mine], max_seconds, workers):
            if isinstance(x, str):
                failed[mine[j]] = x
            else:
                pending.append((mine[j], x))
            if pending and (len(pending) == VAL_AUDIO_BATCH or j == len(mine) - 1):
                audio.update(zip([i for i, _ in pending], enc.embed_audio([x for _, x in pending])))
                pending = []
        my_queries = list(range(rank, len(queries), world))
        text = dict(zip(my_queries, enc.embed_text([queries[q][1] for q in my_queries]))) if my_queries else {}
    model.train(was_training)
    if world > 1:
        parts: list = [None] * world
        dist.all_gather_object(parts, (audio, failed, text))
        audio, failed, text = ({k: v for part in parts for k, v in part[n].items()} for n in range(3))
    for reason in failed.values():
        log.warning("validation clip skipped: %s", reason)
    keep = [i for i in range(len(clips)) if i in audio]
    if not keep:
        raise DatasetError(f"None of the {len(clips)} validation clips of {clips.name} could be decoded.")
    column = {i: c for c, i in enumerate(keep)}
    asked = [q for q in range(len(queries)) if queries[q][0] in column]
    a = np.stack([audio[i] for i in keep])  # (A, D)
    t = np.stack([text[q] for q in asked])  # (Q, D)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    result = summarize(ranks_from_scores(t @ a.T, np.array([column[queries[q][0]] for q in asked])))
    return {**result.metrics, "n_queries": len(asked), "n_clips": len(keep), "unreadable": sorted(failed.values())}


def _amp(precision: str, device: torch.device) -> tuple[torch.dtype, AbstractContextManager]:
    """The autocast dtype and context: bf16 where the GPU supports it, else fp16; none on the CPU by default."""
    if precision == "auto":
        precision = "fp32" if device.type != "cuda" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    elif precision not in PRECISIONS:
        raise UsageError(f"Unknown --precision {precision!r}; use auto, fp32, tf32 or bf16.")
    dtype = PRECISIONS[precision]
    return dtype, nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


@contextmanager
def float32_matmuls(precision: str) -> Iterator[None]:
    """For the run, float32 matmuls and convolutions in full precision (fp32) or on TF32 tensor cores (tf32)."""
    if precision not in ("fp32", "tf32"):
        yield
        return
    backends = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
    saved = [b.fp32_precision for b in backends]
    for b in backends:
        b.fp32_precision = "ieee" if precision == "fp32" else "tf32"
    try:
        yield
    finally:
        for b, value in zip(backends, saved):
            b.fp32_precision = value


def _forward_loss(step_model: torch.nn.Module, audio: torch.Tensor, tokens: torch.Tensor, cfg: TrainConfig,
                  amp: AbstractContextManager) -> torch.Tensor:
    """One micro-batch: contrastive loss over the global batch plus the weighted fbsp regulariser."""
    with amp:
        a, t, scale, penalty = step_model(audio, tokens)  # (b, D), (b, D), (), ()
    return contrastive_loss(gather_batch(a), gather_batch(t), scale, cfg.label_smoothing) + cfg.fbsp_weight * penalty


def _save(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a run killed while saving keeps its previous checkpoint


def _rng_states(device: torch.device, world: int) -> list[dict]:
    mine = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    if world == 1:
        return [mine]
    states: list = [None] * world
    dist.all_gather_object(states, mine)
    return states


def _snapshot(out: Path, epoch: int) -> Path:
    return out / SNAPSHOTS / f"epoch-{epoch:03d}.safetensors"


def _prune_snapshots(out: Path, keep: list[int]) -> None:
    wanted = {_snapshot(out, e) for e in keep}
    for p in (out / SNAPSHOTS).glob("epoch-*.safetensors"):
        if p not in wanted:
            p.unlink()


def _check_new_name(name: str) -> None:
    weights.check_name(name)
    for m in weights.available_models():
        if m.name == name and (m.source == "registered" or m.path is not None):
            raise UsageError(f"A model named '{name}' already exists; pick another --name or remove it first "
                             f"(audiofind weights remove {name}).")


def finetune(cfg: TrainConfig, progress: Callable[[int, int], None] | None = None,
             on_metrics: Callable[[dict], None] | None = None) -> TrainResult:
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


def _finetune(cfg: TrainConfig, rank: int, world: int, device: torch.device,
              progress: Callable[[int, int], None] | None, on_metrics: Callable[[dict], None] | None) -> TrainResult:
    is_main = rank == 0
    # ---- the run folder; on --resume the checkpoint's recipe wins and only runtime settings come from cfg
    out = Path(cfg.out or paths.run_dir(cfg.name)).expanduser()
    ckpt_path, log_path = out / CHECKPOINT, out / METRICS_LOG
    ckpt = None
    if cfg.resume:
        if not ckpt_path.is_file():
            raise UsageError(f"Nothing to resume: there is no {CHECKPOINT} in {out}.")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved = config_from_dict(ckpt["train_config"])
        for f in fields(TrainConfig):
            given = getattr(cfg, f.name)
            if f.name not in RUNTIME_FIELDS + ("name",) and given not in (f.default, getattr(saved, f.name)):
                log.warning("resuming: --%s stays %r as the run started (%r ignored)", f.name, getattr(saved, f.name), given)
        cfg = replace(saved, **{k: getattr(cfg, k) for k in RUNTIME_FIELDS})
    else:
        if ckpt_path.exists():
            raise UsageError(f"{out} already holds a run; continue it with --resume, or pick another --name or --out.")
        _check_new_name(cfg.name)
    if cfg.batch < 2 or cfg.batch % world:
        raise UsageError(f"--batch must be at least 2 and a multiple of the {world} process(es); got {cfg.batch}.")
    if min(cfg.epochs, cfg.accum, cfg.average_top) < 1 or cfg.crop_seconds <= 0:
        raise UsageError("--epochs, --accum and --average-top must be at least 1, and --crop-seconds above 0.")
    dtype, amp = _amp(cfg.precision, device)

    # ---- data: every rank reads the same lists; batches come from (seed, epoch) alone
    train_set, val_set = data.load_sources(cfg.clotho, cfg.audiocaps, cfg.captions, cfg.val_fraction, cfg.seed,
                                           cfg.library, cfg.db)
    dataset = data.PairDataset(train_set, cfg.crop_seconds, cfg.seed)
    steps_per_epoch = len(data.epoch_batches(len(train_set), 0, cfg.seed, cfg.batch, rank, world)) // cfg.accum
    if steps_per_epoch == 0:
        raise DatasetError(f"{len(train_set)} training clips do not fill one step of {cfg.batch} x {cfg.accum} pairs; "
                           "lower --batch or --accum.")
    total_steps = cfg.epochs * steps_per_epoch

    # ---- model: the checkpoint's when resuming, else the init weights
    if ckpt:
        model_cfg, base = AudioCLIPConfig.from_dict(ckpt["model_config"]), ckpt["base"]
        model = from_state_dict(ckpt["model"], model_cfg, source=str(ckpt_path))
    else:
        if world > 1 and not is_main:
            dist.barrier()  # rank 0 resolves first: a .pt init is converted once, then the others find the result
        resolved = weights.resolve(cfg.init)
        if world > 1 and is_main:
            dist.barrier()
        model_cfg = AudioCLIPConfig.from_dict(resolved.config) if resolved.config else AudioCLIPConfig()
        base = {"name": resolved.name, "sha256": resolved.sha256}
        model = from_state_dict(weights.read_state_dict(resolved), model_cfg, source=f"Model '{resolved.name}'")
    model.audio.dropout.p = model.text_dropout.p = cfg.dropout
    model.audio.fbsp.bias.requires_grad_(False)  # empty and never used: DDP would wait for its gradient forever
    raw_model = model.to(device).train()
    step_model: torch.nn.Module = PairForward(raw_model)
    if world > 1:
        step_model = DDP(step_model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in raw_model.parameters() if p.requires_grad]
    log.info("fine-tuning %d parameters on %s (%s), %d x %d steps", sum(p.numel() for p in params), device,
             str(dtype).removeprefix("torch."), cfg.epochs, steps_per_epoch)

    # ---- optimizer, and the exact state of an interrupted run
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # a no-op unless fp16
    step, history, epoch_loss, unreadable, baseline = 0, [], [0.0, 0], set(), None
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        step, history, epoch_loss, unreadable = ckpt["step"], ckpt["history"], ckpt["epoch_loss"], set(ckpt["unreadable"])
        baseline = ckpt.get("baseline")
        if len(ckpt["rng"]) == world:
            torch.set_rng_state(ckpt["rng"][rank]["cpu"])
            if device.type == "cuda" and ckpt["rng"][rank]["cuda"] is not None:
                torch.cuda.set_rng_state(ckpt["rng"][rank]["cuda"], device)
        else:
            log.warning("resuming on %d processes instead of %d: dropout draws new random numbers", world, len(ckpt["rng"]))
            torch.manual_seed(cfg.seed + rank + step)
    else:
        torch.manual_seed(cfg.seed + rank)  # dropout differs between ranks
    if is_main:
        (out / SNAPSHOTS).mkdir(parents=True, exist_ok=True)
        _prune_snapshots(out, best_epochs(history, cfg.average_top))
        lines = log_path.read_text().splitlines() if ckpt and log_path.is_file() else []
        kept = [line for line in lines if json.loads(line)["step"] <= step]  # drop what came after the checkpoint
        log_path.write_text("".join(line + "\n" for line in kept))

    def record(entry: dict) -> None:
        if is_main:
            with log_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")
            if on_metrics:
                on_metrics(entry)

    def checkpoint() -> None:
        rng = _rng_states(device, world)  # a collective: every rank takes part
        if is_main:
            _save(ckpt_path, {
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "history": history, "epoch_loss": epoch_loss, "unreadable": sorted(unreadable),
                "rng": rng, "train_config": config_dict(cfg), "model_config": model_cfg.to_dict(), "base": base,
                "baseline": baseline,
            })
            _prune_snapshots(out, best_epochs(history, cfg.average_top))

    # ---- the starting weights scored on the validation set, so the run can say what fine-tuning changed
    if not ckpt:
        scores = evaluate(raw_model, val_set, device, amp, cfg.workers, cfg.val_seconds, rank, world)
        baseline = {k: v for k, v in scores.items() if k != "unreadable"}
        record({"kind": "baseline", "step": 0, **baseline})

    # ---- the loop
    last = time.perf_counter()
    loader, order = data.pair_loader(dataset, cfg.workers, pin=device.type == "cuda")
    while step < total_steps and (cfg.max_steps is None or step < cfg.max_steps):
        epoch, first = divmod(step, steps_per_epoch)
        batches = data.epoch_batches(len(train_set), epoch, cfg.seed, cfg.batch, rank, world)
        order.set(batches[first * cfg.accum : steps_per_epoch * cfg.accum], epoch)
        micro = iter(loader)
        for _ in range(first, steps_per_epoch):
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for k in range(cfg.accum):
                batch = next(micro)
                for reason in set(batch["unreadable"]) - unreadable:
                    log.warning("unreadable, replaced by the next clip: %s", reason)
                unreadable.update(batch["unreadable"])
                if world > 1:  # sync gradients on the last micro-step only
                    step_model.require_backward_grad_sync = k == cfg.accum - 1
                audio = batch["audio"].to(device, non_blocking=True)
                loss = _forward_loss(step_model, audio, batch["tokens"].to(device, non_blocking=True), cfg, amp)
                scaler.scale(loss / cfg.accum).backward()
                loss_sum += loss.item() / cfg.accum
            scaler.unscale_(optimizer)
            rescale_fbsp_grads(raw_model.audio.fbsp)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            epoch_loss = [epoch_loss[0] + loss_sum, epoch_loss[1] + 1]
            now = time.perf_counter()
            record({"kind": "step", "step": step, "epoch": epoch + 1, "loss": loss_sum, "lr": lr,
                    "clips_per_s": cfg.batch * cfg.accum / max(now - last, 1e-9)})
            last = now
            if progress:
                progress(step, total_steps)
            if step % steps_per_epoch == 0:  # the epoch's end: score, keep the best snapshots
                scores = evaluate(raw_model, val_set, device, amp, cfg.workers, cfg.val_seconds, rank, world)
                history.append({"epoch": epoch + 1, "step": step, "train_loss": epoch_loss[0] / epoch_loss[1],
                                **{k: v for k, v in scores.items() if k != "unreadable"}})
                epoch_loss = [0.0, 0]
                if is_main and epoch + 1 in best_epochs(history, cfg.average_top):
                    state = {k: v.detach().cpu().contiguous() for k, v in raw_model.state_dict().items()}
                    tmp = _snapshot(out, epoch + 1).with_suffix(".tmp")
                    save_file(state, tmp)
                    os.replace(tmp, _snapshot(out, epoch + 1))
                record({"kind": "epoch", **history[-1]})
                last = time.perf_counter()
            if step % steps_per_epoch == 0 or step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                checkpoint()
            if step == cfg.max_steps:
                break

    # ---- teardown: rank 0 averages the best epochs, scores the average and registers it
    finished = step >= total_steps
    if world > 1:
        for buffer in raw_model.buffers():  # every rank ends with rank 0's BatchNorm statistics, the ones saved
            dist.broadcast(buffer, 0)
        dist.barrier()
    result = TrainResult(cfg.name, None, out, finished, step, total_steps, history, best_epochs(history, cfg.average_top),
                         None, train_set.problems + val_set.problems, tuple(sorted(unreadable)), raw_model, baseline,
                         train_set.thin)
    if not (finished and is_main):
        return result
    snapshots = [_snapshot(out, e) for e in result.best_epochs]
    if missing := [p for p in snapshots if not p.is_file()]:
        raise WeightsError(f"The snapshot {missing[0]} is missing, so the best epochs cannot be averaged.")
    raw_model.load_state_dict(average_state_dicts([load_file(p) for p in snapshots]))
    final = evaluate(raw_model, val_set, device, amp, cfg.workers, cfg.val_seconds)
    final = {k: v for k, v in final.items() if k != "unreadable"}
    card = {
        "description": f"AudioCLIP fine-tuned on {train_set.name} from {base['name']}.",
        "base": base, "recipe": config_dict(cfg), "model_config": model_cfg.to_dict(),
        "data": {"train": train_set.name, "train_clips": len(train_set), "left_out_thin_names": len(train_set.thin),
                 "validation": val_set.name,
                 "validation_clips": len(val_set), "skipped_rows": len(result.problems), "unreadable_files": len(unreadable)},
        "validation": {"averaged_epochs": result.best_epochs, "before": baseline, "final": final, "history": history},
    }
    state = {k: v.detach().cpu() for k, v in raw_model.state_dict().items()}
    path = weights.save_model(state, cfg.name, model_cfg.to_dict(), card)
    (out / paths.RUN_CARD).write_text(json.dumps(card, indent=2))
    record({"kind": "final", "step": step, "epochs": result.best_epochs, **final})
    return replace(result, path=path, final=final)


def train_throughput(model_cfg: AudioCLIPConfig, device: str | torch.device = "auto", batch: int = 6,
                     crop_seconds: float = 20.0, steps: int = 3) -> dict:
    """Training speed on synthetic pairs with the fine-tuning step (one warm-up step, then `steps` timed ones)."""
    device = resolve_device(device) if isinstance(device, str) else device
    torch.manual_seed(0)
    model = AudioCLIP(model_cfg).to(device).train()
    model.audio.dropout.p = model.text_dropout.p = TrainConfig.dropout
    model.audio.fbsp.bias.requires_grad_(False)
    step_model, cfg = PairForward(model), TrainConfig(batch=batch, crop_seconds=crop_seconds)
    dtype, amp = _amp("auto", device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    audio = ((torch.rand(batch, 1, round(crop_seconds * SAMPLE_RATE)) * 2 - 1) * 16384).to(device)
    tokens = tokenize(["a dog barks while cars pass by on a wet road"] * batch)
    tokens = tokens[:, : int(tokens.argmax(-1).max()) + 1].to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def one_step() -> None:
        scaler.scale(_forward_loss(step_model, audio, tokens, cfg, amp)).backward()
        scaler.unscale_(optimizer)
        rescale_fbsp_grads(model.audio.fbsp)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    one_step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process rss"  # Linux: KiB
    return {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "batch": batch, "crop_seconds": crop_seconds,
            "steps": steps, "clips_per_s": batch * steps / seconds, "ms_per_step": 1000 * seconds / steps,
            "peak_memory_mb": peak, "memory_kind": kind}
