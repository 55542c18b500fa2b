"""Captioned audio for fine-tuning: Clotho, AudioCaps, a user's own CSV and the indexed library's own names read
into one shape (the batches they make: train/batches.py).

Every source becomes a ClipSet: clips, each with all its captions. A bad row or a listed file that is missing is
skipped and described in `problems` (a library file whose name says too little, in `thin`); only a source with
nothing usable raises DatasetError. Each epoch pairs every clip with one of its captions and a random crop, both
drawn from (seed, epoch, clip), so an epoch's batches depend on nothing else: not on workers, ranks or where a
resumed run starts.
"""

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiofind.audio import formats, names
from audiofind.errors import DatasetError
from audiofind.eval.clotho import CaptionSet
from audiofind.eval.clotho_csv import GT_HEADER, caption_rows, reading_csv
from audiofind.store import open_store

log = logging.getLogger(__name__)

# Where a caption names a stem that several files share, lossless formats win, then the alphabet.
AUDIO_EXTS = tuple(f".{e}" for e in sorted(formats.AUDIO_EXTS, key=lambda e: (e not in ("wav", "flac"), e)))
AUDIOCAPS_HEADER = ["audiocap_id", "youtube_id", "start_time", "caption"]
AUDIOCAPS_SPLITS = {"train": "train", "validation": "val"}


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
