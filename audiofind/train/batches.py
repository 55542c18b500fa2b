"""Batches for fine-tuning and validation: each epoch pairs every clip with one of its captions and a random crop,
both drawn from (seed, epoch, clip), so an epoch's batches depend on nothing else (not on workers, ranks or where a
resumed run starts); the loaders keep their worker processes for the whole run."""

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from audiofind.audio.decode import SAMPLE_RATE, load_audio, load_crop
from audiofind.errors import DatasetError, DecodeError
from audiofind.model.tokenizer import get_tokenizer, tokenize
from audiofind.train.data import ClipSet

log = logging.getLogger(__name__)

MAX_SUBSTITUTES = 10  # an unreadable clip is replaced by the next one; this many failures in a row is an error


def epoch_batches(n_clips: int, epoch: int, seed: int, batch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This rank's clip indices for one epoch, in batches of batch // world; every rank gets as many batches."""
    clips = TensorDataset(torch.arange(n_clips))  # the sampler only counts them
    sampler: DistributedSampler[int] = DistributedSampler(
        clips, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    indices = list(sampler)
    per_rank = batch // world
    return [indices[i : i + per_rank] for i in range(0, len(indices) - per_rank + 1, per_rank)]


Crop = Callable[[Path, int, np.random.Generator, int], np.ndarray]  # (path, samples, rng, rate) -> the crop


class PairDataset(Dataset):
    """Item (epoch, i): clip i cropped at random with one of its captions, both drawn from (seed, epoch, i).

    rate and crop are the model family's: AudioCLIP's 44.1 kHz and load_crop by default (CLAP's in train/clap.py).
    """

    def __init__(
        self, clips: ClipSet, crop_seconds: float, seed: int, rate: int = SAMPLE_RATE, crop: Crop = load_crop
    ) -> None:
        self.clips = clips.clips
        self.n_samples = round(crop_seconds * rate)
        self.seed, self.rate, self.crop = seed, rate, crop

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, str, list[str]]:
        epoch, index = key
        unreadable: list[str] = []
        for k in range(MAX_SUBSTITUTES):
            i = (index + k) % len(self.clips)  # an unreadable clip is replaced by the next, the same way every time
            clip = self.clips[i]
            rng = np.random.default_rng([self.seed, epoch, i])
            caption = clip.captions[int(rng.integers(len(clip.captions)))]
            try:
                return self.crop(clip.path, self.n_samples, rng, self.rate), caption, unreadable
            except DecodeError as e:
                unreadable.append(str(e))
        raise DatasetError(f"{MAX_SUBSTITUTES} clips in a row could not be decoded, the last one: {unreadable[-1]}")


def collate(items: list[tuple[np.ndarray, str, list[str]]]) -> dict:
    """Stack a batch: audio (B, 1, N) float32, tokens (B, L) cut to the longest caption, and any unreadable files."""
    tokens = tokenize([caption for _, caption, _ in items])
    tokens = tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]  # exact: the mask is causal
    audio = torch.from_numpy(np.stack([x for x, _, _ in items]))[:, None, :]
    return {"audio": audio, "tokens": tokens, "unreadable": [u for _, _, bad in items for u in bad]}


class EpochBatches:
    """The batch sampler of a run's one loader: set to each epoch's batches before iterating the loader again."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def set(self, batches: list[list[int]], epoch: int) -> None:
        """This epoch's batches of clip indices, in order."""
        self.batches = [[(epoch, i) for i in b] for b in batches]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def pair_loader(
    dataset: PairDataset, workers: int, pin: bool = False, collate_fn: Callable[[list], dict] = collate
) -> tuple[DataLoader, EpochBatches]:
    """One loader for a whole run, decoding (epoch, index) items in `workers` processes that live across epochs
    (starting them costs a second each, and each rebuilds its caches), and the sampler to set per epoch."""
    get_tokenizer()  # built here once, so forked workers inherit it instead of each building it
    order = EpochBatches()
    # A generator of its own, so making this loader never draws from the global RNG that dropout uses.
    loader = DataLoader(dataset, batch_sampler=order, collate_fn=collate_fn, num_workers=workers, pin_memory=pin,
                        generator=torch.Generator(), persistent_workers=workers > 0)  # fmt: skip
    return loader, order


class AudioFiles(Dataset):
    """Item i: (i, the first max_seconds of clip i) or (i, the reason it cannot be decoded)."""

    def __init__(self, paths: list[Path], max_seconds: float, rate: int = SAMPLE_RATE) -> None:
        self.paths, self.max_seconds, self.rate = paths, max_seconds, rate

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | str]:
        try:
            return i, load_audio(self.paths[i], max_seconds=self.max_seconds, rate=self.rate)
        except DecodeError as e:
            return i, str(e)


def _as_is(item: object) -> object:
    return item


def file_loader(paths: list[Path], max_seconds: float, workers: int, rate: int = SAMPLE_RATE) -> DataLoader:
    """Whole clips (up to max_seconds) one at a time, decoded at `rate` in worker processes."""
    return DataLoader(
        AudioFiles(paths, max_seconds, rate),
        batch_size=None,
        collate_fn=_as_is,
        num_workers=workers,
        generator=torch.Generator(),
    )
