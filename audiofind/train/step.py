"""One optimizer step of fine-tuning: its arithmetic (precision), its loss, the update, and how fast it runs."""

import resource
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

from audiofind.audio.decode import SAMPLE_RATE
from audiofind.device import resolve_device
from audiofind.errors import UsageError
from audiofind.model.audioclip import AudioCLIP
from audiofind.model.config import AudioCLIPConfig
from audiofind.model.tokenizer import tokenize
from audiofind.train.config import TrainConfig
from audiofind.train.loss import PairForward, contrastive_loss, gather_batch, rescale_fbsp_grads

# fp32 and tf32 both compute in float32; tf32 lets CUDA tensor cores round matmul and convolution inputs to TF32.
# fp16 is what auto picks on GPUs without bf16, with a GradScaler.
PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_context(precision: str, device: torch.device) -> tuple[torch.dtype, AbstractContextManager]:
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
    # At run time torch.backends.cudnn is a CudnnModule; its conv switch is declared on that class only.
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.CudnnModule.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = "ieee" if precision == "fp32" else "tf32"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def prepare_for_training(model: AudioCLIP, dropout: float) -> None:
    """Set the recipe's dropout and freeze what takes no part in training (AudioCLIP; CLAP's is train/clap.py's)."""
    model.audio.dropout.p = model.text_dropout.p = dropout
    model.audio.fbsp.bias.requires_grad_(False)  # empty and never used: DDP would wait for its gradient forever


def step_loss(
    step_model: torch.nn.Module,
    audio: torch.Tensor,
    tokens: torch.Tensor,
    cfg: TrainConfig,
    amp: AbstractContextManager,
) -> torch.Tensor:
    """One micro-batch: contrastive loss over the global batch plus the weighted fbsp regulariser."""
    with amp:
        a, t, scale, penalty = step_model(audio, tokens)  # (b, D), (b, D), (), ()
    return contrastive_loss(gather_batch(a), gather_batch(t), scale, cfg.label_smoothing) + cfg.fbsp_weight * penalty


def apply_gradients(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, grad_clip: float = 0.0
) -> None:
    """The update from the accumulated gradients: unscale, rescale the fbsp ones (AudioCLIP's), clip, step, and
    clear them."""
    scaler.unscale_(optimizer)
    if isinstance(model, AudioCLIP):
        rescale_fbsp_grads(model.audio.fbsp)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def train_throughput(
    model_cfg: AudioCLIPConfig,
    device: str | torch.device = "auto",
    batch: int = 6,
    crop_seconds: float = 20.0,
    steps: int = 3,
) -> dict:
    """Training speed on synthetic pairs with the fine-tuning step (one warm-up step, then `steps` timed ones)."""
    device = resolve_device(device) if isinstance(device, str) else device
    torch.manual_seed(0)
    model = AudioCLIP(model_cfg)
    model.to(device).train()
    prepare_for_training(model, TrainConfig.dropout)
    step_model, cfg = PairForward(model), TrainConfig(batch=batch, crop_seconds=crop_seconds)
    dtype, amp = amp_context("auto", device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    audio = ((torch.rand(batch, 1, round(crop_seconds * SAMPLE_RATE)) * 2 - 1) * 16384).to(device)
    tokens = tokenize(["a dog barks while cars pass by on a wet road"] * batch)
    tokens = tokens[:, : int(tokens.argmax(-1).max()) + 1].to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def one_step() -> None:
        scaler.scale(step_loss(step_model, audio, tokens, cfg, amp)).backward()
        apply_gradients(model, optimizer, scaler)

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
    return {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "batch": batch,
        "crop_seconds": crop_seconds,
        "steps": steps,
        "clips_per_s": batch * steps / seconds,
        "ms_per_step": 1000 * seconds / steps,
        "peak_memory_mb": peak,
        "memory_kind": kind,
    }
