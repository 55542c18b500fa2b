"""The CSV files Clotho v2 and the DCASE 2022 retrieval set are published with, read and checked.

`caption_rows` parses a split's captions file for both of its readers: the benchmark's `read_ground_truth`,
which is strict and raises on the first bad row, and fine-tuning's `train.data.read_clotho`, which skips bad rows
and lists them. The challenge set has no such file: its clips are named in a metadata CSV, its queries in another.
"""

import csv
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from audiofind.errors import DatasetError

CHALLENGE = "dcase2022-eval"  # DCASE 2022 Task 6b's evaluation set, laid out as DIR/dcase2022-eval/*.wav
CHALLENGE_QUERIES, CHALLENGE_CLIPS = "retrieval_captions.csv", "retrieval_audio_metadata.csv"
N_CAPTIONS = 5  # per clip in every Clotho v2 split
GT_HEADER = ["file_name"] + [f"caption_{i}" for i in range(1, N_CAPTIONS + 1)]


@contextmanager
def reading_csv(path: Path, missing: str) -> Iterator[None]:
    """Turn each way that reading a CSV can fail into one DatasetError sentence (`missing` for no file)."""
    try:
        yield
    except FileNotFoundError:
        raise DatasetError(missing) from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}).") from e
    except csv.Error as e:
        raise DatasetError(f"{path} is not a readable CSV: {e}.") from e
    except OSError as e:
        raise DatasetError(f"Cannot read {path}: {e.strerror or e}.") from e


@dataclass(frozen=True)
class CaptionRow:
    """One row of a clotho_captions_<split>.csv below its header: its line number and its fields as written."""

    line: int
    cells: list[str]

    @property
    def name(self) -> str:
        """The clip's file name, without surrounding blanks."""
        return self.cells[0].strip()

    @property
    def captions(self) -> list[str]:
        """The fields after the file name, as written: a submission is matched to them by their exact text."""
        return self.cells[1:]

    @property
    def complete(self) -> bool:
        """A file name and N_CAPTIONS captions, no more, no fewer."""
        return len(self.cells) == len(GT_HEADER)

    @property
    def blank(self) -> bool:
        """Every field empty or blank, as a spreadsheet leaves below its last row."""
        return not any(cell.strip() for cell in self.cells)


def caption_rows(path: Path, missing: str) -> Iterator[CaptionRow]:
    """The rows of a clotho_captions_<split>.csv after checking its header; empty lines are left out."""
    with reading_csv(path, missing):
        # utf-8-sig: a CSV re-saved by a spreadsheet often starts with a byte-order mark.
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{path} is empty; expected a header {','.join(GT_HEADER)}.")
            if [h.strip() for h in header] != GT_HEADER:
                expected, found = ",".join(GT_HEADER), ",".join(header)
                raise DatasetError(f"{path} line 1: expected the header {expected}, found {found}.")
            for row in reader:
                if row:  # an empty line, as a trailing newline pair leaves
                    yield CaptionRow(reader.line_num, row)


def read_ground_truth(path: Path) -> tuple[list[str], list[str], list[int]]:
    """File names, captions and caption-to-file indices from a clotho_captions_*.csv; the first bad row raises."""
    files: list[str] = []
    captions: list[str] = []
    caption_file: list[int] = []
    seen: dict[str, int] = {}
    missing = f"No {path.name} in {path.parent}; point DIR at the folder the Clotho archives unpack into."
    for row in caption_rows(path, missing):
        where = f"{path} line {row.line}"
        if not row.complete:
            raise DatasetError(
                f"{where}: expected {len(GT_HEADER)} fields (file_name and 5 captions), found {len(row.cells)}."
            )
        if not row.name:
            raise DatasetError(f"{where}: the file name is empty.")
        if row.name in seen:
            raise DatasetError(f"{where}: clip {row.name!r} is listed twice (first on row {seen[row.name] + 1}).")
        if any(not c.strip() for c in row.captions):
            raise DatasetError(f"{where}: clip {row.name!r} has an empty caption.")
        seen[row.name] = len(files)
        caption_file.extend([len(files)] * N_CAPTIONS)
        files.append(row.name)
        captions.extend(row.captions)
    if not files:
        raise DatasetError(f"{path} has a header but no clips.")
    return files, captions, caption_file


def read_column(path: Path, name: str, required: bool = True) -> list[str] | None:
    """One column of a CSV with a header, every value non-empty; None if it is absent and not required."""
    with reading_csv(
        path, f"No {path.name} in {path.parent}; get it with: audiofind data download clotho --split {CHALLENGE}"
    ):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # Clotho's metadata CSVs are Latin-1
        reader = csv.reader(io.StringIO(text, newline=""))
        header = [h.strip() for h in next(reader, [])]
        if name not in header:
            if not required:
                return None
            raise DatasetError(f"{path} line 1: expected a column {name!r}, found {','.join(header) or 'nothing'}.")
        at, values = header.index(name), []
        for row in reader:
            if not row:
                continue
            if len(row) <= at or not row[at].strip():
                raise DatasetError(f"{path} line {reader.line_num}: the {name} is empty.")
            values.append(row[at].strip() if name == "file_name" else row[at])
    if not values:
        raise DatasetError(f"{path} has a header but no rows.")
    return values


def archived_name(name: str) -> str:
    """The name a clip has in the challenge archive: a colon, which Windows forbids, became an underscore."""
    return re.sub(r"\s*:\s*", "_", name)


def read_challenge(root: Path) -> tuple[list[str], list[str], list[int] | None]:
    """Clip names from the set's metadata CSV and its queries; their clips only where a file_name column names them."""
    files = [archived_name(n) for n in read_column(root / CHALLENGE_CLIPS, "file_name") or []]
    queries = root / CHALLENGE_QUERIES
    captions = read_column(queries, "caption") or []
    truth = read_column(queries, "file_name", required=False)
    if truth is None:
        return files, captions, None
    where = {name: i for i, name in enumerate(files)}
    for row, name in enumerate(truth, start=2):
        if archived_name(name) not in where:
            raise DatasetError(f"{queries} line {row}: clip {name!r} is not in {CHALLENGE_CLIPS}.")
    return files, captions, [where[archived_name(n)] for n in truth]
