"""Finding sounds: one `search()` for the command line, `serve` and the Python API.

By description (`hybrid`: sound and names fused; `audio`: sound alone; `text`: names and tags alone), or by
example (`like=FILE`). `query` reads the syntax, `filters` the restrictions as typed, `embedding` runs the sound
side, `hybrid` fuses the two rankings, `duplicates` finds copies.
"""

from collections.abc import Callable
from pathlib import Path

from audiofind.errors import UsageError
from audiofind.search.embedding import QueryModel, query_encoder
from audiofind.search.hybrid import MODES, Found, Why, like_file, rank_query
from audiofind.store import Filters, Store

__all__ = ["MODES", "Found", "QueryModel", "Why", "search"]


def search(
    index: Store,
    query: str | None = None,
    *,
    like: Path | str | None = None,
    k: int = 20,
    filters: Filters | None = None,
    mode: str = "hybrid",
    not_: str | None = None,
    model: QueryModel | Callable[[], QueryModel] | None = None,
) -> list[Found]:
    """The k files that best match a description (query) or sound like an example file (like), best first.

    model embeds the query; by default the model that built the index, loaded only if the mode needs it.
    """
    if (query is None) == (like is None):
        raise UsageError("Give either a QUERY (what it sounds like) or --like FILE.")
    chosen = model if model is not None else (lambda: query_encoder(index, None, "auto"))
    if like is not None:
        if mode == "text" or not_ is not None:
            raise UsageError("--like searches by sound alone; it takes neither --mode text nor --not.")
        return like_file(index, chosen if isinstance(chosen, QueryModel) else chosen(), Path(like), k, filters)
    return rank_query(index, query or "", k, filters, mode, chosen, not_)
