"""LAION-CLAP for inference: both towers, their projections and the logit scales, loaded from the reference's keys.

The reference's state dict (keys.tsv) holds 417 tensors; inference loads 385 of them (inference_state_dict).
The rest are either computed (STFT kernels, mel bank, relative position indices,
shifted-window masks: rebuilt here and checked against the checkpoint's copies) or never reached on the way to an
embedding: HTSAT's AudioSet classifier (tscam_conv, head) and the audio_transform / text_transform MLPs, which only
the training loss uses. A checkpoint made with an older transformers also holds text_branch.embeddings.position_ids.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiofind.errors import WeightsError
from audiofind.model.clap.config import CLAPConfig
from audiofind.model.clap.htsat import HTSAT
from audiofind.model.clap.roberta import Roberta

UNUSED_PREFIXES = ("audio_branch.tscam_conv.", "audio_branch.head.", "audio_transform.", "text_transform.")
COMPUTED_SUFFIXES = (".relative_position_index", ".attn_mask")
COMPUTED_PREFIXES = ("audio_branch.spectrogram_extractor.", "audio_branch.logmel_extractor.")
POSITION_IDS = "text_branch.embeddings.position_ids"  # (1, max_positions) arange, in older checkpoints only


def projection(d_in: int, d_out: int) -> nn.Sequential:
    """Linear-ReLU-Linear into the joint space; keys .0 and .2 as the reference's."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, d_out))


class CLAP(nn.Module):
    """State-dict keys are the reference's inference keys: audio_branch.*, text_branch.*, *_projection.*, logit scales."""

    def __init__(self, cfg: CLAPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio_branch = HTSAT(cfg.audio)
        self.text_branch = Roberta(cfg.text)
        self.audio_projection = projection(cfg.audio.width, cfg.embed_dim)
        self.text_projection = projection(cfg.text.width, cfg.embed_dim)
        self.logit_scale_a = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # audio-text, the one search uses
        self.logit_scale_t = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # text-audio, training only

    def embed_audio(self, windows: Tensor) -> Tensor:
        """(B, 480000) float32 windows from frontend.prepare / frontend.windows -> (B, embed_dim) unit vectors."""
        return F.normalize(self.audio_projection(self.audio_branch(windows)), dim=-1)

    def embed_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        """(B, L) int64 ids and attention mask from bpe.BPETokenizer.encode -> (B, embed_dim) unit vectors."""
        return F.normalize(self.text_projection(self.text_branch(ids, mask)), dim=-1)

    def logit_scale(self) -> Tensor:
        """exp(logit_scale_a): the factor on audio-text cosine similarities, as the reference's get_logit_scale."""
        return self.logit_scale_a.exp()


def computed_buffers(model: CLAP) -> dict[str, Tensor]:
    """The tensors the reference computes rather than learns, under its keys, as this model computes them."""
    audio = model.audio_branch
    real, imag = audio.stft_kernels.chunk(2)
    out = {
        "audio_branch.spectrogram_extractor.stft.conv_real.weight": real,
        "audio_branch.spectrogram_extractor.stft.conv_imag.weight": imag,
        "audio_branch.logmel_extractor.melW": audio.melW,
    }
    out |= {f"audio_branch.{k}": v for k, v in audio.named_buffers() if k.endswith(COMPUTED_SUFFIXES)}
    return out


def strip_prefix(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The keys without the 'module.' that DistributedDataParallel put in front of the published ones."""
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def is_inference_key(key: str) -> bool:
    """True for a key (without 'module.') that inference loads: not computed, not training-only, not position_ids."""
    return not (
        key.startswith(UNUSED_PREFIXES + COMPUTED_PREFIXES) or key.endswith(COMPUTED_SUFFIXES) or key == POSITION_IDS
    )


def inference_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors inference needs, under CLAP's keys: 'module.' stripped, computed and training-only keys dropped."""
    return {k: v for k, v in strip_prefix(state_dict).items() if is_inference_key(k)}


def _summary(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def check_computed(model: CLAP, state_dict: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Raise WeightsError if a checkpoint's copy of a computed tensor is not what this model computes.

    Integers must be equal; floats within 1e-6 (the reference builds them with numpy and librosa, whose last bit
    may differ between versions).
    """
    ours = computed_buffers(model) | {POSITION_IDS: torch.arange(model.cfg.text.max_positions)[None]}
    for key, given in strip_prefix(state_dict).items():
        want = ours.get(key)
        if want is None:
            continue
        if want.is_floating_point():
            same = given.is_floating_point() and given.shape == want.shape
            same = same and torch.allclose(given.cpu().float(), want.cpu(), rtol=0, atol=1e-6)
        else:
            same = given.shape == want.shape and torch.equal(given.cpu(), want.cpu())
        if not same:
            raise WeightsError(f"{source} does not fit the CLAP model: its {key} is not the one CLAP computes.")


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def load_state_dict(
    model: CLAP, state_dict: dict[str, Tensor], assign: bool = False, source: str = "checkpoint"
) -> CLAP:
    """Load a reference state dict (with or without 'module.', position_ids, computed and training-only keys) into
    model, strictly on the inference keys; anything that does not fit raises a one-line WeightsError."""
    check_computed(model, state_dict, source)
    given = inference_state_dict(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    misfit = [k for k in own if k in given and (given[k].shape != own[k].shape or given[k].dtype != own[k].dtype)]
    wrong = [
        f"{k} {tuple(given[k].shape)} {_dtype(given[k])} != {tuple(own[k].shape)} {_dtype(own[k])}" for k in misfit
    ]
    found = (("missing", missing, 3), ("unexpected", unexpected, 3), ("wrong shape or dtype", wrong, 2))
    if problems := [f"{what} {_summary(keys, n)}" for what, keys, n in found if keys]:
        raise WeightsError(f"{source} does not fit the CLAP model: " + "; ".join(problems) + ".")
    model.load_state_dict(given, strict=True, assign=assign)
    return model


def from_state_dict(state_dict: dict[str, Tensor], cfg: CLAPConfig | None = None, source: str = "checkpoint") -> CLAP:
    """A CLAP in eval mode holding the checkpoint's tensors (shared, not copied), without a random initialisation."""
    with torch.device("meta"):  # computed buffers are built from numpy, so they are real even here
        model = CLAP(cfg or CLAPConfig())
    return load_state_dict(model, state_dict, assign=True, source=source).eval()
