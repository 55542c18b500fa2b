"""Bringing an index in step with folders: walk, skip what is unchanged, detect moves and copies, embed the rest.

`index` and `watch` both call `sync`; nothing else writes files into the index. A missing drive is never a
deletion: a root that is missing, empty or unreadable keeps its files, and so does a root that would lose more than
a quarter of them in one run, until `prune` says the files really are gone. A new root that holds a missing root's
files is that root moved (`relocate`): it is left for `roots move`, not indexed a second time.
"""

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiofind.audio import decode
from audiofind.audio.formats import AUDIO_EXTS, extension
from audiofind.errors import DeviceError, UsageError, WeightsError
from audiofind.library import relocate
from audiofind.library.claims import add_copy, embed, fail
from audiofind.library.decoding import Work
from audiofind.library.pipeline import Remote, reason_of
from audiofind.library.report import Event, Report
from audiofind.library.walk import Walk, absolute, check_roots, readable, root_of, walk, walk_only
from audiofind.model.embedder import Embedder
from audiofind.model.encoder import load_for_index
from audiofind.paths import hash_file
from audiofind.store import FileRow, ModelBinding, Store, peek_model
from audiofind.store.records import folder_prefix

__all__ = ["Event", "Report", "binding", "check_embeds", "check_roots", "indexing_encoder", "prepare", "sync", "walk"]

log = logging.getLogger(__name__)

# One run removes at most this share of a root's indexed files (when more than PRUNE_MIN) without --prune.
PRUNE_SHARE = 0.25
PRUNE_MIN = 20


def binding(encoder: Embedder, window: float = decode.WINDOW_SECONDS, hop: float = decode.HOP_SECONDS) -> ModelBinding:
    """The identity an index records for the vectors this encoder makes."""
    precision = getattr(encoder, "precision", "fp32")  # how the audio tower computes: part of the vectors' identity
    return ModelBinding(encoder.name, encoder.sha256, encoder.dim, window, hop, precision)


def indexing_encoder(index: Store, weights: str | None, device: str, precision: str | None = None) -> Embedder:
    """The audio encoder to index with: --weights if given, else the model that built the index, else the default;
    --precision if given, else the index's own."""
    return _load(index.model(), weights, device, precision)


def load_checked(db: Path | str, weights: str | None, device: str, precision: str | None = None) -> Embedder:
    """The audio encoder for indexing db (as indexing_encoder chooses it), loaded and tried on a short clip before
    anything is written."""
    encoder = _load(peek_model(db), weights, device, precision)
    check_embeds(encoder)
    return encoder


def check_embeds(encoder: Embedder) -> None:
    """Try the encoder on half a second of noise at its own rate: WeightsError if it gives non-finite embeddings."""
    probe = np.random.default_rng(0).standard_normal(encoder.sample_rate // 2).astype(np.float32) * 3000
    if not np.all(np.isfinite(encoder.embed_audio([probe]))):
        raise WeightsError(f"Model '{encoder.name}' gives non-finite embeddings; its checkpoint is damaged.")


def _load(bound: ModelBinding | None, weights: str | None, device: str, precision: str | None) -> Embedder:
    chosen = precision or (bound.precision if bound else "fp32")
    try:
        return load_for_index(bound.name if bound else None, weights, device, ["audio"], precision=chosen)
    except DeviceError:
        if precision is None and chosen != "fp32":  # the user asked for nothing: say where the precision came from
            raise DeviceError(
                f"This index holds {chosen} embeddings, which need a CUDA device"
                f"{' or a CPU with AVX-512-BF16 or AMX' if chosen == 'bf16' else ''}: add to it with --device cuda, "
                f"or rebuild it in fp32 with --rebuild --precision fp32."
            ) from None
        raise


def prepare(index: Store, encoder: Embedder) -> None:
    """Bind an empty index to the encoder's model; refuse another model."""
    if index.model() is None:
        index.bind_model(binding(encoder))
    else:
        index.check_model(binding(encoder))


def _under(path: str, folder: Path) -> bool:
    return path == str(folder) or path.startswith(folder_prefix(str(folder)))


def sync(
    index: Store,
    encoder: Embedder,
    roots: Iterable[Path],
    *,
    exts: frozenset[str] = AUDIO_EXTS,
    retry_failed: bool = False,
    only: Iterable[Path] | None = None,
    on_event: Callable[[Event], None] | None = None,
    progress: Callable[[float, float], None] | None = None,  # (audio seconds embedded, share of the work done)
    stop: threading.Event | None = None,
    decoders: int | None = None,
    prune: bool = False,
    cluster: Remote | None = None,
) -> Report:
    """Make the index hold exactly the audio files under `roots` (or, with `only`, just those paths).

    A root named in `only` is looked at in full, with a full walk's protections. `decoders` decoding threads feed
    the model (default: 1 on CPU, where the model needs the cores, else 4); with `cluster`, the files to embed are
    decoded and embedded there instead (library/cluster.py), and committed here all the same.
    """
    started = time.monotonic()
    roots = absolute(roots)
    bound = index.model()
    if bound is None:
        raise ValueError("Bind a model (sync.prepare) before syncing.")
    index.check_model(binding(encoder, bound.window, bound.hop))  # the segmenting is the index's own
    report = Report(device=str(encoder.device), model=encoder.name)
    emit = on_event or (lambda e: None)
    stopped = lambda: stop is not None and stop.is_set()
    only_paths = None if only is None else absolute(only)

    # 1. What is on disk now, and what the index knows under the same roots.
    survey = _survey(index, roots, only_paths, exts, retry_failed, prune, report, emit)
    for root in survey.live:  # listed before its first file, so a run stopped half way still knows its folders
        if root in survey.full:
            index.mount_root(root)
    # 2. Hash what is new or changed: moves and copies need no model.
    works = _sort_out(index, survey, report, emit, stop)
    # 3. Embed: short files first, so one long recording never holds up the rest of a library.
    if works and not stopped():
        embed(index, encoder, works, report, emit, progress, stop, decoders, cluster)
    # 4. Remove what vanished (within the prune guard), and leave the index ready for reads.
    if stopped():
        report.stopped = True
    else:
        _finish(index, survey, prune, whole=only_paths is None, report=report, emit=emit)
    report.seconds = time.monotonic() - started
    return report


@dataclass
class Survey:
    """What a sync found before hashing anything: the roots looked at in full and those that are there, the audio
    files on disk, the files the index holds under the same roots, and which of those are gone."""

    full: list[Path]
    live: list[Path]
    on_disk: dict[str, Work]
    known: dict[str, FileRow]
    todo: list[Work]  # new or changed on disk
    vanished: dict[str, FileRow]  # gone from disk, and not under a root or folder that is merely unavailable


def _survey(
    index: Store,
    roots: list[Path],
    only_paths: list[Path] | None,
    exts: frozenset[str],
    retry_failed: bool,
    prune: bool,
    report: Report,
    emit: Callable[[Event], None],
) -> Survey:
    """Walk the roots and compare with the index. Roots that are not there (or show nothing while the index holds
    files under them) are set aside with their files: a drive, not a deletion."""
    full = roots if only_paths is None else [r for r in roots if r in only_paths]
    partial = [] if only_paths is None else [p for p in only_paths if p not in roots and root_of(p, roots)]
    held = [*index.files_under(full), *index.files_under(partial)]
    known = {r.path: r for r in held if extension(r.path) in exts}  # --ext narrows
    seen_walk = Walk()
    live = []
    for root in full:
        if root.is_dir() and readable(root):
            live.append(root)
        elif root.exists() and not root.is_dir() or not any(_under(p, root) for p in known):  # a file is no root
            raise UsageError(f"{root} is not a folder." if not root.is_dir() else f"Cannot read the folder {root}.")
    entries = [*walk(live, exts, seen_walk), *walk_only(partial, roots, exts, seen_walk)]
    on_disk = {str(path): Work(str(path), str(root), st.st_size, st.st_mtime_ns) for root, path, st in entries}
    # A new root holding a missing root's files is that root moved: indexing it would list every sound twice, so it
    # is left alone, with a line naming `audiofind roots move`.
    fresh = [r for r in live if r in full and not any(_under(p, r) for p in known)]
    for moved in relocate.find(index, fresh, list(on_disk.values())) if fresh else []:
        report.relocated.append(moved.as_dict())
        emit(Event("relocated", moved.new, source=moved.old, reason=moved.hint, count=moved.files))
        full, live = [r for r in full if str(r) != moved.new], [r for r in live if str(r) != moved.new]
        on_disk = {p: w for p, w in on_disk.items() if w.root != moved.new}
        seen_walk.left_out = [p for p in seen_walk.left_out if not _under(p, Path(moved.new))]
        index.forget_root(moved.new)  # mounted early (index --root-name) it would stand in the way of `roots move`
    report.seen = len(on_disk)
    in_index = {r.path for r in held}  # audio files --ext left out that an earlier run indexed are not news
    report.left_out = dict(sorted(Counter(extension(p) for p in seen_walk.left_out if p not in in_index).items()))
    protected: list[Path] = []  # folders whose indexed files stay whatever the walk saw
    for root in full:
        if root in live and any(w.root == str(root) for w in on_disk.values()):
            continue
        n = sum(1 for p in known if _under(p, root))
        if n and not prune:
            why = "missing" if not root.exists() else "unreadable" if root not in live else "empty"
            reason = f"root {root} is not available ({why}): {n:,} files kept"
            report.unavailable.append(str(root))
            report.kept += n
            protected.append(root)
            emit(Event("unavailable", str(root), reason=reason, count=n))
    if not prune:
        protected += [Path(d) for d in seen_walk.unreadable]
    todo: list[Work] = []
    for key, work in on_disk.items():
        row = known.get(key)
        unchanged = row is not None and row.size == work.size and row.mtime_ns == work.mtime_ns
        if row is not None and unchanged and (row.status == "ok" or not retry_failed):
            report.skipped += 1
        else:
            todo.append(work)
    vanished = {p: r for p, r in known.items() if p not in on_disk and not any(_under(p, d) for d in protected)}
    return Survey(full, live, on_disk, known, todo, vanished)


def _sort_out(
    index: Store, survey: Survey, report: Report, emit: Callable[[Event], None], stop: threading.Event | None
) -> list[Work]:
    """Hash what is new or changed: a hash seen under a vanished path is a move, one already indexed a copy, one met
    twice in this run is embedded once. Returns what needs the model, short files first."""
    by_hash: dict[str, list[str]] = {}
    for path, row in survey.vanished.items():
        if row.hash:
            by_hash.setdefault(row.hash, []).append(path)
    to_embed: dict[str, Work] = {}
    for work in survey.todo:
        if stop is not None and stop.is_set():
            break
        try:
            work.hash = hash_file(work.path, stop=stop)
        except InterruptedError:
            break
        except Exception as e:
            reason = f"cannot read: {e.strerror or e}" if isinstance(e, OSError) else reason_of(e)
            fail(index, work, reason, report, emit)
            continue
        sources = by_hash.get(work.hash)
        if sources and work.path not in survey.known:
            source = sources.pop(0)
            index.move_file(source, work.path, work.root, work.size, work.mtime_ns)
            survey.vanished.pop(source, None)
            report.moved += 1
            emit(Event("moved", work.path, source=source))
        elif work.hash in to_embed:
            to_embed[work.hash].copies.append(work)
        elif index.has_audio(work.hash):
            add_copy(index, work, report, emit)
        else:
            to_embed[work.hash] = work
    return sorted(to_embed.values(), key=lambda w: (w.size, w.path))


def _finish(
    index: Store, survey: Survey, prune: bool, whole: bool, report: Report, emit: Callable[[Event], None]
) -> None:
    """Whatever vanished and was not a move goes, with vectors nobody else uses; but a root that would lose more than
    a quarter of its files at once keeps them until --prune: a half-mounted share looks like that."""
    vanished = survey.vanished
    for root in survey.full:
        gone = sorted(p for p in vanished if _under(p, root))
        n = sum(1 for p in survey.known if _under(p, root))
        if not prune and len(gone) > PRUNE_MIN and len(gone) > PRUNE_SHARE * n:
            for p in gone:
                del vanished[p]
            report.kept += len(gone)
            reason = (
                f"{len(gone):,} of the {n:,} indexed files under {root} are gone ({len(gone) / n:.0%}); kept them "
                f"in case the folder is only partly there: run 'audiofind index --prune {root}' to remove them"
            )
            emit(Event("kept", str(root), reason=reason, count=len(gone)))
    if vanished:
        report.removed += index.remove_files(sorted(vanished))
        for path in sorted(vanished):
            emit(Event("removed", path))
    if whole:
        index.drop_partials()  # unfinished contents of files that failed, changed or went away
    for root in survey.full:
        if root in survey.live:
            index.touch_root(root)
        elif prune:
            index.forget_root(root)
    index.optimize()  # ready for fast reads: one read for the next cold search (SQLite), ANN index (PostgreSQL)
