"""The index: one SQLite file (APSW + sqlite-vec) holding files, their audio, segments and vectors.

`records` holds what is stored, `connection` opens the file, `migrations` shapes it, `index` reads and writes
it, `nearest` searches it. No torch here: status, search and serve stay quick to start.
"""

from audiofind.store.records import AudioRow, FileRow, ModelBinding, RootRow, Stats, norm_path
from audiofind.store.sqlite.index import Index, open_index, peek_model, writer_lock
from audiofind.store.sqlite.nearest import Filters, Hit

__all__ = ["AudioRow", "FileRow", "Filters", "Hit", "Index", "ModelBinding", "RootRow", "Stats", "norm_path", "open_index", "peek_model", "writer_lock"]
