"""Build a tower (or both) straight from a state dict, without paying for random initialisation."""

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from audiofind.errors import WeightsError
from audiofind.model.audio import AudioEncoder
from audiofind.model.audioclip import AudioCLIP, is_optional_key
from audiofind.model.checkpoint import dtype_name
from audiofind.model.config import AudioCLIPConfig
from audiofind.model.text import TextEncoder


def build(cfg: AudioCLIPConfig, towers: Iterable[str] = ("audio", "text")) -> nn.Module:
    """The module for the requested towers: AudioEncoder, TextEncoder, or AudioCLIP for both."""
    towers = set(towers)
    if {"audio", "text"} <= towers:
        return AudioCLIP(cfg)
    if "audio" in towers:
        return AudioEncoder(cfg.audio, cfg.embed_dim)
    if "text" in towers:
        return TextEncoder(cfg.text, cfg.embed_dim)
    raise ValueError(f"no tower to build in {sorted(towers)}")


def _local_keys(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename checkpoint keys to the module's own: an AudioEncoder alone has no 'audio.' prefix."""
    if isinstance(model, AudioEncoder):
        return {k.removeprefix("audio."): v for k, v in state_dict.items() if k.startswith("audio.")}
    return state_dict


def _summary(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def from_state_dict(
    state_dict: dict[str, Tensor],
    cfg: AudioCLIPConfig | None = None,
    towers: Iterable[str] = ("audio", "text"),
    source: str = "checkpoint",
) -> nn.Module:
    """Load the requested towers from a checkpoint's state dict; keys that do not fit raise a one-line WeightsError."""
    cfg = cfg or AudioCLIPConfig()
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        model = build(cfg, towers)
    own = model.state_dict()
    built = _towers_of(model)
    given = {k: v for k, v in _local_keys(state_dict, model).items() if _tower(_global(k, model)) in built}
    missing = [k for k in own if k not in given and not is_optional_key(_global(k, model))]
    unexpected = [k for k in given if k not in own]
    misshaped = [
        f"{k} {tuple(given[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in given and given[k].shape != own[k].shape
    ]
    problems = [f"missing {_summary(missing)}"] * bool(missing) + [f"unexpected {_summary(unexpected)}"] * bool(
        unexpected
    )
    problems += [f"wrong shape {_summary(misshaped, 2)}"] * bool(misshaped)
    # assign=True would install a tensor of any dtype: a float16 one turns embeddings into NaN, an int one fails later.
    misdtyped = [
        f"{k} {dtype_name(given[k].dtype)} != {dtype_name(own[k].dtype)}"
        for k in own
        if k in given and given[k].dtype != own[k].dtype
    ]
    problems += [
        f"wrong dtype {_summary(misdtyped, 2)} (audiofind weights import converts half-precision weights)"
    ] * bool(misdtyped)
    if problems:
        raise WeightsError(f"{source} does not fit the AudioCLIP model: " + "; ".join(problems) + ".")
    model.load_state_dict({k: v for k, v in given.items() if k in own}, strict=False, assign=True)
    _materialise_optional(model)
    return model.eval()


def _tower(key: str) -> str:
    """Which part of AudioCLIP a checkpoint key belongs to; 'unused' for the image tower and its logit scales."""
    if key.startswith("audio."):
        return "audio"
    if key == "logit_scale_at":
        return "scale"
    if key.startswith(("visual.", "logit_scale")):
        return "unused"
    return "text"


def _towers_of(model: nn.Module) -> set[str]:
    if isinstance(model, AudioCLIP):
        return {"audio", "text", "scale"}
    return {"audio"} if isinstance(model, AudioEncoder) else {"text"}


def _global(key: str, model: nn.Module) -> str:
    return f"audio.{key}" if isinstance(model, AudioEncoder) else key


def _materialise_optional(model: nn.Module) -> None:
    """Give the unused optional tensors the checkpoint may omit (counters, the empty fbsp bias) real storage."""
    for module in model.modules():
        for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if t.is_meta:
                real = torch.zeros(t.shape, dtype=t.dtype)
                if isinstance(t, nn.Parameter):
                    setattr(module, name, nn.Parameter(real, requires_grad=t.requires_grad))
                else:
                    module.register_buffer(name, real)
