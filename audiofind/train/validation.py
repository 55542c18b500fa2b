"""Scoring the model being fine-tuned on its validation clips, with the metrics `bench clotho` reports."""

import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from audiofind.errors import DatasetError
from audiofind.eval.metrics import ranks_from_scores, summarize
from audiofind.model.audioclip import AudioCLIP
from audiofind.model.clap.model import CLAP
from audiofind.model.embedder import Embedder
from audiofind.model.encoder import from_model
from audiofind.train import batches, data

log = logging.getLogger(__name__)

VAL_AUDIO_BATCH = 16


@torch.no_grad()
def score_validation(
    model: AudioCLIP | CLAP,
    clips: data.ClipSet,
    device: torch.device,
    amp: AbstractContextManager | None = None,
    workers: int = 0,
    max_seconds: float = 30.0,
    rank: int = 0,
    world: int = 1,
    tokenizer: Path | None = None,
) -> dict:
    """R@1/5/10 and mAP@10 of text-to-audio retrieval, every caption a query (metrics.py, as `bench clotho`).

    Under torchrun each rank embeds its share of clips and captions and all ranks get the same result.
    Clips that cannot be decoded leave the ranking together with their captions (listed under "unreadable").
    A CLAP model is scored as its encoder embeds (train/clap.py), with its tokenizer folder.
    """
    was_training = model.training
    if isinstance(model, CLAP):
        from audiofind.train.clap import validation_encoder

        assert tokenizer is not None, "a CLAP model is validated with its tokenizer folder"
        enc: Embedder = validation_encoder(model, device, tokenizer)
    else:
        enc = from_model(model, model.cfg, device, "validation", "")
    mine = list(range(rank, len(clips), world))
    queries = [(i, c) for i, clip in enumerate(clips.clips) for c in clip.captions]
    audio: dict[int, np.ndarray] = {}
    failed: dict[int, str] = {}
    with amp or nullcontext():
        pending: list[tuple[int, np.ndarray]] = []
        for j, x in batches.file_loader([clips.clips[i].path for i in mine], max_seconds, workers, enc.sample_rate):
            if isinstance(x, str):
                failed[mine[j]] = x
            else:
                pending.append((mine[j], x))
            if pending and (len(pending) == VAL_AUDIO_BATCH or j == len(mine) - 1):
                audio.update(zip([i for i, _ in pending], enc.embed_audio([x for _, x in pending])))
                pending = []
        my_queries = list(range(rank, len(queries), world))
        text = dict(zip(my_queries, enc.embed_text([queries[q][1] for q in my_queries]))) if my_queries else {}
    model.train(was_training)
    if world > 1:
        parts: list = [None] * world
        dist.all_gather_object(parts, (audio, failed, text))
        audio, failed, text = ({k: v for part in parts for k, v in part[n].items()} for n in range(3))
    for reason in failed.values():
        log.warning("validation clip skipped: %s", reason)
    keep = [i for i in range(len(clips)) if i in audio]
    if not keep:
        raise DatasetError(f"None of the {len(clips)} validation clips of {clips.name} could be decoded.")
    column = {i: c for c, i in enumerate(keep)}
    asked = [q for q in range(len(queries)) if queries[q][0] in column]
    a = np.stack([audio[i] for i in keep])  # (A, D)
    t = np.stack([text[q] for q in asked])  # (Q, D)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    result = summarize(ranks_from_scores(t @ a.T, np.array([column[queries[q][0]] for q in asked])))
    return {**result.metrics, "n_queries": len(asked), "n_clips": len(keep), "unreadable": sorted(failed.values())}
