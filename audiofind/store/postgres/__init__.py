"""The PostgreSQL backend: a team's shared index on a server with pgvector, imported only for a `postgresql://` URL.

`connection` opens the server and says what its failures mean, `migrations` shapes the schema, `store` implements the
store protocol on it, with the rows written by `rows` and `files`, named roots in `roots`, nearest-vector search in
`search` (its hits made by `hits`), the names index in `fulltext`, filters as SQL in `filters`, facts from headers in
`facts`, copies in and out in `dump`, and `server` the throwaway server `bench speed --only postgres` starts.
"""
