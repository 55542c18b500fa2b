"""The Clotho v2 benchmark: load a split, embed clips and captions, rank, and read or write submissions.

The protocol is DCASE 2022 Task 6b's: every caption is a query with exactly one relevant clip (the one it
describes), all clips of the split are ranked by cosine similarity, and the metrics of `audiofind.metrics` score
the ranks. A submission names the ten best clips per caption; it is matched to the ground truth by caption text,
as the official script does, with repeated captions taken in file order so each still counts as its own query.
Besides the three Clotho splits, `dcase2022-eval` is the challenge's own retrieval set (1000 clips, 500 queries),
published without its ground truth: it is ranked and written out as a submission, and scored only where a copy
of its captions file names each query's clip. Any clips with captions (a `CaptionSet`) go through the same code.
The dataset's own CSV files are read in clotho_csv.py.
"""

import csv
import logging
import os
import zipfile
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiofind.errors import DatasetError, UsageError
from audiofind.eval.clotho_csv import CHALLENGE, CHALLENGE_QUERIES, read_challenge, read_ground_truth, reading_csv
from audiofind.eval.metrics import CUTOFF, BenchResult, ranks_from_scores, summarize, top_k

log = logging.getLogger(__name__)

SPLITS = ("evaluation", "validation", "development")
SUBMISSION_HEADER = ["caption"] + [f"file_name_{i}" for i in range(1, CUTOFF + 1)]
AUDIO_BATCH = 32  # clips per embed_audio call: progress and the cache advance in these steps
TEXT_BATCH = 256


@dataclass(frozen=True)
class ClothoSplit:
    """One split's ground truth: clips in CSV order and their captions, five per clip."""

    root: Path
    split: str
    files: list[str]  # clip file names, CSV order
    captions: list[str]  # every caption, CSV order (clip by clip)
    caption_file: list[int] | None  # index into files for each caption; None where no ground truth was published

    @property
    def csv_path(self) -> Path:
        """The captions CSV of this split."""
        return self.root / captions_csv(self.split)

    @property
    def audio_dir(self) -> Path:
        """The folder of this split's WAV files."""
        return self.root / self.split

    def paths(self) -> list[Path]:
        """Each clip's path, in the order of `files`."""
        return [self.audio_dir / name for name in self.files]


@dataclass(frozen=True)
class CaptionSet:
    """Clips anywhere on disk with caption queries, such as a user's path,caption pairs: scored like a split."""

    name: str
    clip_paths: list[Path]
    captions: list[str]
    caption_file: list[int]  # index into clip_paths for each caption

    @property
    def files(self) -> list[str]:
        """How clips are named in a submission: their paths."""
        return [str(p) for p in self.clip_paths]

    def paths(self) -> list[Path]:
        """Each clip's path."""
        return list(self.clip_paths)


def captions_csv(split: str) -> str:
    """The name of a split's captions CSV, beside its folder of clips."""
    return CHALLENGE_QUERIES if split == CHALLENGE else f"clotho_captions_{split}.csv"


def _check_split(split: str) -> None:
    if split not in (*SPLITS, CHALLENGE):
        raise UsageError(f"Unknown Clotho split {split!r}; use {', '.join(SPLITS)} or {CHALLENGE}.")


def _check_audio(split: ClothoSplit) -> None:
    """Every listed clip is a file in the audio folder and every WAV file there is listed."""
    folder = split.audio_dir
    if not folder.is_dir():
        raise DatasetError(f"No folder {folder}; unpack the {split.split} audio archive beside {split.csv_path.name}.")
    try:
        present = {p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    except OSError as e:
        raise DatasetError(f"Cannot list {folder}: {e.strerror}.") from e
    listed = set(split.files)
    for name in split.files:
        if name not in present:
            raise DatasetError(f"Clip {name!r} of {split.csv_path.name} is missing from {folder}.")
    for name in sorted(present - listed):
        if name.lower().endswith(".wav"):
            raise DatasetError(
                f"{folder / name} is not listed in {split.csv_path.name}; the split would not be the official one."
            )


def load_split(root: Path, split: str = "evaluation", need_audio: bool = True) -> ClothoSplit:
    """Read clotho_captions_<split>.csv under root and, if need_audio, check it against the <split>/ folder."""
    _check_split(split)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"No folder {root}.")
    if split == CHALLENGE:
        files, captions, caption_file = read_challenge(root)
    else:
        files, captions, caption_file = read_ground_truth(root / captions_csv(split))
    result = ClothoSplit(root=root, split=split, files=files, captions=captions, caption_file=caption_file)
    if need_audio:
        _check_audio(result)
    log.info("Clotho %s: %d clips, %d captions", split, len(files), len(captions))
    return result


def read_submission(path: Path) -> list[tuple[str, list[str]]]:
    """The rows of a challenge submission CSV: (caption, [file_name_1 ... file_name_10]), in file order."""
    path = Path(path)
    rows: list[tuple[str, list[str]]] = []
    with reading_csv(path, f"No submission file {path}."):
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != SUBMISSION_HEADER:
                found = ",".join(header) if header else "nothing"
                raise DatasetError(
                    f"{path} line 1: expected the header caption,file_name_1,...,file_name_10, found {found}."
                )
            for row in reader:
                where = f"{path} line {reader.line_num}"
                if not row:
                    continue
                if len(row) != len(SUBMISSION_HEADER):
                    raise DatasetError(
                        f"{where}: expected {len(SUBMISSION_HEADER)} fields (caption and 10 file names), "
                        f"found {len(row)}."
                    )
                caption, names = row[0], [n.strip() for n in row[1:]]
                if not caption.strip():
                    raise DatasetError(f"{where}: the caption is empty.")
                # Splits with fewer than ten clips leave the last columns empty; a gap before a name is an error.
                while names and not names[-1]:
                    names.pop()
                if not names or not all(names):
                    raise DatasetError(f"{where}: file names must fill file_name_1 onwards without gaps.")
                rows.append((caption, names))
    return rows


def write_submission(path: Path, split: ClothoSplit | CaptionSet, scores: np.ndarray) -> None:
    """Write the ten best clips per caption in the challenge's format, rows in ground-truth caption order."""
    scores = np.asarray(scores)  # (Q, A)
    if scores.shape != (len(split.captions), len(split.files)):
        raise ValueError(f"scores must be {(len(split.captions), len(split.files))}, got {scores.shape}")
    best = top_k(scores, CUTOFF)  # (Q, min(10, A))
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(SUBMISSION_HEADER)
            for caption, row in zip(split.captions, best):
                names = [split.files[j] for j in row]
                writer.writerow([caption, *names, *[""] * (CUTOFF - len(names))])
        os.replace(tmp, path)  # never leave half a submission under the asked-for name
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"Cannot write the submission {path}: {e.strerror}.") from e


def require_truth(split: ClothoSplit | CaptionSet) -> list[int]:
    """Each caption's relevant clip, or the DatasetError that says this split cannot be scored."""
    if split.caption_file is None:
        raise DatasetError(
            f"{split.csv_path.name} names no clip for its captions (the organisers kept the ground truth), so the "
            f"{split.split} set can be ranked but not scored; write the ranking with --write-submission FILE."
        )
    return split.caption_file


def score_submission(split: ClothoSplit, submission: list[tuple[str, list[str]]]) -> BenchResult:
    """Score a submission against the split's ground truth: one query per ground-truth caption."""
    caption_file = require_truth(split)
    queue: dict[str, deque[int]] = defaultdict(deque)  # caption text -> its queries, in ground-truth order
    for q, caption in enumerate(split.captions):
        queue[caption].append(q)
    known = set(split.files)
    ranks = np.zeros(len(split.captions), dtype=np.int64)
    for row, (caption, names) in enumerate(submission, start=1):
        if caption not in queue:
            raise DatasetError(f"Submission row {row}: caption {caption!r} is not in {split.csv_path.name}.")
        if not queue[caption]:
            raise DatasetError(
                f"Submission row {row}: caption {caption!r} appears more often than in {split.csv_path.name}."
            )
        for name in names:
            if name not in known:
                raise DatasetError(f"Submission row {row}: {name!r} is not a clip of the {split.split} split.")
        q = queue[caption].popleft()
        relevant = split.files[caption_file[q]]
        # Not in the list means "not in the top ten": rank CUTOFF + 1 scores zero on every metric.
        ranks[q] = names.index(relevant) + 1 if relevant in names[:CUTOFF] else CUTOFF + 1
    for unanswered in np.flatnonzero(ranks == 0):
        caption = split.captions[unanswered]
        clip = split.files[caption_file[unanswered]]
        raise DatasetError(f"The submission has no row for caption {caption!r} (clip {clip!r}).")
    return summarize(ranks)


def _clip_key(path: Path) -> str:
    """What identifies a clip's content in the cache, cheaply: name, size and modification time."""
    st = path.stat()
    return f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}"


def _load_cache(cache: Path) -> dict[str, np.ndarray]:
    """Cached clip vectors by clip key; an unreadable cache is ignored, never fatal."""
    try:
        with np.load(cache, allow_pickle=False) as data:
            return dict(zip(data["keys"].tolist(), data["vectors"]))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        log.warning("Ignoring unreadable embedding cache %s: %s", cache, e)
        return {}


def _save_cache(cache: Path, keys: list[str], vectors: np.ndarray) -> None:
    """Write the cache atomically; failing to cache is logged, not raised, since the results stand without it."""
    tmp = cache.with_name(cache.name + ".part.npz")  # np.savez would append .npz to any other suffix
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, keys=np.array(keys, dtype=str), vectors=vectors.astype(np.float32))
        os.replace(tmp, cache)
    except OSError as e:
        log.warning("Could not write the embedding cache %s: %s", cache, e)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _embed_clips(
    paths: list[Path],
    embed_audio: Callable[[list[Path]], np.ndarray],
    cache: Path | None,
    progress: Callable[[int], None],
) -> np.ndarray:
    """Unit clip vectors (A, D), computing only those the cache lacks and saving as it goes."""
    keys = [_clip_key(p) for p in paths]
    stored = _load_cache(cache) if cache else {}
    vectors: dict[str, np.ndarray] = {k: stored[k] for k in keys if k in stored}
    todo = [i for i, k in enumerate(keys) if k not in vectors]
    log.info("Embedding %d clips (%d from the cache)", len(todo), len(keys) - len(todo))
    progress(len(keys) - len(todo))
    for start in range(0, len(todo), AUDIO_BATCH):
        batch = todo[start : start + AUDIO_BATCH]
        out = _normalise(embed_audio([paths[i] for i in batch]))  # (b, D)
        if out.shape[0] != len(batch):
            raise ValueError(f"embed_audio returned {out.shape[0]} vectors for {len(batch)} clips")
        vectors.update(zip((keys[i] for i in batch), out))
        if cache:
            done = [k for k in keys if k in vectors]  # only this split's clips: the cache never outlives them
            _save_cache(cache, done, np.stack([vectors[k] for k in done]))
        progress(len(batch))
    return np.stack([vectors[k] for k in keys])  # (A, D)


def evaluate(
    split: ClothoSplit | CaptionSet,
    embed_audio: Callable[[list[Path]], np.ndarray],
    embed_text: Callable[[list[str]], np.ndarray],
    cache: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[BenchResult, np.ndarray]:
    """Embed every clip and caption, rank all clips per caption by cosine, and score; also returns the (Q, A) scores."""
    relevant = np.asarray(require_truth(split))
    scores = similarities(split, embed_audio, embed_text, cache, progress)
    return summarize(ranks_from_scores(scores, relevant)), scores


def similarities(
    split: ClothoSplit | CaptionSet,
    embed_audio: Callable[[list[Path]], np.ndarray],
    embed_text: Callable[[list[str]], np.ndarray],
    cache: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The (Q, A) cosine similarity of every caption to every clip, embedding only the clips the cache lacks."""
    total = len(split.files) + len(split.captions)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    audio = _embed_clips(split.paths(), embed_audio, cache, advance)  # (A, D)
    text_parts = []
    for start in range(0, len(split.captions), TEXT_BATCH):
        batch = split.captions[start : start + TEXT_BATCH]
        text_parts.append(_normalise(embed_text(batch)))  # (b, D)
        advance(len(batch))
    text = np.concatenate(text_parts)  # (Q, D)
    if text.shape[1] != audio.shape[1]:
        raise ValueError(f"text vectors have {text.shape[1]} dimensions and clip vectors {audio.shape[1]}")
    return text @ audio.T  # (Q, A)
