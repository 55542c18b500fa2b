"""Model families: AudioCLIP and LAION-CLAP, told apart by their checkpoint keys and recorded with their weights.

Torch-free: resolving a model (every search) reads its family from the safetensors metadata, and the cold search
picks its numpy text tower by it. A CLAP model's tokenizer (RoBERTa's vocab.json and merges.txt) is not packaged
with audiofind: it lives in a folder beside the model's safetensors file, `<name>.tokenizer/`.
"""

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from audiofind.errors import WeightsError

Family = Literal["audioclip", "clap"]
FAMILIES: tuple[Family, ...] = ("audioclip", "clap")
SAMPLE_RATES: dict[Family, int] = {"audioclip": 44100, "clap": 48000}  # what each family's audio tower takes
TOKENIZER_FILES = ("vocab.json", "merges.txt")
_CLAP_PREFIXES = ("audio_branch.", "text_branch.")
CLAP_TOWER_PREFIXES = {  # a CLAP model's keys by tower, as weights.read_state_dict reads them
    "audio": ("audio_branch.", "audio_projection."),
    "text": ("text_branch.", "text_projection."),
    "scale": ("logit_scale_a", "logit_scale_t"),
}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # left by DDP and torch.compile when the wrapper was saved


def family_of_keys(keys: Iterable[object]) -> Family:
    """The family a checkpoint's state-dict keys belong to: CLAP's audio_branch / text_branch keys (with or without
    a wrapper prefix), else AudioCLIP (whose own checks then say if the keys are not AudioCLIP's either)."""
    for key in keys:
        if isinstance(key, str):
            for prefix in _WRAPPER_PREFIXES:
                key = key.removeprefix(prefix)
            if key.startswith(_CLAP_PREFIXES):
                return "clap"
    return "audioclip"


def family_of(metadata: dict[str, str]) -> Family:
    """The family a safetensors file's metadata records; files written before families existed are AudioCLIP."""
    family = metadata.get("family") or "audioclip"
    if family not in FAMILIES:
        raise WeightsError(f"The weights record the model family {family!r}, which this audiofind does not know.")
    return family


def tokenizer_dir(weights_file: Path) -> Path:
    """Where a CLAP model's tokenizer files live: `<name>.tokenizer/` beside `<name>.safetensors`."""
    return weights_file.with_suffix(".tokenizer")


def check_tokenizer(folder: Path, hint: str = "") -> Path:
    """The folder if it holds vocab.json and merges.txt, else a one-line WeightsError naming what is missing."""
    missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        where = f"{folder} is not a folder" if not folder.is_dir() else f"{folder} has no {' and no '.join(missing)}"
        raise WeightsError(f"A CLAP model needs RoBERTa's tokenizer (vocab.json and merges.txt), but {where}.{hint}")
    return folder
