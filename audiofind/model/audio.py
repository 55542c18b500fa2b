"""The AudioCLIP audio tower, ESResNeXt-fbsp: a learned filter-bank front end and a ResNeXt-50 with attention.

Input convention (spec a.1): float samples at 44.1 kHz in the int16 range [-32768, 32767], shape (B, C, N) or
(B, N). Each channel runs through the network on its own and the pooled features are summed before `fc`.
"""

import math
from collections.abc import Callable
from typing import Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiofind.model.config import AudioConfig

FBSP_EPS = 1e-8
POWER_FLOOR = 1e-18  # replaces exact zeros only (spec a.7)


def blackmanharris(n: int) -> Tensor:
    """Periodic 4-term Blackman-Harris window (scipy get_window('blackmanharris', n, fftbins=True)), float32."""
    theta = torch.linspace(-math.pi, math.pi, n + 1, dtype=torch.float64)
    w = 0.35875 + 0.48829 * torch.cos(theta) + 0.14128 * torch.cos(2 * theta) + 0.01168 * torch.cos(3 * theta)
    return w[:-1].to(torch.float32)


def frame_count(n_samples: int, win_length: int, hop_length: int) -> int:
    """Frames the reference cuts from n_samples: 1 for short signals, else 1 + ceil((N - L) / H)."""
    if n_samples <= win_length:
        return 1
    return 1 + -(-(n_samples - win_length) // hop_length)


def frame_signal(x: Tensor, win_length: int, hop_length: int) -> Tensor:
    """(BC, N) -> (BC, T, win_length), zeros centred around the signal as the reference does (⌊z/2⌋ before)."""
    n = x.shape[-1]
    t = frame_count(n, win_length, hop_length)
    z = (t - 1) * hop_length + win_length - n
    if z > 0:
        x = F.pad(x, (z // 2, z - z // 2))
    return x.unfold(-1, win_length, hop_length)


def fbsp_filters(m: Tensor, fb: Tensor, fc: Tensor, n_fft: int) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts (K, n_fft) of the learned fbsp filters W_k(n), in the dtype of the parameters (spec a.6)."""
    t = math.pi * torch.linspace(-1.0, 1.0, n_fft, dtype=m.dtype, device=m.device) + FBSP_EPS  # (n_fft,)
    m, fb, fc = m[:, None], fb[:, None], fc[:, None]  # (K, 1)
    arg = fb * t / (m + FBSP_EPS)
    u = torch.where(arg == 0, torch.ones_like(arg), torch.sin(arg) / arg)  # unnormalised sinc
    # u ** m as a complex power of a real base: |u|^m with phase pi*m on the negative side-lobes.
    mag = u.abs() ** m
    phase = torch.where(u < 0, torch.full_like(u, math.pi), torch.zeros_like(u)) * m
    v_re, v_im = mag * torch.cos(phase), mag * torch.sin(phase)
    c_re, c_im = torch.cos(fc * t), -torch.sin(fc * t)  # carrier exp(-i fc t)
    gain = fb.sqrt() / math.sqrt(n_fft)  # normalized=True
    return gain * (v_re * c_re - v_im * c_im), gain * (v_re * c_im + v_im * c_re)


def _identity(p: Tensor) -> tuple:
    """What must be unchanged for a cached filter bank to stay valid: the object, its storage, and its edits."""
    return (p, p.data_ptr(), p._version, p.device, p.dtype)


def _same(a: tuple, b: tuple) -> bool:
    return all(x[0] is y[0] and x[1:] == y[1:] for x, y in zip(a, b))


class FBSP(nn.Module):
    """The learned time-frequency transform: parameters m, fb, fc per filter (keys audio.fbsp.*)."""

    def __init__(self, n_fft: int) -> None:
        super().__init__()
        k = n_fft // 2 + 1
        self.n_fft = n_fft
        self.m = nn.Parameter(torch.zeros(k))
        self.fb = nn.Parameter(torch.ones(k))
        self.fc = nn.Parameter(torch.arange(k, dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(0))  # present (empty) in the published checkpoints, never used
        self._cache: tuple[tuple, Tensor] | None = None

    def projection(self, window: Tensor, n_rows: int) -> Tensor:
        """(win_length, 2 * n_rows) matrix mapping a raw frame to the real|imaginary parts of the kept filters.

        The window and the centred zero padding to n_fft are folded in, so a frame needs one matmul. Built in
        float64 and cast (more accurate than the reference's float32 rebuild); cached while the parameters and
        window are unchanged, rebuilt with gradients in training mode.
        """
        params = (self.m, self.fb, self.fc, window)
        cacheable = not (self.training and torch.is_grad_enabled())
        key = tuple(_identity(p) for p in params)
        if cacheable and self._cache is not None and _same(self._cache[0], key):
            return self._cache[1]
        build_device = "cpu" if self.m.device.type == "mps" else self.m.device  # MPS has no float64
        m, fb, fc, w = (p.to(build_device, torch.float64) for p in params)
        re, im = fbsp_filters(m[:n_rows], fb[:n_rows], fc[:n_rows], self.n_fft)  # (n_rows, n_fft) each
        left = (self.n_fft - w.shape[0]) // 2
        cols = slice(left, left + w.shape[0])
        proj = torch.cat([re[:, cols], im[:, cols]], dim=0).T * w[:, None]  # (win_length, 2 * n_rows)
        proj = proj.to(self.m.device, self.m.dtype)
        if cacheable:
            self._cache = (key, proj)
        return proj

    def filters(self) -> tuple[Tensor, Tensor]:
        """All K filters (real, imaginary), each (K, n_fft), for the training regulariser."""
        return fbsp_filters(self.m, self.fb, self.fc, self.n_fft)


class Attention2d(nn.Module):
    """Depthwise conv -> pointwise conv -> BN -> sigmoid, on the input max-pooled to the target size."""

    def __init__(self, in_ch: int, out_ch: int, kernel: tuple[int, int], padding: tuple[int, int]) -> None:
        super().__init__()
        self.conv_depth = nn.Conv2d(in_ch, in_ch, kernel, padding=padding, groups=in_ch)
        self.conv_point = nn.Conv2d(in_ch, out_ch, 1)
        self.bn = nn.BatchNorm2d(out_ch)
        self.gate = nn.Sigmoid()  # a module, so inference can fuse it into conv_point (model/inference.py)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) != tuple(size):  # att1's stage keeps the size: the pool would copy x unchanged
            x = F.adaptive_max_pool2d(x, size)
        return self.gate(self.bn(self.conv_point(self.conv_depth(x))))


class Bottleneck(nn.Module):
    """torchvision's v1.5 ResNeXt bottleneck (stride on the grouped 3x3 conv), same key names."""

    def __init__(self, inplanes: int, planes: int, stride: int, groups: int, width_per_group: int) -> None:
        super().__init__()
        width = int(planes * width_per_group / 64) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: Tensor) -> Tensor:
        # In place where autograd allows it (as torchvision does): no extra copy for the ReLUs and the residual add.
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x)).relu_()
        out = self.bn2(self.conv2(out)).relu_()
        return self.bn3(self.conv3(out)).add_(shortcut).relu_()


# (kernel, padding) of the attention blocks att1..att5: frequency, time, frequency, time, both.
ATTENTION_SHAPES = [((3, 1), (1, 0)), ((1, 5), (0, 2)), ((3, 1), (1, 0)), ((1, 5), (0, 2)), ((3, 5), (1, 2))]


class AudioEncoder(nn.Module):
    """ESResNeXt-fbsp: (B, C, N) int16-range samples -> (B, embed_dim) unnormalised embeddings."""

    window: Tensor  # buffer, registered in __init__

    def __init__(self, cfg: AudioConfig, embed_dim: int) -> None:
        super().__init__()
        assert len(cfg.layers) == 4, "the attention blocks are laid out for four stages"
        self.cfg = cfg
        self.register_buffer("window", blackmanharris(cfg.win_length))  # saved in the state dict (audio.window)
        self.fbsp = FBSP(cfg.n_fft)
        self.conv1 = nn.Conv2d(3, cfg.base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.base_width)
        self.relu = nn.ReLU(inplace=True)  # a module, so inference can fuse it into conv1 (model/inference.py)
        inplanes = cfg.base_width
        for i, (blocks, out_ch) in enumerate(zip(cfg.layers, cfg.stage_channels)):
            planes, stride = out_ch // 4, 1 if i == 0 else 2
            stage = [Bottleneck(inplanes, planes, stride, cfg.groups, cfg.width_per_group)]
            stage += [Bottleneck(out_ch, planes, 1, cfg.groups, cfg.width_per_group) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            self.add_module(f"att{i + 1}", Attention2d(inplanes, out_ch, *ATTENTION_SHAPES[i]))
            inplanes = out_ch
        self.att5 = Attention2d(inplanes, inplanes, *ATTENTION_SHAPES[4])
        self.dropout = nn.Dropout(0.0)  # fine-tuning sets p; identity in eval
        self.fc = nn.Linear(inplanes, embed_dim)
        self.folded = False  # batch norm folded into the convolutions (model/inference.py): inference only
        self.compute_dtype: torch.dtype | None = None  # of the convolutions (None: the input's); inference.to_bfloat16

    def train(self, mode: bool = True) -> Self:
        """As nn.Module.train, but a folded tower has no batch norm left to train and refuses."""
        if mode and self.folded:
            raise RuntimeError("This audio tower has batch norm folded in for inference; load it again to train it.")
        return super().train(mode)

    def spectrogram(self, x: Tensor) -> Tensor:
        """(B, C, N) samples -> (B*C, 3, bins/3, T) decibels: the 'image' the ResNeXt sees (spec a.2-a.7)."""
        with torch.autocast(x.device.type, enabled=False):  # decibels of quiet bins need full precision
            return self._spectrogram(x.reshape(-1, x.shape[-1]).to(self.fbsp.m.dtype))

    def _spectrogram(self, x: Tensor) -> Tensor:
        cfg = self.cfg
        x = (x + 32768.0) * 2.0 / 65535.0 - 1.0  # int16 range -> [-1, 1], in the reference's order
        frames = frame_signal(x, cfg.win_length, cfg.hop_length)  # (BC, T, win)
        s = frames @ self.fbsp.projection(self.window, cfg.n_bins)  # (BC, T, 2 * bins)
        re, im = s.chunk(2, dim=-1)
        power = re * re + im * im
        power = torch.where(power > 0, power, torch.full_like(power, POWER_FLOOR))
        db = 10.0 * torch.log10(power)  # (BC, T, bins)
        return db.transpose(1, 2).reshape(db.shape[0], 3, cfg.n_bins // 3, db.shape[1])

    def features(self, image: Tensor) -> Tensor:
        """(BC, 3, H, T) decibels -> (BC, channels) pooled features (average pool x att5 of the max)."""
        x = F.max_pool2d(self.relu(self.bn1(self.conv1(image))), 3, stride=2, padding=1)
        for i in range(1, 5):
            y = getattr(self, f"layer{i}")(x)
            gate = getattr(self, f"att{i}")(x, y.shape[-2:])  # attention reads the stage's input
            x = y * gate if y.requires_grad else y.mul_(gate)
        pooled = F.adaptive_avg_pool2d(x, 1)
        return (pooled * self._by_row(lambda item: self.att5(item, (1, 1)), x)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        assert x.dim() in (2, 3), f"expected (B, C, N) or (B, N) samples, got shape {tuple(x.shape)}"
        b = x.shape[0]
        image = self.spectrogram(x)
        if self.compute_dtype is not None:  # a bfloat16 copy: the convolutions in it, the sums after in float32
            image = image.to(self.compute_dtype)
        f = self.features(image)  # (B*C, channels)
        f = f.float() if self.compute_dtype is not None else f
        f = f.reshape(b, -1, f.shape[-1]).sum(dim=1)  # channels are summed, not averaged (spec a.8)
        return self._by_row(self.fc, self.dropout(f))

    def _by_row(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """fn on one row at a time in eval mode: a matrix product's summation order may change with its number of
        rows (oneDNN's does between 1 and 2 rows), and an embedding must not depend on what else shares its batch.
        Training takes the batch whole (its batch norm needs the batch's statistics)."""
        return fn(x) if self.training else torch.cat([fn(row) for row in x.split(1)])
