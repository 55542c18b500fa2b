"""What a server serves: one index (a pool of read connections) and the text encoder, shared by every request.

A connection must not be used by two threads at once, and request handlers run in a thread pool: each request
borrows a store (a connection) of its own. Idle ones are kept, so their caches (the binary codes of a large index)
stay warm; each search still sees the last committed state, read in one snapshot with the ids of its hits.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from audiofind.search import Found, Why, search
from audiofind.store import FileEntry, Filters, Hit, Store, open_store

if TYPE_CHECKING:
    from audiofind.search.embedding import QueryModel


@dataclass(frozen=True)
class Result:
    """A search hit with the id and root of its file, and why it was found."""

    hit: Hit
    id: int
    root: str
    why: Why | None = None

    def as_dict(self) -> dict:
        """The object `search --json` prints, with "id" added."""
        return asdict(self.hit) | {"why": asdict(self.why) if self.why else None, "id": self.id}


class Library:
    """An index and its encoder, safe to use from many threads."""

    def __init__(self, db: Path | str, encoder: "QueryModel", first: Store | None = None) -> None:
        self.db = db
        self.encoder = encoder
        self._idle: list[Store] = [first] if first else []
        self._pool_lock = threading.Lock()
        self._model_lock = threading.Lock()  # one forward pass at a time, and towers loaded once
        self._closed = False

    @classmethod
    def open(cls, db: Path | str | None, weights: str | None = None, device: str = "auto",
             precision: str = "fp32") -> "Library":  # fmt: skip
        """Open the index (the default one when db is None) and load its model's text tower now, once."""
        from audiofind.search.embedding import query_encoder

        index = open_store(db)
        try:
            # The same query path as `search`, so the page ranks and scores exactly as the CLI does.
            encoder = query_encoder(index, weights, device, precision)
            encoder.embed_text(["warm"])  # load the text tower before the first request, not during it
        except BaseException:
            index.close()
            raise
        return cls(index.location, encoder, index)

    @contextmanager
    def borrow(self) -> Iterator[Store]:
        """Borrow a connection of this thread's own for the duration."""
        with self._pool_lock:
            index = self._idle.pop() if self._idle else None
        if index is None:
            index = open_store(self.db)
        try:
            yield index
        finally:
            with self._pool_lock:
                if self._closed:
                    index.close()
                else:
                    self._idle.append(index)

    def search(self, query: str, k: int, filters: Filters | None = None, mode: str = "hybrid") -> list[Result]:
        """Files matching a description, best first (as `search QUERY --mode MODE`)."""
        with self.borrow() as index, index.reading():
            with self._model_lock:
                found = search(index, query, k=k, filters=filters, mode=mode, model=self.encoder)
            return _results(index, found)

    def like(self, file_id: int, k: int, filters: Filters | None = None) -> list[Result] | None:
        """Files that sound like the indexed file with this id, best first (as `search --like`); None if unknown."""
        with self.borrow() as index, index.reading():
            entry = index.file_entry(file_id)
            if entry is None:
                return None
            with self._model_lock:
                found = search(index, like=Path(entry.path), k=k, filters=filters, model=self.encoder)
            return _results(index, found)

    def entry(self, file_id: int) -> FileEntry | None:
        """The indexed file with this id, or None."""
        with self.borrow() as index:
            return index.file_entry(file_id)

    def status(self) -> dict:
        """The object `status --json` prints."""
        with self.borrow() as index:
            return index.stats().as_dict()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every idle connection; borrowed ones close when they come back."""
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for index in idle:
            index.close()


def _results(index: Store, found: list[Found]) -> list[Result]:
    ids = index.file_ids([f.hit.path for f in found])
    return [Result(f.hit, *ids[f.hit.path], f.why) for f in found if f.hit.path in ids]
