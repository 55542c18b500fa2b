"""A fine-tuning run's folder: the checkpoint, the snapshots of the best epochs, the metrics log and the card."""

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from audiofind import paths
from audiofind.errors import UsageError, WeightsError

CHECKPOINT, METRICS_LOG, SNAPSHOTS, CARD = paths.RUN_CHECKPOINT, paths.RUN_METRICS, paths.RUN_SNAPSHOTS, paths.RUN_CARD
TMP = ".tmp"  # a file being written is named <name>.tmp (snapshots: epoch-NNN.tmp) until it is renamed into place


def load_checkpoint(out: Path) -> dict:
    """The checkpoint of the run in `out`, tensors on the CPU; UsageError if there is none to resume."""
    path = out / CHECKPOINT
    if not path.is_file():
        raise UsageError(f"Nothing to resume: there is no {CHECKPOINT} in {out}.")
    return torch.load(path, map_location="cpu", weights_only=True)


def save_checkpoint(out: Path, checkpoint: dict) -> None:
    """Write the checkpoint whole or not at all: a run killed while saving keeps its previous one."""
    tmp = out / (CHECKPOINT + TMP)
    torch.save(checkpoint, tmp)
    os.replace(tmp, out / CHECKPOINT)


def snapshot_path(out: Path, epoch: int) -> Path:
    """Where the weights at the end of `epoch` are kept while that epoch is among the best."""
    return out / SNAPSHOTS / f"epoch-{epoch:03d}.safetensors"


def save_snapshot(out: Path, epoch: int, state: dict[str, torch.Tensor]) -> None:
    """Keep the weights at the end of `epoch`, whole or not at all."""
    path = snapshot_path(out, epoch)
    tmp = path.with_suffix(TMP)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
    os.replace(tmp, path)


def prune_snapshots(out: Path, keep: list[int]) -> None:
    """Delete the snapshots of epochs that are no longer among the best."""
    wanted = {snapshot_path(out, e) for e in keep}
    for p in (out / SNAPSHOTS).glob("epoch-*.safetensors"):
        if p not in wanted:
            p.unlink()


def best_epochs(history: list[dict], k: int, key: str = "mAP10") -> list[int]:
    """The k epochs with the highest validation score, best first; a tie goes to the earlier epoch."""
    return [h["epoch"] for h in sorted(history, key=lambda h: (-h[key], h["epoch"]))[:k]]


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors (summed in float64); other tensors are taken from the first."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            total = torch.zeros_like(first, dtype=torch.float64)
            for s in states:
                total += s[key].double()
            out[key] = (total / len(states)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def average_snapshots(out: Path, epochs: list[int]) -> dict[str, torch.Tensor]:
    """The mean of the snapshots of these epochs; WeightsError if one is missing."""
    snapshots = [snapshot_path(out, e) for e in epochs]
    if missing := [p for p in snapshots if not p.is_file()]:
        raise WeightsError(f"The snapshot {missing[0]} is missing, so the best epochs cannot be averaged.")
    return average_state_dicts([load_file(p) for p in snapshots])


def append_record(out: Path, entry: dict) -> None:
    """Add one line to the metrics log."""
    with (out / METRICS_LOG).open("a") as f:
        f.write(json.dumps(entry) + "\n")


def write_card(out: Path, card: dict) -> None:
    """The final model's card beside the run (a kill while writing it is mended by --resume, which writes it again)."""
    (out / CARD).write_text(json.dumps(card, indent=2))


def start(out: Path, checkpoint: dict | None, average_top: int) -> None:
    """Ready the folder for a fresh run, or for one that resumes from `checkpoint`: what came after it goes."""
    (out / SNAPSHOTS).mkdir(parents=True, exist_ok=True)
    step, history = (checkpoint["step"], checkpoint["history"]) if checkpoint else (0, [])
    prune_snapshots(out, best_epochs(history, average_top))
    log = out / METRICS_LOG
    lines = log.read_text().splitlines() if checkpoint and log.is_file() else []
    kept = [line for line in lines if json.loads(line)["step"] <= step]  # drop what came after the checkpoint
    log.write_text("".join(line + "\n" for line in kept))
