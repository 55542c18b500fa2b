"""What the fine-tuning tests share: six sounds in the Clotho layout, TINY starting weights, a seconds-long recipe,
and the float64 model the gradient checks use (also in their worker processes)."""

import csv
import math
from pathlib import Path

import audiogen
import torch
from modelkit import synthetic_state_dict

from audiofind.model import weights
from audiofind.model.audioclip import AudioCLIP
from audiofind.model.config import TINY
from audiofind.train.config import TrainConfig

# Six sounds a tiny model can tell apart; variant k changes pitch, seed or level a little.
SOUNDS = [
    (
        "beep",
        lambda k: audiogen.sine(2500 + 300 * k, 1.0),
        [
            "a high pitched beep",
            "a shrill electronic tone",
            "a high beep sounds",
            "a piercing whistle tone",
            "a thin high note",
        ],
    ),
    (
        "hum",
        lambda k: audiogen.sine(90 + 15 * k, 1.0),
        ["a low hum", "a deep humming drone", "low rumble of a motor", "a bass hum", "a dull low drone"],
    ),
    (
        "noise",
        lambda k: audiogen.noise(1.0, seed=int(10 * k)),
        ["white noise hissing", "static hiss", "loud hiss of noise", "rushing noise like wind", "a noisy hiss"],
    ),
    (
        "sweep",
        lambda k: audiogen.chirp(200, 4000 + 500 * k, 1.0),
        ["a rising sweep", "a tone sweeping upward", "pitch goes up quickly", "a rising siren", "an upward glide"],
    ),
    (
        "buzz",
        lambda k: audiogen.square(180 + 20 * k, 1.0),
        ["an electric buzz", "a harsh buzzing sound", "a buzzer going off", "a raspy square wave buzz", "buzzing"],
    ),
    (
        "quiet",
        lambda k: audiogen.sine(1000, 1.0, amp=0.001 * (k + 1)),
        ["near silence", "almost nothing can be heard", "a very quiet room", "silence", "faint quiet"],
    ),
]
CHANCE_MAP10 = sum(1 / r for r in range(1, len(SOUNDS) + 1)) / len(SOUNDS)  # random ranking of 6 clips: 0.408


def make_clotho(root: Path) -> Path:
    """Clotho layout: three variants of each sound for development, one in between for validation."""
    for split, variants in (("development", (0, 1, 2)), ("validation", (0.5,))):
        (root / split).mkdir(parents=True)
        with open(root / f"clotho_captions_{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
            for name, make, captions in SOUNDS:
                for k in variants:
                    audiogen.write_audio(root / split / f"{name}_{k:g}.wav", make(k))
                    w.writerow([f"{name}_{k:g}.wav", *captions])
    return root


def register_init(name: str = "tiny-init") -> str:
    """TINY recipe weights as a local model; the audio-text logit scale starts at 10, not 100, so a few steps show."""
    sd = synthetic_state_dict(TINY)
    sd["logit_scale_at"] = torch.tensor(math.log(10.0))
    weights.save_model(sd, name, TINY.to_dict(), {"description": "TINY recipe weights for tests"})
    return name


def quick(tmp: Path, clotho: Path, **changes) -> TrainConfig:  # type: ignore[no-untyped-def]
    """A seconds-long recipe: TINY crops, a high learning rate, no worker processes."""
    base = dict(
        name="tuned",
        clotho=clotho,
        init="tiny-init",
        out=tmp / "run",
        epochs=2,
        lr=3e-3,
        warmup_steps=1,
        crop_seconds=0.3,
        workers=0,
        average_top=2,
    )
    return TrainConfig(**(base | changes))


def float64_model(state: dict[str, torch.Tensor]) -> AudioCLIP:
    """TINY in float64 and eval mode, with the trainer's frozen (empty) fbsp bias."""
    model = AudioCLIP(TINY).double()
    model.load_state_dict(state)
    model.audio.fbsp.bias.requires_grad_(False)
    return model.eval()


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient by name (frozen ones have none)."""
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
