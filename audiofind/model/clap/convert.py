"""A LAION-CLAP checkpoint made into what audiofind keeps: its sizes read from its tensors, its inference tensors
checked by building the model from them, as float32 under CLAP's own keys.

The published `630k-audioset-best.pt` holds {"state_dict": {"module." + key: tensor}} beside optimizer state; the
caller unpickles it with weights_only=True (checkpoint.load_pt) and passes the state dict here. Every size is read
from a shape, but RoBERTa's head count, which no shape holds: it is one head per 64 channels, as in every BERT-family
model (RoBERTa-base: 768 wide, 12 heads).
"""

import math

import torch
from torch import Tensor

from audiofind.errors import WeightsError
from audiofind.model.clap.config import CLAPConfig, HTSATConfig, RobertaConfig
from audiofind.model.clap.model import from_state_dict, inference_state_dict

HEAD_WIDTH = 64  # RoBERTa's channels per attention head
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _stripped(state_dict: dict, origin: object) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        if not isinstance(key, str) or not isinstance(tensor, Tensor):
            raise WeightsError(f"{origin} is not a CLAP state dict: entry {key!r} is not a named tensor.")
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = tensor
    return out


def _indices(keys: list[str], prefix: str, at: int) -> list[int]:
    """The distinct integers at dotted position `at` of the keys under prefix (layer or block numbers)."""
    return sorted({int(k.split(".")[at]) for k in keys if k.startswith(prefix) and k.split(".")[at].isdigit()})


def _audio_config(sd: dict[str, Tensor]) -> HTSATConfig:
    keys = list(sd)
    patch = sd["audio_branch.patch_embed.proj.weight"]  # (E, 1, p, p)
    stages = _indices(keys, "audio_branch.layers.", 2)
    depths = tuple(len(_indices(keys, f"audio_branch.layers.{i}.blocks.", 4)) for i in stages)
    tables = [sd[f"audio_branch.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in stages]  # ((2w-1)², h)
    window = (math.isqrt(tables[0].shape[0]) + 1) // 2
    embed_dim, patch_size = patch.shape[0], patch.shape[-1]
    n_mels = sd["audio_branch.bn0.weight"].shape[0]
    spec_size = n_mels * HTSATConfig().freq_ratio  # the published folding, unless a window mask says otherwise
    for i in stages:  # a shifted block's mask is (windows, w², w²): windows = (grid / 2**i / w)²
        masks = [k for k in keys if k.startswith(f"audio_branch.layers.{i}.blocks.") and k.endswith(".attn_mask")]
        if masks:
            spec_size = window * math.isqrt(sd[masks[0]].shape[0]) * 2**i * patch_size
            break
    mlp_ratio = sd["audio_branch.layers.0.blocks.0.mlp.fc1.weight"].shape[0] // embed_dim
    heads = tuple(t.shape[1] for t in tables)
    return HTSATConfig(n_mels, spec_size, patch_size, embed_dim, depths, heads, window, mlp_ratio)


def _text_config(sd: dict[str, Tensor]) -> RobertaConfig:
    words = sd["text_branch.embeddings.word_embeddings.weight"]  # (vocab, W)
    width = words.shape[1]
    return RobertaConfig(
        vocab_size=words.shape[0],
        width=width,
        layers=len(_indices(list(sd), "text_branch.encoder.layer.", 3)),
        heads=max(1, width // HEAD_WIDTH),
        mlp_width=sd["text_branch.encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_positions=sd["text_branch.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=sd["text_branch.embeddings.token_type_embeddings.weight"].shape[0],
    )


def infer_config(state_dict: dict[str, Tensor], origin: object = "checkpoint") -> CLAPConfig:
    """The sizes of the CLAP model a state dict (keys without 'module.') holds, read from its shapes."""
    try:
        cfg = CLAPConfig(
            _audio_config(state_dict), _text_config(state_dict), state_dict["audio_projection.2.weight"].shape[0]
        )
    except (KeyError, IndexError) as e:
        raise WeightsError(f"{origin} looks like a CLAP checkpoint but lacks {e}; it is not a complete one.") from None
    return cfg


def select(state_dict: dict, origin: object, cfg: CLAPConfig | None = None) -> tuple[dict[str, Tensor], CLAPConfig]:
    """The inference tensors of a CLAP state dict as float32, ready for save_file, and its sizes (cfg, if known,
    else read from its shapes by infer_config).

    The model is built from them first, so a checkpoint that does not fit (a missing or misshaped tensor, a
    computed buffer that is not what CLAP computes) is refused here, in one line, before anything is written.
    """
    sd = _stripped(state_dict, origin)
    cfg = cfg or infer_config(sd, origin)
    # Half precision is widened once here, as AudioCLIP's is; a tensor of another kind where a weight belongs (an
    # integer, a complex) is refused by the model's own dtype check below, naming it.
    given = inference_state_dict(sd)
    widen = lambda t: t.float() if t.is_floating_point() and t.dtype != torch.float32 else t
    widened = {k: widen(v).detach().contiguous() for k, v in given.items()}
    from_state_dict({k: v for k, v in sd.items() if k not in widened} | widened, cfg, source=str(origin))
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, tensor in widened.items():
        ptr = tensor.untyped_storage().data_ptr()
        # save_file refuses tensors that share memory; copy the rare ones that do.
        if ptr and (ptr in seen or tensor.untyped_storage().nbytes() != tensor.nbytes):
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out, cfg
