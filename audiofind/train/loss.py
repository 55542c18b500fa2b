"""The fine-tuning objective of spec (d): symmetric in-batch cross-entropy plus the fbsp filter-norm regulariser."""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from audiofind.model.audio import FBSP
from audiofind.model.audioclip import AudioCLIP

GRAD_RESCALE_EPS = 1e-8


class PairForward(nn.Module):
    """AudioCLIP behind one forward(), so DistributedDataParallel sees every parameter used in a step."""

    def __init__(self, model: AudioCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(B, C, N) samples, (B, L) ids -> audio (B, D), text (B, D), logit scale (), fbsp penalty ()."""
        model = self.model
        with torch.autocast(audio.device.type, enabled=False):  # the filter norms are a float32 sum of 2M squares
            penalty = fbsp_penalty(*model.audio.fbsp.filters())
        return model.encode_audio(audio), model.encode_text(tokens), model.logit_scale(), penalty


def contrastive_loss(audio: Tensor, text: Tensor, scale: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """CE(L) + CE(Lᵀ) over L = scale · â·t̂ᵀ (B, B), matching pairs on the diagonal, each CE a mean over the batch."""
    dtype = torch.promote_types(audio.dtype, torch.float32)  # float32 at least (autocast gives halves); float64 stays
    a = F.normalize(audio.to(dtype), dim=-1)  # (B, D)
    t = F.normalize(text.to(dtype), dim=-1)  # (B, D)
    logits = scale.to(dtype) * a @ t.T  # (B, B): rows are clips, columns captions
    target = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing) + F.cross_entropy(
        logits.T, target, label_smoothing=label_smoothing
    )


def fbsp_penalty(re: Tensor, im: Tensor) -> Tensor:
    """Mean over filters of (‖W_k‖ - 1)², the norm over the real and imaginary parts of filter k (K, n_fft each)."""
    norms = (re.square().sum(dim=-1) + im.square().sum(dim=-1)).sqrt()  # (K,)
    return (norms - 1.0).square().mean()


def rescale_fbsp_grads(fbsp: FBSP) -> None:
    """Divide the gradients of m, fb and fc each by its ∞-norm (+1e-8), as the reference's gradient hooks do.

    Called once per optimizer step on the summed, all-reduced and unscaled gradient; with one process and no
    accumulation that is exactly the reference's per-backward hook.
    """
    for p in (fbsp.m, fbsp.fb, fbsp.fc):
        if p.grad is not None:
            p.grad.div_(p.grad.abs().max() + GRAD_RESCALE_EPS)


def gather_batch(x: Tensor) -> Tensor:
    """Every rank's rows (world·B, D) in rank order; gradient flows back only into this rank's own rows.

    Each rank then computes the same loss over the global batch, so more GPUs means more negatives. DDP averages
    gradients over ranks while each rank's backward reaches only its own rows, so those rows pass their gradient
    back multiplied by the world size: the average is then exactly the gradient of the global-batch loss.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x + (world - 1) * (x - x.detach())  # value x, gradient world times x's
    return torch.cat(parts)
