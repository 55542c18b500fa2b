"""The page, rendered on the server: the search form, the status line and one table row per sound found.

The rows carry everything the page's script needs (id, segment, path, file:// URL, sort keys) as data attributes;
the script adds playing, the keyboard, waveforms, regions, sorting, copying and dragging. Searching, "more like
this" and downloading the matching segment are plain links and forms, so the page works, minus sound, without
JavaScript. Copies of one content (the same hash) are folded into the row of the best-ranked one.
"""

import os
from html import escape
from pathlib import Path
from string import Template
from urllib.parse import urlencode

from starlette.datastructures import QueryParams

from audiofind.audio import region
from audiofind.audio.tags import shown_tags
from audiofind.errors import AudiofindError
from audiofind.search import Why
from audiofind.serve import files, params
from audiofind.serve.library import Library, Result
from audiofind.store import Hit

TEMPLATE = Template((Path(__file__).parent / "page.html").read_text(encoding="utf-8"))
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
FILTERS = (
    "k",
    "under",
    "ext",
    "min_duration",
    "max_duration",
    "tag",
    "min_rate",
    "channels",
)  # kept by "more like this"
MODES = (("hybrid", "sound and names"), ("audio", "sound only"), ("text", "names only"))
RATES = (("", "any rate"), ("44100", "≥ 44.1 kHz"), ("48000", "≥ 48 kHz"), ("96000", "≥ 96 kHz"))
CHANNELS = (("", "any channels"), ("1", "mono"), ("2", "stereo"))
# The table's columns: (class, heading, sort key or None, title).
COLUMNS = (
    ("rank", "#", "rank", "Rank (drag ⠿ to take the selected region away)"), ("wave", "waveform", None, ""),
    ("name", "name", "name", ""), ("folder", "folder", "folder", "Folder under the indexed root"),
    ("format", "fmt", None, "Format (the container)"), ("rate", "rate", "rate", "Sample rate"),
    ("bits", "bits", None, "Bit depth (– for lossy formats)"), ("ch", "ch", None, "Channels"),
    ("num duration", "length", "duration", "Duration"), ("num score", "score", "score", "Score"),
    ("why", "why", None, "Why it is here: named (every word of the query), the words its names hold, its place by sound"),
    ("tags", "tags", None, ""), ("actions", "", None, ""),
)  # fmt: skip


def render(library: Library, query: QueryParams, token: str) -> str:
    """The whole page for these query parameters (q or like, k, mode and filters)."""
    results: list[Result] = []
    heading, error = "", ""
    try:
        p = params.parse(query.getlist)
        if p.like is not None:
            found = library.like(p.like, p.k, p.filters)
            entry = library.entry(p.like)
            if found is None or entry is None:
                error = f"No indexed file has id {p.like}."
            else:
                results = found
                heading = f"Sounds like <strong>{escape(Path(entry.path).name)}</strong>"
        elif p.q:
            results = library.search(p.q, p.k, p.filters, p.mode)
        asked = p.like is not None or bool(p.q)
    except AudiofindError as e:
        error, asked = str(e), True
    keep = [(name, value) for name in FILTERS for value in query.getlist(name) if value.strip()]
    if error:
        message = f'<p class="message error">{escape(error)}</p>'
    elif asked and not results:
        message = '<p class="message">No matching sounds.</p>'
    else:
        message = f'<p class="message">{heading}</p>' if heading else ""
    values = {
        name: escape(query.get(name, ""), quote=True) for name in ("q", "under", "min_duration", "max_duration", "tag")
    }
    return TEMPLATE.substitute(
        values,
        title=escape(f"{query.get('q')} · audiofind" if query.get("q") else "audiofind"),
        token=escape(token, quote=True),
        home=escape("/?" + urlencode({"token": token}), quote=True),
        status=escape(_status(library.status())),
        k=escape(query.get("k", str(params.DEFAULT_K)), quote=True),
        ext=escape(" ".join(query.getlist("ext")), quote=True),
        modes=_options(MODES, query.get("mode", "hybrid")),
        rates=_options(RATES, query.get("min_rate", "")),
        channels=_options(CHANNELS, query.get("channels", "")),
        autofocus="" if results else " autofocus",
        message=message,
        table=_table(results, token, keep) if results else "",
    )


def _options(choices: tuple[tuple[str, str], ...], chosen: str) -> str:
    return "".join(
        f'<option value="{escape(v, quote=True)}"{" selected" if v == chosen else ""}>{escape(label)}</option>'
        for v, label in choices
    )


def _status(s: dict) -> str:
    model = f"model {s['model']}" if s["model"] else "no model yet"
    hours = s["audio_hours"]
    audio = f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min" if hours >= 1 / 60 else f"{hours * 3600:.0f} s"
    return f"{s['ok']:,} files · {s['segments']:,} segments · {audio} of audio · {model} · {s['path']}"


def fold(results: list[Result]) -> list[tuple[Result, list[Result]]]:
    """(shown, copies): results of one content together, in the place of the best, shown by one on a root that is
    there if any is."""
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.hit.hash, []).append(r)
    out = []
    for group in groups.values():
        shown = next((r for r in group if r.hit.available), group[0])
        out.append((shown, [r for r in group if r is not shown]))
    return out


def _table(results: list[Result], token: str, keep: list[tuple[str, str]]) -> str:
    cols = "".join(f'<col class="{c.split()[-1]}">' for c, *_ in COLUMNS)
    heads = []
    for cls, label, key, title in COLUMNS:
        inner = f'<button type="button" data-sort="{key}">{label}</button>' if key else label
        extra = (' aria-sort="ascending"' if key == "rank" else "") + (
            f' title="{escape(title, quote=True)}"' if title else ""
        )
        heads.append(f'<th class="{cls}"{extra}>{inner}</th>')
    rows = "\n".join(_row(rank, r, copies, token, keep) for rank, (r, copies) in enumerate(fold(results), 1))
    return f'<table class="results"><colgroup>{cols}</colgroup><thead><tr>{"".join(heads)}</tr></thead><tbody>\n{rows}\n</tbody></table>'


def _row(rank: int, r: Result, copies: list[Result], token: str, keep: list[tuple[str, str]]) -> str:
    h = r.hit
    folder = os.path.relpath(os.path.dirname(h.path), r.root)
    folder = "" if folder == "." else folder
    like = "/?" + urlencode([("token", token), ("like", r.id), *keep])
    part = h.end - h.start < h.duration - 1e-6
    span = f"{_clock(h.start)}–{_clock(h.end)}" if part else ""
    download = f"/api/region/{r.id}?" + urlencode({"start": f"{h.start:.3f}", "end": f"{h.end:.3f}", "token": token})
    data = {
        "id": r.id, "start": f"{h.start:.3f}", "end": f"{h.end:.3f}", "duration": f"{h.duration:.3f}",
        "path": h.path, "name": Path(h.path).name, "file-url": Path(h.path).as_uri(), "mime": files.mime(h.path),
        "folder": folder, "rate": h.sample_rate or 0, "score": f"{h.score:.6f}", "rank": rank,
    }  # fmt: skip
    attrs = " ".join(f'data-{k}="{escape(str(v), quote=True)}"' for k, v in data.items())
    tags = ", ".join(f"{k}={v}" for k, v in shown_tags(h.tags or {}).items())  # as the terminal table shows them
    offline = "" if h.available else " offline"
    why = "" if h.available else ' title="Its folder is not reachable now (an unplugged drive?): it cannot be played."'
    named = f"Download {region.default_name(h.path, h.start, h.end)}"
    reason = explain(r.why) if r.why else ""
    return (
        f'<tr class="hit{offline}" draggable="{"true" if h.available else "false"}" {attrs}{why}>'
        f'<td class="rank"><span class="grip" title="Drag the selected region into your DAW or a folder">⠿</span>{rank}</td>'
        f'<td class="wave"><canvas width="240" height="34" title="Click to play from here; drag to select a region"></canvas></td>'
        f'<td class="name"><button type="button" class="play" title="Play the selection (Space)"{" disabled" if offline else ""}>▶</button>'
        f'<span class="file" title="{escape(Path(h.path).name, quote=True)}">{escape(Path(h.path).name)}</span>'
        f"{f' <span class=span>{span}</span>' if span else ''}{_copies(copies)}</td>"
        f'<td class="folder" title="{escape(os.path.dirname(h.path), quote=True)}">{escape(folder)}</td>'
        f'<td class="format">{escape(h.format or "?")}</td>'
        f'<td class="num rate">{_rate(h.sample_rate)}</td>'
        f'<td class="num bits">{_bits(h)}</td>'
        f'<td class="num ch">{h.channels if h.channels else "?"}</td>'
        f'<td class="num duration">{_clock(h.duration)}</td>'
        f'<td class="num score" title="{escape(reason, quote=True)}">{h.score:.3f}</td>'
        f'<td class="why" title="{escape(reason, quote=True)}">{_why(r.why)}</td>'
        f'<td class="tags" title="{escape(tags, quote=True)}">{escape(tags)}</td>'
        f'<td class="actions"><a class="like" href="{escape(like, quote=True)}" title="More like this (Enter)">similar</a> '
        f'<button type="button" class="copy" title="Copy the path">copy</button> '
        f'<a class="download" href="{escape(download, quote=True)}" title="{escape(named, quote=True)}" download>⤓ wav</a></td>'
        "</tr>"
    )


def _why(why: Why | None) -> str:
    """The terminal table's why (`named · sound #3`), each part kept whole when the cell wraps."""
    parts = why.text().split(" · ") if why else []
    return " · ".join(f"<span>{escape(p)}</span>" for p in parts if p)


def explain(why: Why) -> str:
    """Why, in a sentence for the row's tooltip: what its names hold and its places in the two rankings."""
    parts = []
    if why.terms:
        held = ", ".join(why.terms)
        names = "its name, folders or tags hold"
        parts.append(f"{names} every word ({held})" if why.all_terms else f"{names} {held}")
    if why.audio_rank:
        cosine = f" (cosine {why.audio_score:.3f})" if why.audio_score is not None else ""
        parts.append(f"{_ordinal(why.audio_rank)} by sound{cosine}")
    if why.text_rank:
        parts.append(f"{_ordinal(why.text_rank)} by name")
    said = "; ".join(parts)
    return f"{said[:1].upper()}{said[1:]}." if said else ""


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _copies(copies: list[Result]) -> str:
    """The other files of the same content, with where they are and their format."""
    if not copies:
        return ""
    items = "".join(
        f'<li title="{escape(c.hit.path, quote=True)}">{escape(os.path.relpath(c.hit.path, c.root))} '
        f'<span class="facts">{escape(_facts(c.hit))}</span>{"" if c.hit.available else " (offline)"}</li>'
        for c in copies
    )
    n = len(copies)
    return f'<details class="copies"><summary>+{n} cop{"y" if n == 1 else "ies"}</summary><ul>{items}</ul></details>'


def _facts(h: Hit) -> str:
    """'wav 48k 24-bit 2 ch', 'mp3 44.1k 2 ch'."""
    depth = "" if _bits(h) == "–" else f" {_bits(h)}-bit"
    return f"{h.format or '?'} {_rate(h.sample_rate)}{depth} {h.channels or '?'} ch"


def _rate(rate: int | None) -> str:
    return f"{rate / 1000:g}k" if rate else "?"


def _bits(h: Hit) -> str:
    """The bit depth, marked f for float PCM; – for a lossy codec; ? where unknown."""
    if h.codec is None:
        return "?"
    if h.bits is None:
        return "–"
    return f"{h.bits}f" if h.codec.startswith("pcm_f") else str(h.bits)


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)}:{s:04.1f}"
