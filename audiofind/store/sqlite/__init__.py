"""The SQLite backend: one file, APSW + sqlite-vec, the embedded default.

`connection` opens the file, `migrations` shapes it, `store` implements the store protocol on it, with the rows
written by `files`, facts read from headers in `facts`, settings in `meta`, nearest-vector search in `search`, the
names index (FTS5) in `fulltext`, filters as SQL in `filters` and copies in and out in `dump`.
"""
