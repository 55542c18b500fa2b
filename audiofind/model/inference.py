"""The towers made inference-only. Audio: batch norm folded into the convolutions, and on CPU each convolution fused
with what follows it (bias, ReLU or sigmoid, the residual add) in one oneDNN call on weights reordered once. Text, on
CPU: every linear layer on a weight laid out once for oneDNN (a caption is a few rows, so reading the weights is the
cost, and eager PyTorch repacks them on every call).

In eval mode a BatchNorm is an affine map per channel, y = (x - mean) * gamma / sqrt(var + eps) + beta, so it can be
multiplied into the weights and bias of the convolution that feeds it. The fold is computed in float64 and cast
once, which keeps embeddings within 1e-6 of the unfolded model. The fused calls are bitwise equal to the folded
convolution followed by its activation; what they save is the memory passes and the weight reorders that eager
PyTorch makes on every call. A prepared tower has other modules and keys than the checkpoint's, so it refuses
train() and is never saved or moved: training and checkpoints keep the modules as they are.
"""

from collections.abc import Iterator
from copy import deepcopy

import torch
from torch import Tensor, nn

from audiofind.model.audio import Attention2d, AudioEncoder, Bottleneck
from audiofind.model.text import ResidualAttentionBlock, TextEncoder

_MKLDNN = torch.ops.mkldnn


def conv_bn_pairs(model: AudioEncoder) -> Iterator[tuple[nn.Module, str, str]]:
    """(parent, conv name, bn name) of every convolution followed by a BatchNorm in the audio tower."""
    yield model, "conv1", "bn1"
    for module in model.modules():
        if isinstance(module, Bottleneck):
            for i in (1, 2, 3):
                yield module, f"conv{i}", f"bn{i}"
            if module.downsample is not None:
                yield module.downsample, "0", "1"
        elif isinstance(module, Attention2d):
            yield module, "conv_point", "bn"


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Multiply bn's eval-mode affine map into conv's weight and bias, in place (computed in float64)."""
    mean, var = bn.running_mean, bn.running_var
    assert mean is not None and var is not None, "batch norm without running statistics cannot be folded"
    dtype = conv.weight.dtype
    scale = bn.weight.double() / (var.double() + bn.eps).sqrt()  # (out,)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    weight = conv.weight.double() * scale[:, None, None, None]
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(((bias - mean.double()) * scale + bn.bias.double()).to(dtype), requires_grad=False)


def fold_batch_norm(model: AudioEncoder) -> AudioEncoder:
    """Fold every BatchNorm of an eval-mode audio tower into its convolution; the tower is then inference-only."""
    if model.training:
        raise RuntimeError("Batch norm is folded for inference only; call eval() first (training keeps the modules).")
    if not model.folded:
        for parent, conv_name, bn_name in list(conv_bn_pairs(model)):
            fold_conv_bn(getattr(parent, conv_name), getattr(parent, bn_name))
            setattr(parent, bn_name, nn.Identity())
        model.folded = True
    return model


class FusedConv(nn.Module):
    """A folded convolution run by oneDNN with `attr` (relu, sigmoid, none) fused, on a copy of its weight laid out
    for the input size it last saw. oneDNN's best layout depends on the input's size: equal sizes in a row (the
    10 s windows of long recordings) reuse the layout, a new size lays the weight out again, once, from the plain
    copy (eager PyTorch does that for every weight on every call; from another layout it hits a slow generic
    reorder, 150 ms for one 2048x1024 weight on AVX2). Layouts change speed only, never the result's bits."""

    def __init__(self, conv: nn.Conv2d, attr: str) -> None:
        super().__init__()
        self.args = ([*conv.padding], [*conv.stride], [*conv.dilation], conv.groups)
        self.weight, self.bias, self.attr = conv.weight, conv.bias, attr
        self.laid_out: tuple[tuple[int, ...], Tensor] | None = None  # (input size without the batch, weight)

    def forward(self, x: Tensor, add: Tensor | None = None) -> Tensor:
        size = tuple(x.shape[1:])  # the layout does not depend on the batch size
        if self.laid_out is None or self.laid_out[0] != size:
            self.laid_out = (size, _MKLDNN._reorder_convolution_weight(self.weight.detach(), *self.args, list(x.shape)))
        weight = self.laid_out[1]
        if add is None:
            return _MKLDNN._convolution_pointwise(x, weight, self.bias, *self.args, self.attr, [], "")
        return _MKLDNN._convolution_pointwise.binary(
            x, add, weight, self.bias, *self.args, "add", None, self.attr, [], ""
        )


def _conv(module: nn.Module) -> nn.Conv2d:
    assert isinstance(module, nn.Conv2d), f"expected a convolution, got {type(module).__name__}"
    return module


class FusedBottleneck(nn.Module):
    """A folded Bottleneck in three oneDNN calls: conv+ReLU, conv+ReLU, conv+residual add+ReLU."""

    def __init__(self, block: Bottleneck) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = (
            FusedConv(conv, "relu") for conv in (block.conv1, block.conv2, block.conv3)
        )
        self.downsample = None if block.downsample is None else FusedConv(_conv(block.downsample[0]), "none")

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.conv3(self.conv2(self.conv1(x)), add=shortcut)


def can_fuse(weight: Tensor) -> bool:
    """True where the oneDNN paths apply: a float32 tower (judged by one of its weights) on a CPU with oneDNN."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def fuse_for_cpu(model: AudioEncoder) -> AudioEncoder:
    """Replace the folded tower's convolutions by fused oneDNN calls, in place; call it last (the tower stays put)."""
    if not model.folded:
        raise RuntimeError("Fuse after folding batch norm: the fused calls have no batch norm step.")
    model.add_module("conv1", FusedConv(model.conv1, "relu"))  # add_module: replaces the module of that name
    model.add_module("relu", nn.Identity())
    for i in range(1, 5):
        stage = getattr(model, f"layer{i}")
        for j, block in enumerate(stage):
            stage[j] = FusedBottleneck(block)
    for i in range(1, 6):
        att = getattr(model, f"att{i}")
        att.conv_depth, att.conv_point, att.gate = (
            FusedConv(att.conv_depth, "none"),
            FusedConv(att.conv_point, "sigmoid"),
            nn.Identity(),
        )
    return model


def prepare_for_inference(model: AudioEncoder, fuse: bool = True) -> AudioEncoder:
    """Eval mode, batch norm folded, channels-last (NHWC: faster with oneDNN and cuDNN), fused where it applies."""
    # Module.to takes memory_format (torch's documentation) but none of its stub's overloads does
    model = fold_batch_norm(model.eval()).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return fuse_for_cpu(model) if fuse and can_fuse(model.conv1.weight) else model


def to_bfloat16(model: AudioEncoder) -> AudioEncoder:
    """A copy of a tower prepared for inference whose convolutions run in bfloat16 (a CPU with AVX-512-BF16 or AMX
    does their dot products in hardware). The spectrogram before them and the projection after stay float32:
    decibels of quiet bins, and the sums that make the embedding, need the precision."""
    if not model.folded:
        raise RuntimeError("Prepare the tower for inference first: only a folded tower runs in bfloat16.")
    with torch.inference_mode(False):  # a copy made during a search must still be an ordinary model
        # Weights laid out for oneDNN are opaque (no storage to copy), and the filter bank's cache may be an inference
        # tensor (no version counter to copy): the copy makes both again when first run.
        skip: dict[int, object] = {
            id(m.laid_out): None for m in model.modules() if isinstance(m, FusedConv) and m.laid_out
        }
        skip[id(model.fbsp._cache)] = None
        copy = deepcopy(model, memo=skip)
        for module in copy.modules():
            if isinstance(module, FusedConv):
                module.weight = nn.Parameter(module.weight.detach().to(torch.bfloat16), requires_grad=False)
                if module.bias is not None:
                    module.bias = nn.Parameter(module.bias.detach().to(torch.bfloat16), requires_grad=False)
                module.laid_out = None
            elif isinstance(module, nn.Conv2d):
                module.to(torch.bfloat16)
    copy.compute_dtype = torch.bfloat16
    return copy


class PackedLinear(nn.Module):
    """y = x W^T + b by oneDNN on W laid out once: no reorder for any number of rows, and each row's result the
    same bits whatever the number of rows (tests/test_encoder.py), so captions can share a forward pass."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.packed = _MKLDNN._reorder_linear_weight(weight.detach(), None)  # opaque oneDNN tensor
        self.bias = bias

    def forward(self, x: Tensor) -> Tensor:
        return _MKLDNN._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def _packed(linear: nn.Module) -> PackedLinear:
    assert isinstance(linear, nn.Linear), f"expected a linear layer, got {type(linear).__name__}"
    return PackedLinear(linear.weight, linear.bias)


def prepare_text_for_inference(model: TextEncoder) -> TextEncoder:
    """Eval mode, and on CPU every linear layer packed (PackedLinear), the projection too; in place, inference only."""
    model.eval()
    if can_fuse(model.text_projection):
        for block in model.transformer.resblocks:
            assert isinstance(block, ResidualAttentionBlock)
            attn, mlp = block.attn, block.mlp
            attn.in_proj = PackedLinear(attn.in_proj_weight, attn.in_proj_bias)
            attn.add_module("out_proj", _packed(attn.out_proj))  # add_module: replaces the module of that name
            for name in ("c_fc", "c_proj"):
                mlp.add_module(name, _packed(mlp.get_submodule(name)))
        model.project = PackedLinear(model.text_projection.T, None)  # x @ P is a linear layer of weight P^T
        model.packed = True
    return model
