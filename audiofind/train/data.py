"""Captioned audio for fine-tuning: Clotho, AudioCaps, a user's own CSV and the indexed library's own names read
into one shape, and the batches.

Every source becomes a ClipSet: clips, each with all its captions. A bad row or a listed file that is missing is
skipped and described in `problems` (a library file whose name says too little, in `thin`); only a source with
nothing usable raises DatasetError. Each epoch pairs every clip with one of its captions and a random crop, both
drawn from (seed, epoch, clip), so an epoch's batches depend on nothing else: not on workers, ranks or where a
resumed run starts.
"""

import csv
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from audiofind.audio import formats, names
from audiofind.audio.decode import SAMPLE_RATE, load_audio, load_crop
from audiofind.errors import DatasetError, DecodeError
from audiofind.eval.clotho import CaptionSet
from audiofind.eval.clotho_csv import GT_HEADER, caption_rows, reading_csv
from audiofind.model.tokenizer import get_tokenizer, tokenize
from audiofind.store import open_store

log = logging.getLogger(__name__)

# Where a caption names a stem that several files share, lossless formats win, then the alphabet.
AUDIO_EXTS = tuple(f".{e}" for e in sorted(formats.AUDIO_EXTS, key=lambda e: (e not in ("wav", "flac"), e)))
AUDIOCAPS_HEADER = ["audiocap_id", "youtube_id", "start_time", "caption"]
AUDIOCAPS_SPLITS = {"train": "train", "validation": "val"}
MAX_SUBSTITUTES = 10  # an unreadable clip is replaced by the next one; this many failures in a row is an error


@dataclass(frozen=True)
class Clip:
    path: Path
    captions: tuple[str, ...]


@dataclass(frozen=True)
class ClipSet:
    """Clips with their captions, in a fixed order, and the rows or files that were skipped on the way."""

    name: str
    clips: tuple[Clip, ...]
    problems: tuple[str, ...] = ()
    thin: tuple[str, ...] = ()  # library files left out because their text says too little

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def n_captions(self) -> int:
        """How many captions the clips have in all (the validation queries)."""
        return sum(len(c.captions) for c in self.clips)


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a CSV, with our error for a file that cannot be read."""
    with reading_csv(path, f"There is no file {path}."):
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets like a byte-order mark
            reader = csv.reader(f)
            for row in reader:
                if row and any(cell.strip() for cell in row):
                    yield reader.line_num, [cell.strip() for cell in row]


def _folder(root: Path, flag: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"The {flag} folder {root} does not exist.")
    return root


def _finish(name: str, clips: list[Clip], problems: list[str], source: Path) -> ClipSet:
    for p in problems[:5]:
        log.warning("skipped: %s", p)
    if len(problems) > 5:
        log.warning("skipped %d more rows or files of %s", len(problems) - 5, source)
    if not clips:
        first = f" The first problem: {problems[0]}" if problems else ""
        raise DatasetError(f"{source} gives no usable captioned clips.{first}")
    log.info(
        "%s: %d clips, %d captions, %d skipped", name, len(clips), sum(len(c.captions) for c in clips), len(problems)
    )
    return ClipSet(name, tuple(clips), tuple(problems))


def read_clotho(root: Path, split: str) -> ClipSet:
    """clotho_captions_<split>.csv and <split>/ under root; rows that do not fit or name a missing file are skipped."""
    root = _folder(root, "--clotho")
    csv_path, audio_dir = root / f"clotho_captions_{split}.csv", root / split
    missing = f"No {csv_path.name} in {root}; point --clotho at the folder the Clotho archives unpack into."
    if not csv_path.is_file():
        raise DatasetError(missing)
    if not audio_dir.is_dir():
        raise DatasetError(f"No folder {audio_dir}; unpack the Clotho {split} audio beside {csv_path.name}.")
    clips, problems = [], []
    for row in caption_rows(csv_path, missing):  # the parser `bench clotho` uses; here bad rows are only skipped
        if row.blank:
            continue
        where, name = f"{csv_path.name} line {row.line}", row.name
        captions = tuple(c.strip() for c in row.captions if c.strip())
        if not row.complete:
            problems.append(
                f"{where}: expected a file name and {len(GT_HEADER) - 1} captions, found {len(row.cells)} fields."
            )
        elif not name or not captions:
            problems.append(f"{where}: the file name is empty." if not name else f"{where}: {name} has no caption.")
        elif not (audio_dir / name).is_file():
            problems.append(f"{where}: {name} is not in {audio_dir}.")
        else:
            clips.append(Clip(audio_dir / name, captions))
    return _finish(f"Clotho {split}", clips, problems, csv_path)


def _audio_files(folders: list[Path]) -> dict[str, Path]:
    """Audio files of the folders by stem; the first folder and extension in AUDIO_EXTS order win."""
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        files = sorted(
            (p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTS),
            key=lambda p: AUDIO_EXTS.index(p.suffix.lower()),
        )
        for p in files:
            found.setdefault(p.stem, p)
    return found


def _audiocaps_stems(audiocap_id: str, youtube_id: str, start: str) -> list[str]:
    """The names AudioCaps clips are saved under by the usual download tools, most specific first."""
    whole = start.split(".")[0]  # start_time is an integer in the official CSVs; AudioSet tools may write 30.0
    return [
        audiocap_id,
        f"{youtube_id}_{start}",
        f"{youtube_id}_{whole}",
        f"Y{youtube_id}_{whole}",
        youtube_id,
        f"Y{youtube_id}",
    ]


def _audiocaps_csv(root: Path, split: str) -> Path | None:
    name = AUDIOCAPS_SPLITS[split]
    for candidate in (root / f"{name}.csv", root / "dataset" / f"{name}.csv", root / "csv_files_v1" / f"{name}.csv"):
        if candidate.is_file():
            return candidate
    if split == "train":  # a single CSV beside the audio, whatever its name
        lone = sorted(root.glob("*.csv"))
        if len(lone) == 1:
            return lone[0]
    return None


def read_audiocaps(root: Path, split: str = "train") -> ClipSet | None:
    """AudioCaps rows (audiocap_id, youtube_id, start_time, caption) grouped into clips; None if the split has no CSV.

    The audio is looked for under <split>/, audio/<split>/, audio/ and the folder itself, named <audiocap_id>,
    <youtube_id>_<start_time>, Y<youtube_id>_<start_time>, <youtube_id> or Y<youtube_id> with any audio extension:
    the layouts of audiocaps-download, aac-datasets and AudioSet-style downloaders.
    """
    root = _folder(root, "--audiocaps")
    csv_path = _audiocaps_csv(root, split)
    if csv_path is None:
        if split == "train":
            raise DatasetError(f"No train.csv (audiocap_id,youtube_id,start_time,caption) in {root}.")
        return None
    name = AUDIOCAPS_SPLITS[split]
    files = _audio_files(
        [root / name, root / "audio" / name, root / "audio", root, csv_path.parent / name, csv_path.parent]
    )
    rows = _rows(csv_path)
    header = next(rows, (1, []))[1]
    if header[:4] != AUDIOCAPS_HEADER:
        raise DatasetError(
            f"{csv_path} line 1: expected the header {','.join(AUDIOCAPS_HEADER)}, found {','.join(header)}."
        )
    by_clip: dict[tuple[str, str], tuple[Path, list[str]]] = {}
    problems = []
    for line, row in rows:
        where = f"{csv_path.name} line {line}"
        if len(row) < 4:
            problems.append(
                f"{where}: expected audiocap_id, youtube_id, start_time and a caption, found {len(row)} fields."
            )
            continue
        if empty := [name for name, cell in zip(AUDIOCAPS_HEADER, row) if not cell]:
            problems.append(
                f"{where}: the {empty[0]} field is empty."
                if len(empty) == 1
                else f"{where}: the fields {', '.join(empty)} are empty."
            )
            continue
        audiocap_id, youtube_id, start, caption = row[:4]
        key = (youtube_id, start.split(".")[0])
        if key in by_clip:
            by_clip[key][1].append(caption)
            continue
        path = next((files[s] for s in _audiocaps_stems(audiocap_id, youtube_id, start) if s in files), None)
        if path is None:
            problems.append(f"{where}: no audio file for {youtube_id} at {start} s (nor {audiocap_id}) under {root}.")
        else:
            by_clip[key] = (path, [caption])
    # Validation rows repeat one clip five times; some tools save it under each audiocap_id, so merge by file too.
    merged: dict[Path, list[str]] = {}
    for path, caps in by_clip.values():
        merged.setdefault(path, []).extend(caps)
    clips = [Clip(path, tuple(caps)) for path, caps in merged.items()]
    return _finish(f"AudioCaps {name}", clips, problems, csv_path)


def read_captions(csv_path: Path) -> ClipSet:
    """A user's pairs: rows of path,caption (an optional header), paths relative to the CSV, several rows per file."""
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DatasetError(f"The captions file {csv_path} does not exist.")
    by_file: dict[Path, list[str]] = {}
    problems = []
    for line, row in _rows(csv_path):
        where = f"{csv_path.name} line {line}"
        if line == 1 and [c.lower() for c in row] == ["path", "caption"]:
            continue
        if len(row) != 2:
            problems.append(f"{where}: expected 2 fields (path, caption), found {len(row)}.")
            continue
        if not all(row):
            problems.append(f"{where}: the caption of {row[0]} is empty." if row[0] else f"{where}: the path is empty.")
            continue
        path = (csv_path.parent / row[0]).resolve()
        if not path.is_file():
            problems.append(f"{where}: there is no file {path}.")
            continue
        by_file.setdefault(path, []).append(row[1])
    clips = [Clip(path, tuple(caps)) for path, caps in by_file.items()]
    return _finish(f"captions {csv_path.name}", clips, problems, csv_path)


def read_library(db: Path | None = None) -> ClipSet:
    """The indexed files (the index at db, or the default one), each captioned with its own words (names.py)."""
    with open_store(db) as index:
        rows = index.files_under([r.path for r in index.roots()])
    clips, problems, thin = [], [], []
    for row in rows:
        if row.status != "ok":
            continue
        found = names.caption_words(row.path, row.root, row.tags)
        if names.is_thin(found):
            thin.append(row.path)
        elif not Path(row.path).is_file():
            problems.append(f"{row.path} is gone since it was indexed.")
        else:
            clips.append(Clip(Path(row.path), (" ".join(found),)))
    if thin:
        log.info("left out %d files whose names and tags have fewer than %d real words", len(thin), names.MIN_WORDS)
    if not clips and thin:
        raise DatasetError(
            f"All {len(thin)} usable files of the index have names with fewer than {names.MIN_WORDS} "
            "real words (numbers and take markers left out), so there is nothing to learn from."
        )
    result = _finish("library", clips, problems, Path(index.location))
    return ClipSet(result.name, result.clips, result.problems, tuple(thin))


def caption_queries(clips: ClipSet) -> CaptionSet:
    """Every caption a query whose one relevant clip is its own: what `bench captions` scores."""
    captions = [c for clip in clips.clips for c in clip.captions]
    owner = [i for i, clip in enumerate(clips.clips) for _ in clip.captions]
    return CaptionSet(clips.name, [clip.path for clip in clips.clips], captions, owner)


def _hold_out(clips: tuple[Clip, ...], fraction: float, seed: int) -> tuple[tuple[Clip, ...], tuple[Clip, ...]]:
    """(kept, held out): a seeded share of whole clips, so no caption of a held-out clip is ever trained on."""
    n_val = max(1, round(fraction * len(clips)))
    if len(clips) - n_val < 2:
        raise DatasetError(f"{len(clips)} clips are too few to hold out a validation set; add captioned clips.")
    held = set(np.random.default_rng(seed).permutation(len(clips))[:n_val].tolist())
    return tuple(c for i, c in enumerate(clips) if i not in held), tuple(c for i, c in enumerate(clips) if i in held)


def load_sources(
    clotho: Path | None,
    audiocaps: Path | None,
    captions: Path | None,
    val_fraction: float = 0.1,
    seed: int = 0,
    library: bool = False,
    db: Path | None = None,
) -> tuple[ClipSet, ClipSet]:
    """(train, validation): every source's training clips; validation held out from the library, else Clotho's,
    else AudioCaps', else held out from the user's captions."""
    if clotho is None and audiocaps is None and captions is None and not library:
        raise DatasetError("No training data: give --clotho DIR, --audiocaps DIR, --captions CSV and/or --library.")
    train: list[ClipSet] = []
    val: ClipSet | None = None
    if library:  # the user's own sounds: what they want scored, before and after
        lib = read_library(db)
        kept, held = _hold_out(lib.clips, val_fraction, seed)
        train.append(ClipSet(lib.name, kept, lib.problems, lib.thin))
        val = ClipSet(f"{lib.name} (held out)", held)
    if clotho is not None:
        train.append(read_clotho(clotho, "development"))
        val = val or read_clotho(clotho, "validation")
    if audiocaps is not None:
        if (found := read_audiocaps(audiocaps, "train")) is not None:  # None only where the split has no CSV: not train
            train.append(found)
        val = val or read_audiocaps(audiocaps, "validation")
    if captions is not None:
        train.append(read_captions(captions))
    clips = tuple(c for s in train for c in s.clips)
    problems = tuple(p for s in train for p in s.problems)
    thin = tuple(t for s in train for t in s.thin)
    name = " + ".join(s.name for s in train)
    if val is None:  # only user captions: hold out whole clips
        clips, held = _hold_out(clips, val_fraction, seed)
        val = ClipSet(f"{name} (held out)", held)
    return ClipSet(name, clips, problems, thin), val


# ---------------------------------------------------------------- batches


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
