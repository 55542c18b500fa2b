"""Search parameters from a query string, checked the way `audiofind search` checks its options."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from audiofind.errors import UsageError
from audiofind.search import MODES
from audiofind.search.filters import read_filters
from audiofind.store import Filters

DEFAULT_K = 20
MAX_K = 1000

Get = Callable[[str], list[str]]  # all values of one query parameter, in order (Starlette's getlist)
Number = TypeVar("Number", int, float)


@dataclass(frozen=True)
class Params:
    """What a search page or API call asks for."""

    q: str | None
    like: int | None  # a file id
    k: int
    filters: Filters
    mode: str = "hybrid"  # as `search --mode`: hybrid, audio or text


def parse(get: Get) -> Params:
    """Read q, like, k, mode and the filters (under, ext, min_duration, max_duration, tag, min_rate, channels);
    UsageError on bad values."""
    last = lambda name: next((v.strip() for v in reversed(get(name)) if v.strip()), None)
    k = _number(text, "k", int) if (text := last("k")) else DEFAULT_K
    if not 1 <= k <= MAX_K:
        raise UsageError(f"k must be between 1 and {MAX_K}, got {k}.")
    like = _number(text, "id", int) if (text := last("like") or last("id")) else None
    lo = _number(text, "min_duration", float) if (text := last("min_duration")) else None
    hi = _number(text, "max_duration", float) if (text := last("max_duration")) else None
    tags = [t for t in get("tag") if t.strip()]  # an empty form field is no filter
    rate = _number(text, "min_rate", int) if (text := last("min_rate")) else None
    channels = _number(text, "channels", int) if (text := last("channels")) else None
    filters = read_filters(last("under"), get("ext"), lo, hi, tags, rate, channels)
    mode = last("mode") or "hybrid"
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    return Params(last("q"), like, k, filters, mode)


def _number(text: str, name: str, kind: type[Number]) -> Number:
    try:
        return kind(text)
    except ValueError:
        raise UsageError(f"{name} must be a {'whole ' if kind is int else ''}number, got {text!r}.") from None


def span(get: Get) -> tuple[float, float]:
    """The start and end (seconds) a region asks for; UsageError if either is missing or not a number."""
    values = [next((v.strip() for v in reversed(get(name)) if v.strip()), None) for name in ("start", "end")]
    if values[0] is None or values[1] is None:
        raise UsageError("Give start and end, the region in seconds.")
    start, end = _number(values[0], "start", float), _number(values[1], "end", float)
    return float(start), float(end)
