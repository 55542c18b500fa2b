"""A fine-tuning run's folder: the checkpoint, the snapshots of the best epochs, the metrics log and the card.

A run can be killed at any moment, between any two file operations or in the middle of one. The checkpoint and
the snapshots are written under a temporary name and renamed into place, so each is either whole or absent, and
the log grows a line at a time. At an epoch's end the checkpoint is written first, because the epoch's
snapshot and log line can be made again from it; `start` does that when a run resumes. It also cuts the log back
to the checkpoint's step and deletes temporaries, so the folder agrees with the checkpoint before training goes
on. The run's end (averaging, registering the model, the card, the last log line) is simply done again.
"""

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
    """Ready the folder for a fresh run, or make it agree with the checkpoint a run resumes from."""
    (out / SNAPSHOTS).mkdir(parents=True, exist_ok=True)
    for tmp in (out / (CHECKPOINT + TMP), *(out / SNAPSHOTS).glob("*" + TMP)):
        tmp.unlink(missing_ok=True)  # left by a run killed while writing it
    if checkpoint is None:
        prune_snapshots(out, [])
        (out / METRICS_LOG).write_text("")
        return
    history, step = checkpoint["history"], checkpoint["step"]
    keep = best_epochs(history, average_top)
    closed = history[-1] if history and history[-1]["step"] == step else None  # the epoch this checkpoint ended
    if closed and closed["epoch"] in keep and not snapshot_path(out, closed["epoch"]).is_file():
        save_snapshot(out, closed["epoch"], checkpoint["model"])  # the checkpoint holds that epoch's last weights
    prune_snapshots(out, keep)
    if not trim_log(out / METRICS_LOG, step, closed["epoch"] if closed else None) and closed:
        append_record(out, {"kind": "epoch", **closed})


def trim_log(log: Path, step: int, epoch: int | None = None) -> bool:
    """Cut the log back to the records up to `step`, the final one left out; True if it keeps `epoch`'s line."""
    kept, has_epoch = 0, False
    if not log.is_file():
        log.touch()
        return False
    with log.open("rb") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short by a kill
                break
            if not line.endswith(b"\n") or entry["step"] > step or entry["kind"] == "final":
                break  # written after the checkpoint; the final line is written again when the run ends again
            kept += len(line)
            has_epoch = has_epoch or (entry["kind"] == "epoch" and entry["epoch"] == epoch)
    os.truncate(log, kept)
    return has_epoch
