"""The page, rendered on the server: the search form, the status line and one table row per result.

The rows carry everything the page's script needs (id, segment, path, file:// URL) as data attributes; the script
adds playing, the keyboard, waveforms, copying and dragging. Searching and "more like this" are plain links and
forms, so the page works, minus sound, without JavaScript.
"""

import os
from html import escape
from pathlib import Path
from string import Template
from urllib.parse import urlencode

from starlette.datastructures import QueryParams

from audiofind.audio.tags import shown_tags
from audiofind.errors import AudiofindError
from audiofind.serve import files, params
from audiofind.serve.library import Library, Result

TEMPLATE = Template((Path(__file__).parent / "page.html").read_text(encoding="utf-8"))
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
FILTERS = ("k", "under", "ext", "min_duration", "max_duration", "tag")  # kept by "more like this" links


def render(library: Library, query: QueryParams, token: str) -> str:
    """The whole page for these query parameters (q or like, k and filters)."""
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
    values = {name: escape(query.get(name, ""), quote=True) for name in ("q", "under", "min_duration", "max_duration", "tag")}
    return TEMPLATE.substitute(
        values,
        title=escape(f"{query.get('q')} · audiofind" if query.get("q") else "audiofind"),
        token=escape(token, quote=True),
        home=escape("/?" + urlencode({"token": token}), quote=True),
        status=escape(_status(library.status())),
        k=escape(query.get("k", str(params.DEFAULT_K)), quote=True),
        ext=escape(" ".join(query.getlist("ext")), quote=True),
        autofocus="" if results else " autofocus",
        message=message,
        table=_table(results, token, keep) if results else "",
    )


def _status(s: dict) -> str:
    model = f"model {s['model']}" if s["model"] else "no model yet"
    hours = s["audio_hours"]
    audio = f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min" if hours >= 1 / 60 else f"{hours * 3600:.0f} s"
    return f"{s['ok']:,} files · {s['segments']:,} segments · {audio} of audio · {model} · {s['path']}"


def _table(results: list[Result], token: str, keep: list[tuple[str, str]]) -> str:
    head = (
        "<thead><tr><th>#</th><th>waveform</th><th>name</th><th>folder</th><th class=num>duration</th>"
        "<th class=num>score</th><th>tags</th><th></th></tr></thead>"
    )
    rows = "\n".join(_row(rank, r, token, keep) for rank, r in enumerate(results, 1))
    return f'<table class="results">{head}<tbody>\n{rows}\n</tbody></table>'


def _row(rank: int, r: Result, token: str, keep: list[tuple[str, str]]) -> str:
    h = r.hit
    folder = os.path.relpath(os.path.dirname(h.path), r.root)
    like = "/?" + urlencode([("token", token), ("like", r.id), *keep])
    span = f"{_clock(h.start)}–{_clock(h.end)}" if h.end - h.start < h.duration - 1e-6 else ""
    data = {
        "id": r.id, "start": f"{h.start:.3f}", "end": f"{h.end:.3f}", "duration": f"{h.duration:.3f}",
        "path": h.path, "name": Path(h.path).name, "file-url": Path(h.path).as_uri(), "mime": files.mime(h.path),
    }  # fmt: skip
    attrs = " ".join(f'data-{k}="{escape(str(v), quote=True)}"' for k, v in data.items())
    tags = ", ".join(f"{k}={v}" for k, v in shown_tags(h.tags or {}).items())  # as the terminal table shows them
    return (
        f'<tr class="hit" draggable="true" {attrs}>'
        f'<td class="rank">{rank}</td>'
        f'<td class="wave"><canvas width="240" height="34" title="Click to play from here"></canvas></td>'
        f'<td class="name"><button type="button" class="play" title="Play the matching segment (Space)">▶</button> '
        f'<span class="file">{escape(Path(h.path).name)}</span>'
        f'{f" <span class=span>{span}</span>" if span else ""}</td>'
        f'<td class="folder" title="{escape(os.path.dirname(h.path), quote=True)}">{escape("" if folder == "." else folder)}</td>'
        f'<td class="num">{_clock(h.duration)}</td>'
        f'<td class="num">{h.score:.3f}</td>'
        f'<td class="tags" title="{escape(tags, quote=True)}">{escape(tags)}</td>'
        f'<td class="actions"><a class="like" href="{escape(like, quote=True)}" title="More like this (Enter)">more like this</a> '
        f'<button type="button" class="copy" title="Copy the path">copy path</button></td>'
        "</tr>"
    )


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)}:{s:04.1f}"
