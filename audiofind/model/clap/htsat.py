"""HTSAT, LAION-CLAP's audio tower: log-mel -> 256 x 256 image -> Swin transformer -> mean of the last tokens.

Module and parameter names are the reference's (audio_branch.* in the CLAP state dict). The tensors the reference
computes rather than learns (STFT kernels, mel bank, relative position indices, shifted-window masks) are built here,
in numpy so they are real even when the module is built on the meta device, and kept as non-persistent buffers:
they are not in our state dict, and model.py checks a checkpoint's copies against them.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiofind.model.clap.config import HTSATConfig
from audiofind.model.clap.frontend import HOP_LENGTH, N_FFT, N_FRAMES, WINDOW_SAMPLES, mel_filters, stft_kernels

AMIN = 1e-10  # power floor before the log: -100 dB
MASKED = -100.0  # the reference's additive mask between tokens from different regions of a shifted window


def relative_position_index(window: int) -> np.ndarray:
    """(window², window²) int64: for tokens i, j of a window, the row of the bias table for their offset."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)  # (2, w²)
    offset = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)  # (w², w², 2) in [0, 2w-2]
    return (offset[..., 0] * (2 * window - 1) + offset[..., 1]).astype(np.int64)


def shifted_window_mask(resolution: int, window: int, shift: int) -> np.ndarray:
    """(n_windows, window², window²) float32: 0 between tokens of the same region of the rolled image, -100 across.

    After the cyclic shift, windows on the last row or column hold tokens from opposite edges of the image; the
    regions label which, so those tokens do not attend to each other.
    """
    labels = np.zeros((resolution, resolution), dtype=np.float32)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(bands):
        for j, cols in enumerate(bands):
            labels[rows, cols] = 3 * i + j
    n = resolution // window
    per_window = labels.reshape(n, window, n, window).transpose(0, 2, 1, 3).reshape(n * n, window * window)
    diff = per_window[:, None, :] - per_window[:, :, None]
    return np.where(diff != 0, np.float32(MASKED), np.float32(0.0))


def partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * nW, window², C): non-overlapping windows, row by row."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def merge(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of partition: (B * nW, window², C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, plus a learned bias per head for each relative offset."""

    relative_position_index: Tensor  # buffer, registered in __init__

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", torch.from_numpy(relative_position_index(window)), False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """(B * nW, N, C) window tokens, mask (nW, N, N) or None -> (B * nW, N, C)."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # (B*nW, h, N, d)
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)  # (B * nW, heads, N, N)
        attn = attn + self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.reshape(bw // nw, nw, self.heads, n, n) + mask[None, :, None]).reshape(bw, self.heads, n, n)
        y = attn.softmax(dim=-1) @ v  # (B * nW, heads, N, d)
        return self.proj(y.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as nn.GELU()


class SwinBlock(nn.Module):
    """Pre-LayerNorm block: (shifted) window attention, then the MLP, each with a residual."""

    attn_mask: Tensor | None  # buffer: (nW, window², window²) when shifted

    def __init__(self, dim: int, resolution: int, heads: int, window: int, shift: int, mlp_ratio: int) -> None:
        super().__init__()
        if resolution <= window:  # one window covers the whole image: nothing to shift
            window, shift = resolution, 0
        self.resolution, self.window, self.shift = resolution, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)
        mask = torch.from_numpy(shifted_window_mask(resolution, window, shift)) if shift else None
        self.register_buffer("attn_mask", mask, False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H * W, C) -> (B, H * W, C)."""
        b, n, c = x.shape
        r, w, s = self.resolution, self.window, self.shift
        assert n == r * r, f"expected {r}x{r} tokens, got {n}"
        h = self.norm1(x).reshape(b, r, r, c)
        if s:
            h = torch.roll(h, shifts=(-s, -s), dims=(1, 2))
        h = merge(self.attn(partition(h, w), self.attn_mask), w, r, r)
        if s:
            h = torch.roll(h, shifts=(s, s), dims=(1, 2))
        x = x + h.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Each 2 x 2 group of tokens -> one token of twice the channels: (B, H * W, C) -> (B, H/2 * W/2, 2C)."""

    def __init__(self, dim: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, _, c = x.shape
        x = x.reshape(b, self.resolution, self.resolution, c)
        # The reference's order: (even row, even col), (odd, even), (even, odd), (odd, odd).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class Stage(nn.Module):
    """Swin blocks alternating plain and shifted windows, then (except in the last stage) patch merging."""

    def __init__(self, cfg: HTSATConfig, i: int) -> None:
        super().__init__()
        dim, resolution = cfg.embed_dim * 2**i, cfg.grid // 2**i
        shifts = [0 if j % 2 == 0 else cfg.window // 2 for j in range(cfg.depths[i])]
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, cfg.heads[i], cfg.window, s, cfg.mlp_ratio) for s in shifts
        )
        self.downsample = PatchMerging(dim, resolution) if i < len(cfg.depths) - 1 else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, S, S) image -> (B, (S / patch)², dim) tokens, row by row."""
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class HTSAT(nn.Module):
    """(B, 480000) prepared 48 kHz windows (frontend.prepare) -> (B, width) pooled audio features."""

    stft_kernels: Tensor  # buffers, registered in __init__
    melW: Tensor

    def __init__(self, cfg: HTSATConfig) -> None:
        super().__init__()
        assert cfg.freq_ratio * cfg.n_mels == cfg.spec_size, "the folded log-mel must be a square image"
        assert cfg.n_time >= N_FRAMES, f"{N_FRAMES} frames do not fit {cfg.n_time}: the resize only stretches"
        assert cfg.grid % (cfg.window * 2 ** (len(cfg.depths) - 2)) == 0, "every shifted stage must tile into windows"
        self.cfg = cfg
        real, imag = stft_kernels(N_FFT)
        self.register_buffer("stft_kernels", torch.from_numpy(np.concatenate([real, imag])), False)  # (2K, 1, N_FFT)
        self.register_buffer("melW", torch.from_numpy(mel_filters(cfg.n_mels)), False)  # (K, n_mels)
        self.bn0 = nn.BatchNorm1d(cfg.n_mels)  # the reference's BatchNorm2d over mel bins: same keys and arithmetic
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.layers = nn.ModuleList(Stage(cfg, i) for i in range(len(cfg.depths)))
        self.norm = nn.LayerNorm(cfg.width)

    def log_mel(self, audio: Tensor) -> Tensor:
        """(B, 480000) -> (B, 1001, n_mels) dB: |STFT|² of reflect-centred frames, mel bank, 10 log10(max(x, 1e-10))."""
        x = F.pad(audio[:, None, :], (N_FFT // 2, N_FFT // 2), mode="reflect")
        spec = F.conv1d(x, self.stft_kernels, stride=HOP_LENGTH)  # (B, 2K, T): real rows, then imaginary rows
        real, imag = spec.chunk(2, dim=1)
        power = (real**2 + imag**2).transpose(1, 2)  # (B, T, K)
        return 10.0 * torch.log10((power @ self.melW).clamp(min=AMIN))

    def to_image(self, mel: Tensor) -> Tensor:
        """(B, T, n_mels) -> (B, 1, spec_size, spec_size): time stretched to 1024 (bicubic), then cut into
        freq_ratio runs of 256 frames stacked along frequency (rows: run 0's mel bins, run 1's, ...)."""
        cfg = self.cfg
        x = F.interpolate(mel[:, None], (cfg.n_time, cfg.n_mels), mode="bicubic", align_corners=True)[:, 0]
        x = x.transpose(1, 2).reshape(-1, cfg.n_mels, cfg.freq_ratio, cfg.n_time // cfg.freq_ratio)
        return x.transpose(1, 2).reshape(-1, 1, cfg.spec_size, cfg.spec_size)

    def forward(self, audio: Tensor) -> Tensor:
        assert audio.dim() == 2 and audio.shape[1] == WINDOW_SAMPLES, f"expected (B, {WINDOW_SAMPLES}) windows"
        # Contiguous: on the transposed view, batch norm rounds differently from the reference's (by a few ulp).
        x = self.bn0(self.log_mel(audio).transpose(1, 2).contiguous()).transpose(1, 2)  # (B, T, n_mels)
        x = self.patch_embed(self.to_image(x))  # (B, grid², embed_dim)
        for stage in self.layers:
            x = stage(x)
        # The reference regroups the tokens by frequency before pooling; a mean over all of them is the same.
        return self.norm(x).mean(dim=1)  # (B, width)
