"""The reference AudioCLIP's way of computing, as a yardstick: `bench speed` times it beside ours, same weights.

It repeats the reference's costs, not its code (spec a.6, b.3 and its performance notes): the fbsp filter bank
rebuilt in float32 on every call, frames padded to n_fft and multiplied by all n_fft // 2 + 1 filters, batch norm
as its own pass, NCHW tensors; captions run at all 77 positions through multi-head attention with an additive
causal mask. Timings from two machines are never comparable; a ratio measured side by side in one process is.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from audiofind.model.audio import POWER_FLOOR, AudioEncoder, fbsp_filters, frame_signal
from audiofind.model.config import AudioCLIPConfig
from audiofind.model.load import from_state_dict
from audiofind.model.text import ResidualAttentionBlock, TextEncoder


class ReferenceAudio(AudioEncoder):
    """The audio tower computed as the reference does; load it unfolded and contiguous (NCHW)."""

    def _spectrogram(self, x: Tensor) -> Tensor:
        cfg = self.cfg
        x = (x + 32768.0) * 2.0 / 65535.0 - 1.0
        frames = frame_signal(x, cfg.win_length, cfg.hop_length) * self.window  # (BC, T, win)
        pad = cfg.n_fft - cfg.win_length
        frames = F.pad(frames, (pad // 2, pad - pad // 2))  # (BC, T, n_fft)
        re_w, im_w = fbsp_filters(self.fbsp.m, self.fbsp.fb, self.fbsp.fc, cfg.n_fft)  # rebuilt on every call
        re, im = frames @ re_w.T, frames @ im_w.T  # (BC, T, K) each
        power = (re * re + im * im)[..., : cfg.n_bins]
        power = torch.where(power > 0, power, torch.full_like(power, POWER_FLOOR))
        db = 10.0 * torch.log10(power)
        return db.transpose(1, 2).reshape(db.shape[0], 3, cfg.n_bins // 3, db.shape[1])


def reference_audio(state_dict: dict[str, Tensor], cfg: AudioCLIPConfig) -> ReferenceAudio:
    """The audio tower of a checkpoint's state dict, unfolded and NCHW, computed the reference's way."""
    tower = from_state_dict(state_dict, cfg, ["audio"])
    tower.__class__ = ReferenceAudio  # the same modules and weights; only the front end's computation differs
    assert isinstance(tower, ReferenceAudio)
    return tower


def reference_encode_text(model: TextEncoder, tokens: Tensor) -> Tensor:
    """(B, 77) ids -> (B, embed_dim) the reference's way: every position, (L, B, D) layout, an additive mask."""
    n = tokens.shape[1]
    mask = torch.full((n, n), float("-inf")).triu_(1)
    x = (model.token_embedding(tokens) + model.positional_embedding[:n]).permute(1, 0, 2)  # (L, B, D)
    for block in model.transformer.resblocks:
        assert isinstance(block, ResidualAttentionBlock)
        attn, h = block.attn, block.ln_1(x)
        y, _ = F.multi_head_attention_forward(
            h,
            h,
            h,
            x.shape[-1],
            attn.heads,
            attn.in_proj_weight,
            attn.in_proj_bias,
            None,
            None,
            False,
            0.0,
            attn.out_proj.weight,
            attn.out_proj.bias,
            training=False,
            need_weights=False,
            attn_mask=mask,
        )
        x = x + y
        x = x + block.mlp(block.ln_2(x))
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection
