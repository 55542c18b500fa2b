"""The SQLite backend: one file, APSW + sqlite-vec, the embedded default.

`connection` opens the file, `migrations` shapes it, `store` implements the store protocol on it, with the rows
written by `files`, nearest-vector search in `search`, the names index (FTS5) in `names` and filters as SQL in
`filters`.
"""
