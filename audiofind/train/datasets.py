"""Downloading Clotho v2.1 and the DCASE 2022 retrieval set into the layout `bench clotho` and `finetune` read.

DIR/clotho_captions_<split>.csv beside DIR/<split>/*.wav (the challenge set: retrieval_captions.csv and
retrieval_audio_metadata.csv beside DIR/dcase2022-eval/). The manifest (clotho-v2.1-files.tsv: subset, file,
url, md5) names every file; each download resumes with Range requests and is checked against its md5. An archive
is unpacked, its clips checked against the split's CSV with the reader `bench clotho` uses, then deleted; a
marker in the split's folder records which archive it came from, so a later run only checks a complete split.
"""

import csv
import hashlib
import importlib.resources
import logging
import lzma
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import py7zr

from audiofind import paths
from audiofind.errors import ChecksumError, DatasetError, UsageError
from audiofind.eval import clotho, clotho_csv
from audiofind.model.download import fetch

log = logging.getLogger(__name__)

MANIFEST = "clotho-v2.1-files.tsv"
MANIFEST_ENV = "AUDIOFIND_DATA_MANIFEST"
COLUMNS = ["subset", "file", "url", "md5"]
CLOTHO = ("development", "validation", "evaluation")  # what --split all fetches
CHOICES = (*CLOTHO, "all", clotho_csv.CHALLENGE)
SUBSETS = {  # our split -> the manifest's subsets (aac-datasets' names)
    "development": ("dev",),
    "validation": ("val",),
    "evaluation": ("eval",),
    clotho_csv.CHALLENGE: ("dcase_t2a_audio", "dcase_t2a_captions"),
}
MARKER = ".audiofind-unpacked"  # holds the md5 of the archive the folder was unpacked from

Step = Callable[[str, int, int], None]  # (what is happening, bytes done, bytes in all or 0)


@dataclass(frozen=True)
class Remote:
    """One file of the manifest."""

    subset: str
    file: str
    url: str
    md5: str


@dataclass(frozen=True)
class SplitReport:
    """What a run did for one split."""

    split: str
    clips: int
    captions: int
    fetched: tuple[str, ...]  # files downloaded by this run
    unpacked: bool  # False: the split was complete already and was only checked


def default_dir() -> Path:
    """Where Clotho goes without --to: <data dir>/clotho (AUDIOFIND_HOME moves it)."""
    return paths.data_dir() / "clotho"


def manifest_path() -> Path:
    """AUDIOFIND_DATA_MANIFEST if set, else the packaged manifest (weights/ in a source checkout)."""
    override = os.environ.get(MANIFEST_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise DatasetError(f"{MANIFEST_ENV} points to {path}, which does not exist.")
        return path
    packaged = importlib.resources.files("audiofind") / "assets" / MANIFEST
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "weights" / MANIFEST


def read_manifest(path: Path | None = None) -> list[Remote]:
    """The manifest's rows, each checked: four tab-separated fields, a plain file name, a 32-digit md5."""
    path = path or manifest_path()
    with clotho_csv.reading_csv(path, f"The data manifest {path} does not exist."):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter="\t")
            if (header := next(reader, None)) != COLUMNS:
                raise DatasetError(f"{path} line 1: expected the columns {', '.join(COLUMNS)}, found {header}.")
            rows = []
            for row in reader:
                if not row:
                    continue
                where = f"{path} line {reader.line_num}"
                if len(row) != len(COLUMNS):
                    raise DatasetError(f"{where}: expected {len(COLUMNS)} tab-separated fields, found {len(row)}.")
                remote = Remote(*(v.strip() for v in row))
                if Path(remote.file).name != remote.file or remote.file in ("", ".", ".."):
                    raise DatasetError(f"{where}: {remote.file!r} is not a plain file name.")
                if len(remote.md5) != 32 or any(c not in "0123456789abcdef" for c in remote.md5):
                    raise DatasetError(f"{where}: {remote.md5!r} is not an md5 sum (32 hex digits).")
                rows.append(remote)
    return rows


def download_clotho(
    root: Path | None = None, split: str = "all", progress: Step | None = None
) -> tuple[Path, list[SplitReport]]:
    """Fetch, check and unpack a split (or all three) into root; what is complete already is checked and skipped."""
    if split not in CHOICES:
        raise UsageError(f"Unknown split {split!r}; use {', '.join(CHOICES)}.")
    root = Path(root).expanduser() if root else default_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"Cannot create the folder {root}: {e.strerror or e}.") from e
    manifest = read_manifest()
    reports = []
    for name in CLOTHO if split == "all" else (split,):
        files = [r for r in manifest if r.subset in SUBSETS[name]]
        reports.append(_prepare(root, name, files, progress))
    return root, reports


def _prepare(root: Path, split: str, files: list[Remote], progress: Step | None) -> SplitReport:
    archives = [r for r in files if r.file.lower().endswith(".7z")]
    if len(archives) != 1:
        raise DatasetError(
            f"The data manifest {manifest_path()} should list one .7z archive for {split}, found {len(archives)}."
        )
    archive, folder = archives[0], root / split
    fetched = [r.file for r in files if r is not archive and _fetch_checked(root, r, progress)]
    marker = folder / MARKER
    if marker.is_file() and marker.read_text().strip() == archive.md5:
        try:
            listed = clotho.load_split(root, split)  # every clip its CSV lists is there: nothing to unpack
            return SplitReport(split, len(listed.files), len(listed.captions), tuple(fetched), unpacked=False)
        except DatasetError as e:
            log.warning("%s is no longer complete (%s); unpacking it again", folder, e)
    marker.unlink(missing_ok=True)
    if _fetch_checked(root, archive, progress):
        fetched.append(archive.file)
    _unpack(root / archive.file, folder, progress)
    try:
        listed = clotho.load_split(root, split)
    except DatasetError as e:
        raise DatasetError(f"After unpacking {archive.file} the {split} folder does not match its CSV: {e}") from e
    marker.write_text(archive.md5 + "\n")
    (root / archive.file).unlink()  # the clips are checked; the archive would only double the space taken
    return SplitReport(split, len(listed.files), len(listed.captions), tuple(fetched), unpacked=True)


def _fetch_checked(root: Path, remote: Remote, progress: Step | None) -> bool:
    """Make root/<file> a copy with the manifest's md5, downloading (or resuming) only if needed; True if fetched."""
    target = root / remote.file
    if target.is_file():
        report = (lambda done, total: progress(f"Checking {remote.file}", done, total)) if progress else None
        if paths.feed(hashlib.md5(usedforsecurity=False), target, report).hexdigest() == remote.md5:
            return False
        log.warning("%s does not have the md5 of the manifest; downloading it again", target)
    part = target.with_name(target.name + ".part")
    report = (lambda done, total: progress(f"Downloading {remote.file}", done, total)) if progress else None
    actual = fetch(remote.file, remote.url, part, None, report, algorithm="md5")
    if actual != remote.md5:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"The download of {remote.file} has md5 {actual}, but {remote.md5} was expected; "
            "the file was deleted, run the same command to try again."
        )
    os.replace(part, target)
    return True


class _Unpacked(py7zr.callbacks.ExtractCallback):
    """Reports the bytes written so far as py7zr finishes each file."""

    def __init__(self, label: str, total: int, progress: Step) -> None:
        self.label, self.total, self.progress, self.done = label, total, progress, 0

    def report_end(self, processing_file_path: str, wrote_bytes: str) -> None:
        self.done += int(wrote_bytes)
        self.progress(self.label, self.done, self.total)

    def report_start_preparation(self) -> None: ...
    def report_start(self, processing_file_path: str, processing_bytes: str) -> None: ...
    def report_update(self, decompressed_bytes: str) -> None: ...
    def report_warning(self, message: str) -> None: ...
    def report_postprocess(self) -> None: ...


def _unpack(archive: Path, folder: Path, progress: Step | None) -> None:
    """Move every WAV file of a 7z archive into folder, whatever folders it sits in there, via a scratch folder."""
    scratch = folder.with_name(f".{folder.name}.unpacking")
    shutil.rmtree(scratch, ignore_errors=True)  # left by a run that was killed while unpacking
    try:
        with py7zr.SevenZipFile(archive) as z:
            total = sum(f.uncompressed for f in z.list() if not f.is_directory)
            report = _Unpacked(f"Unpacking {archive.name}", total, progress) if progress else None
            z.extractall(scratch, callback=report)
        folder.mkdir(exist_ok=True)
        for wav in sorted(scratch.rglob("*")):
            if wav.is_file() and wav.suffix.lower() == ".wav":
                os.replace(wav, folder / wav.name)
    except (py7zr.exceptions.ArchiveError, lzma.LZMAError, EOFError) as e:
        raise DatasetError(f"{archive} is not a readable 7z archive ({e}); delete it and run the same command.") from e
    except OSError as e:
        raise DatasetError(f"Cannot unpack {archive} into {folder}: {e.strerror or e}.") from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
