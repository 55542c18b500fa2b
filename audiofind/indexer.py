"""Bringing an index in step with folders: walk, skip what is unchanged, detect moves, embed the rest.

`index` and `watch` both call `sync`; nothing else writes files into the index.
"""

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from audiofind import decode
from audiofind.encoder import Encoder, load_for_index
from audiofind.errors import DecodeError, UsageError
from audiofind.formats import AUDIO_EXTS, extension
from audiofind.store import AudioRow, FileRow, Index, ModelBinding

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20
QUEUE_WINDOWS = 16  # decoded windows waiting for the model: bounds memory whatever the file length


@dataclass
class Report:
    """What one sync did; the JSON summary of `index` is this plus timing."""

    embedded: int = 0
    skipped: int = 0
    moved: int = 0
    removed: int = 0
    failed: int = 0
    reused: int = 0  # new paths whose content was already indexed (copies): no embedding needed
    segments: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    device: str = ""
    model: str = ""

    def as_dict(self) -> dict:
        """Plain dict for JSON output."""
        return asdict(self)


@dataclass(frozen=True)
class Event:
    """One change made to the index, reported as it happens (index prints failures, watch prints all)."""

    event: str  # embedded | moved | removed | failed | reused
    path: str
    source: str | None = None  # the old path of a move
    reason: str | None = None
    segments: int = 0
    duration: float = 0.0


@dataclass
class _Pending:
    """A file whose windows are being embedded; committed once info is set and every vector is in."""

    work: "_Work"
    bounds: list[tuple[float, float]] = field(default_factory=list)
    vectors: list[np.ndarray | None] = field(default_factory=list)
    info: decode.AudioInfo | None = None


@dataclass
class _Work:
    path: str
    root: str
    size: int
    mtime_ns: int
    hash: str = ""
    tags: dict = field(default_factory=dict)


def binding(encoder: Encoder, window: float = decode.WINDOW_SECONDS, hop: float = decode.HOP_SECONDS) -> ModelBinding:
    """The identity an index records for the vectors this encoder makes."""
    return ModelBinding(name=encoder.name, sha256=encoder.sha256, dim=encoder.dim, window=window, hop=hop)


def check_roots(roots: Iterable[Path]) -> list[Path]:
    """The roots as absolute paths; UsageError naming the first that is not a folder."""
    out = [Path(os.path.abspath(r)) for r in roots]
    for root in out:
        if not root.is_dir():
            raise UsageError(f"{root} is not a folder.")
    return out


def encoder_for(index: Index, weights: str | None, device: str) -> Encoder:
    """The audio encoder to index with: --weights if given, else the model that built the index, else the default."""
    bound = index.model()
    return load_for_index(bound.name if bound else None, weights, device, ["audio"])


def prepare(index: Index, encoder: Encoder, rebuild: bool = False) -> None:
    """Bind an empty index to the encoder's model (emptying it first with rebuild); refuse another model."""
    if rebuild:
        index.reset()
    if index.model() is None:
        index.bind_model(binding(encoder))
    else:
        index.check_model(binding(encoder))


def walk(roots: Iterable[Path], exts: frozenset[str] = AUDIO_EXTS) -> Iterator[tuple[Path, Path, os.stat_result]]:
    """(root, file, stat) for every audio file under the roots: symlinks followed without loops, hidden names skipped."""
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            try:
                st = os.stat(dirpath)
            except OSError:
                dirnames[:] = []
                continue
            if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop or a folder reached twice
                dirnames[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            # Real folders before symlinked ones: a folder reachable both ways is stored under its real path.
            dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d))
            for name in sorted(filenames):
                if name.startswith(".") or extension(name) not in exts:
                    continue
                path = Path(dirpath) / name
                try:
                    fst = os.stat(path)
                except OSError:
                    continue  # a dangling symlink or a file deleted while walking
                yield root, path, fst


def file_hash(path: Path) -> str:
    """sha256 of the file's bytes: the key that lets copies share vectors and moves skip embedding."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_tags(path: Path) -> dict[str, str]:
    """Text tags (title, artist, genre, ...) through mutagen; a file it cannot read simply has none."""
    import mutagen

    try:
        f = mutagen.File(path, easy=True)
    except (mutagen.MutagenError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
        log.debug("no tags for %s: %s", path, e)
        return {}
    if f is None or not f.tags:
        return {}
    tags = {}
    for key, value in f.tags.items():
        values = value if isinstance(value, list) else [value]
        text = "; ".join(str(v) for v in values if isinstance(v, str | int | float))
        if text:
            tags[str(key).lower()] = text
    return tags


def sync(
    index: Index,
    encoder: Encoder,
    roots: Iterable[Path],
    *,
    exts: frozenset[str] = AUDIO_EXTS,
    retry_failed: bool = False,
    only: Iterable[Path] | None = None,
    on_event: Callable[[Event], None] | None = None,
    progress: Callable[[float, float], None] | None = None,
    stop: threading.Event | None = None,
    decoders: int | None = None,
) -> Report:
    """Make the index hold exactly the audio files under `roots` (or, with `only`, just those paths).

    `decoders` decoding threads feed the model (default: 1 on CPU, where the model needs the cores, else 4).
    """
    started = time.monotonic()
    roots = check_roots(roots)
    index.check_model(binding(encoder))
    report = Report(device=str(encoder.device), model=encoder.name)
    emit = on_event or (lambda e: None)

    # 1. What is on disk now, and what the index knows under the same roots.
    if only is None:
        entries, known_rows = walk(roots, exts), index.files_under(roots)
    else:  # watch: look at the changed paths only, never the whole library
        changed = [Path(os.path.abspath(p)) for p in only]
        changed = [p for p in changed if _root_of(p, roots) is not None]
        entries, known_rows = _walk_only(changed, roots, exts), index.files_under(changed)
    on_disk = {str(path): _Work(str(path), str(root), st.st_size, st.st_mtime_ns) for root, path, st in entries}
    # --ext narrows what this run looks at: indexed files of other types are out of scope, never "vanished".
    known = {row.path: row for row in known_rows if extension(row.path) in exts}

    todo: list[_Work] = []
    for key, work in on_disk.items():
        row = known.get(key)
        unchanged = row is not None and row.size == work.size and row.mtime_ns == work.mtime_ns
        if unchanged and (row.status == "ok" or not retry_failed):
            report.skipped += 1
        else:
            todo.append(work)
    vanished = {p: r for p, r in known.items() if p not in on_disk}

    # 2. Hash what is new or changed: a hash seen under a vanished path is a move, one already indexed a copy.
    by_hash: dict[str, list[str]] = {}
    for path, row in vanished.items():
        if row.hash:
            by_hash.setdefault(row.hash, []).append(path)
    to_embed: list[_Work] = []
    for work in todo:
        if stop is not None and stop.is_set():
            break
        try:
            work.hash = file_hash(Path(work.path))
        except OSError as e:
            _fail(index, work, f"cannot read: {e.strerror or e}", report, emit)
            continue
        sources = by_hash.get(work.hash)
        if sources and work.path not in known:
            source = sources.pop(0)
            index.move_file(source, work.path, work.root, work.size, work.mtime_ns)
            vanished.pop(source, None)
            report.moved += 1
            emit(Event("moved", work.path, source=source))
        elif index.has_audio(work.hash):
            index.add_file(FileRow(work.path, work.root, work.size, work.mtime_ns, work.hash, "ok", None, read_tags(Path(work.path))))
            report.reused += 1
            emit(Event("reused", work.path))
        else:
            to_embed.append(work)

    # 3. Embed, with decoding on other threads so the model never waits for the disk.
    bound = index.model()
    files: dict[str, _Pending] = {}  # decoded or decoding, not yet committed, in arrival order
    batch: list[tuple[_Pending, int, np.ndarray]] = []
    bytes_total, bytes_done = sum(w.size for w in to_embed), 0

    def embed_batch() -> None:
        """Run the model on the buffered windows (of any files)."""
        if batch:
            vectors = encoder.embed_audio([samples for _, _, samples in batch])
            for (pending, i, _), v in zip(batch, vectors):
                pending.vectors[i] = v
            batch.clear()

    def commit_ready() -> None:
        """Commit, one transaction each, the files whose windows are all decoded and embedded."""
        nonlocal bytes_done
        for key, pending in list(files.items()):
            if pending.info is None or any(v is None for v in pending.vectors):
                continue
            work, duration = pending.work, pending.bounds[-1][1]
            audio = AudioRow(work.hash, duration, pending.info.sample_rate, pending.info.channels)
            row = FileRow(work.path, work.root, work.size, work.mtime_ns, work.hash, "ok", None, read_tags(Path(work.path)))
            index.add_file(row, audio, pending.bounds, np.stack(pending.vectors))
            del files[key]
            bytes_done += work.size
            report.embedded += 1
            report.segments += len(pending.bounds)
            emit(Event("embedded", work.path, segments=len(pending.bounds), duration=duration))

    if decoders is None:
        decoders = 1 if encoder.device.type == "cpu" else 4
    for kind, work, payload in _decode_ahead(to_embed, bound.window, bound.hop, stop, decoders):
        if stop is not None and stop.is_set():
            break  # files not yet committed are simply done again next time
        if kind == "start":
            files[work.path] = _Pending(work)
        elif kind == "window":
            pending = files[work.path]
            last_end = pending.bounds[-1][1] if pending.bounds else 0.0
            report.audio_seconds += payload.end - max(payload.start, last_end)  # seconds not counted before
            pending.bounds.append((payload.start, payload.end))
            pending.vectors.append(None)
            batch.append((pending, len(pending.vectors) - 1, payload.samples))
            if len(batch) >= encoder.audio_batch:  # one window on CPU; a full batch on a GPU, across files
                embed_batch()
                commit_ready()
            if progress:  # the total is estimated from the bytes of the files done so far (0 = not known yet)
                rate = report.audio_seconds / bytes_done if bytes_done else 0.0
                progress(report.audio_seconds, max(report.audio_seconds, rate * bytes_total) if bytes_done else 0.0)
        elif kind == "error":  # possibly after some windows: everything of this file is dropped
            dropped = files.pop(work.path)
            batch[:] = [b for b in batch if b[0] is not dropped]
            bytes_done += work.size
            _fail(index, work, payload.reason, report, emit)
        elif kind == "end":
            files[work.path].info = payload
            commit_ready()  # at once if its windows are embedded; else with the batch that holds them
    if not (stop is not None and stop.is_set()):
        embed_batch()
        commit_ready()

    # 4. Whatever vanished and was not a move goes, with vectors nobody else uses.
    if vanished and not (stop is not None and stop.is_set()):
        report.removed += index.remove_files(sorted(vanished))
        for path in sorted(vanished):
            emit(Event("removed", path))
    for root in roots:
        index.touch_root(root)
    report.seconds = time.monotonic() - started
    return report


def _root_of(path: Path, roots: list[Path]) -> Path | None:
    """The innermost root that holds path, or None."""
    holders = [r for r in roots if path == r or r in path.parents]
    return max(holders, key=lambda r: len(r.parts)) if holders else None


def _walk_only(paths: list[Path], roots: list[Path], exts: frozenset[str]) -> Iterator[tuple[Path, Path, os.stat_result]]:
    """walk() restricted to these files and folders, each attributed to the root that holds it."""
    for path in paths:
        root = _root_of(path, roots)
        if root is None or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.is_dir():
            for _, file, st in walk([path], exts):
                yield root, file, st
        elif extension(str(path)) in exts:
            try:
                yield root, path, os.stat(path)
            except OSError:
                continue  # gone again: the index forgets it below


def _fail(index: Index, work: _Work, reason: str, report: Report, emit: Callable[[Event], None]) -> None:
    index.record_failure(work.path, work.root, work.size, work.mtime_ns, reason)
    report.failed += 1
    emit(Event("failed", work.path, reason=reason))


def _decode_ahead(
    works: list[_Work], window: float, hop: float, stop: threading.Event | None, decoders: int | None = None
) -> Iterator[tuple[str, _Work, object]]:
    """(kind, work, payload) messages: start, window (a decode.Window)..., then end (AudioInfo) or error (DecodeError).

    Threads decode whole files ahead into a bounded queue (messages of different files may interleave), so memory
    stays bounded for a file of any length. PyAV releases the GIL while it decodes.
    """
    q: queue.Queue = queue.Queue(maxsize=QUEUE_WINDOWS)
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for work in works:
        todo.put(work)
    finished = threading.Event()

    def produce() -> None:
        try:
            while not finished.is_set() and not (stop is not None and stop.is_set()):
                try:
                    work = todo.get_nowait()
                except queue.Empty:
                    return
                q.put(("start", work, None))
                try:
                    info = decode.probe(Path(work.path))
                    for w in decode.iter_windows(Path(work.path), window, hop):
                        if finished.is_set():
                            return
                        q.put(("window", work, w))
                    q.put(("end", work, info))
                except DecodeError as e:
                    q.put(("error", work, e))
        finally:
            q.put(("done", None, None))

    n = max(1, min(decoders or 1, len(works)))
    threads = [threading.Thread(target=produce, name=f"audiofind-decode-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    try:
        running = n
        while running:
            msg = q.get()
            if msg[0] == "done":
                running -= 1
            else:
                yield msg
    finally:
        finished.set()  # the consumer stopped early: let the producers run out
        while any(t.is_alive() for t in threads):
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
