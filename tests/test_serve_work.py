"""`audiofind serve` as a place to work, in-process: regions over HTTP, the file facts in the API and the page,
their filters, copies folded, offline roots, the mode selector and the favicon."""

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import audiogen
import numpy as np
import pytest
from starlette.testclient import TestClient

import servekit
from audiofind.audio import region
from servekit import BASE, TOKEN, Served, cli_run
from wavkit import chunks, decoded, samples


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return servekit.build(tmp_path_factory)


@pytest.fixture
def served(pristine: tuple[Path, Path]) -> Iterator[Served]:
    with servekit.serving(pristine) as served:
        yield served


@pytest.mark.parametrize(("name", "start", "end", "rate", "channels", "bits", "tag"), [
    ("long.flac", 6.25, 11.5, 44100, 1, 16, 1),
    ("sweep.aiff", 0.5, 2.0, 44100, 2, 16, 1),
    ("float.wav", 0.0, 1.0, 44100, 1, 32, 3),
    ("noise.mp3", 0.25, 0.75, 44100, 1, 32, 3),  # lossy: 32-bit float
])  # fmt: skip
def test_a_region_is_that_span_of_the_file_in_its_own_format(served: Served, name: str, start: float, end: float,
                                                             rate: int, channels: int, bits: int, tag: int) -> None:  # fmt: skip
    r = served.client.get(f"/api/region/{served.id(name)}", params={"start": start, "end": end})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav" and int(r.headers["content-length"]) == len(r.content)
    wanted = region.default_name(name, start, end)
    assert r.headers["content-disposition"] == f"attachment; filename*=UTF-8''{quote(wanted)}"
    fmt, got = samples(r.content)
    assert (fmt["rate"], fmt["channels"], fmt["bits"], fmt["tag"]) == (rate, channels, bits, tag)
    assert len(got) == round(end * rate) - round(start * rate)
    cut = region.plan(served.files[name], start, end)
    whole = decoded(served.files[name], cut.kind)[cut.first : cut.first + cut.frames]
    f_in, f_out = cut.fade_in, len(got) - cut.fade_out
    assert np.array_equal(got[f_in:f_out], whole[f_in:f_out])
    assert str(served.files[name]).encode() in chunks(r.content)[b"bext"]


def test_bad_regions_are_400_and_unknown_files_404(served: Served) -> None:
    url = f"/api/region/{served.id('tone.wav')}"
    for params, words in [({}, "Give start and end"), ({"start": "1"}, "Give start and end"),
                          ({"start": "x", "end": "1"}, "start must be a number"), ({"start": 1, "end": 0.5}, "after start"),
                          ({"start": 0, "end": 9}, "past the end of the file"), ({"start": -1, "end": 1}, "0 s or later")]:  # fmt: skip
        r = served.client.get(url, params=params)
        assert r.status_code == 400 and words in r.json()["error"] and r.json()["error"].endswith("."), params
    assert served.client.get("/api/region/999999", params={"start": 0, "end": 1}).status_code == 404
    # an indexed file swapped for a symlink to a file outside the root is not cut either
    secret = audiogen.write_audio(served.root.parent / "secret.wav", audiogen.sine(100, 2.0))
    swapped = served.id("tone.wav")
    served.files["tone.wav"].unlink()
    served.files["tone.wav"].symlink_to(secret)
    r = served.client.get(f"/api/region/{swapped}", params={"start": 0, "end": 1})
    assert r.status_code == 404 and b"RIFF" not in r.content
    gone = served.id("long.flac")
    served.files["long.flac"].unlink()
    r = served.client.get(f"/api/region/{gone}", params={"start": 0, "end": 1})
    assert r.status_code == 404 and "error" in r.json()


def test_regions_need_the_token_and_the_host_and_leave_the_library_alone(served: Served) -> None:
    url = f"/api/region/{served.id('long.flac')}?start=1&end=2"
    bare = TestClient(served.client.app, base_url=BASE)
    assert bare.get(url).status_code == 401
    assert bare.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert bare.get(f"{url}&token={TOKEN}").status_code == 200
    assert served.client.get(url, headers={"Host": "evil.example:8765"}).status_code == 403
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in served.root.rglob("*") if p.is_file()}
    assert served.client.get(url).status_code == 200
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in served.root.rglob("*") if p.is_file()} == before


def test_the_favicon_needs_no_token(served: Served) -> None:
    bare = TestClient(served.client.app, base_url=BASE)
    r = bare.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"] == "image/x-icon" and r.content[:4] == b"\0\0\1\0"
    assert bare.get("/favicon.ico", headers={"Host": "evil.example"}).status_code == 403  # the Host rule still holds
    assert '<link rel="icon" href="/favicon.ico">' in served.client.get("/").text


FACTS = {  # name -> (format, codec, sample_rate, bits, channels)
    "tone.wav": ("wav", "pcm_s16le", 44100, 16, 1),
    "long.flac": ("flac", "flac", 44100, 16, 1),
    "sweep.aiff": ("aiff", "pcm_s16be", 44100, 16, 2),
    "noise.mp3": ("mp3", "mp3", 44100, None, 1),
    "float.wav": ("wav", "pcm_f32le", 44100, 32, 1),
    "take.wv": ("wv", "wavpack", 44100, 16, 1),
}


def test_search_json_carries_the_facts_and_the_filters_work(served: Served) -> None:
    keys = ("format", "codec", "sample_rate", "bits", "channels")
    got = {Path(h["path"]).name: h for h in served.client.get("/api/search", params={"q": "x", "k": 50}).json()}
    assert {name: tuple(h[k] for k in keys) for name, h in got.items()} == FACTS
    assert all(h["available"] is True for h in got.values())
    audiogen.write_audio(
        served.root / "hi.wav", audiogen.sine(500, 1.0, sr=48000, channels=2), sr=48000, codec="pcm_s24le"
    )
    served.reindex()
    for params, cli_args, names in [
        ({"min_rate": "48000"}, ["--min-rate", "48000"], {"hi.wav"}),
        ({"channels": "2"}, ["--channels", "2"], {"hi.wav", "sweep.aiff"}),
        ({"channels": "1", "min_rate": "44100", "ext": "wav"}, ["--channels", "1", "--min-rate", "44100", "--ext", "wav"],
         {"tone.wav", "float.wav"}),
    ]:  # fmt: skip
        api = served.client.get("/api/search", params={"q": "a tone", "k": 50, **params}).json()
        cli = json.loads(cli_run("search", "a tone", "-k", 50, "--json", "--db", served.db, *cli_args))
        assert {Path(h["path"]).name for h in api} == names == {Path(h["path"]).name for h in cli}, params
        assert [{k: v for k, v in h.items() if k != "id"} for h in api] == cli
    for params in ({"min_rate": "fast"}, {"min_rate": "0"}, {"channels": "0"}, {"channels": "two"}):
        r = served.client.get("/api/search", params={"q": "x", **params})
        assert r.status_code == 400 and r.json()["error"].endswith("."), params
    table = cli_run("search", "a tone", "-k", 50, "--db", served.db, "--min-rate", "48000")
    assert "rate/bits/ch" in table and "48k/24/2" in table


def rows_of(html: str) -> dict[str, str]:
    """The result rows of a page, by file name."""
    return {re.search(r'data-name="([^"]+)"', row)[1]: row for row in re.findall(r'<tr class="hit.*?</tr>', html)}


def test_the_page_shows_the_facts_as_sortable_columns_and_selects_the_mode(served: Served) -> None:
    html = served.client.get("/", params={"q": "tone", "k": 50, "mode": "text"}).text
    assert '<select name="mode"' in html and '<option value="text" selected>' in html
    assert set(rows_of(html)) == {"tone.wav"}  # names only
    for key in ("rank", "name", "folder", "rate", "duration", "score"):
        assert f'data-sort="{key}"' in html
    rows = rows_of(served.client.get("/", params={"q": "a tone", "k": 50, "mode": "audio"}).text)
    assert set(rows) == set(FACTS)
    cell = lambda name, cls: re.search(rf'<td class="[^"]*\b{cls}">([^<]*)</td>', rows[name])[1]
    assert [cell("tone.wav", c) for c in ("format", "rate", "bits", "ch")] == ["wav", "44.1k", "16", "1"]
    assert cell("float.wav", "bits") == "32f" and cell("noise.mp3", "bits") == "–" and cell("sweep.aiff", "ch") == "2"
    assert 'data-rate="44100"' in rows["tone.wav"] and "/api/region/" in rows["long.flac"]


@pytest.mark.parametrize("mode", ["hybrid", "audio", "text"])
def test_each_row_says_why_it_is_there_as_the_terminal_does(served: Served, mode: str) -> None:
    from audiofind.search import Why

    query = {"q": "a tone", "k": 50, "mode": mode}
    rows = rows_of(served.client.get("/", params=query).text)
    api = {Path(h["path"]).name: h["why"] for h in served.client.get("/api/search", params=query).json()}
    assert set(rows) == set(api) and rows
    cell = lambda name: (
        (m := re.search(r'<td class="why" title="([^"]*)">(.*?)</td>', rows[name]))[1],
        re.sub(r"<[^>]+>", "", m[2]),  # the text a browser shows
    )
    score_title = lambda name: re.search(r'<td class="num score" title="([^"]*)">', rows[name])[1]
    for name, why in api.items():
        title, shown = cell(name)
        assert shown == Why(**why).text() and title == score_title(name), (name, shown)  # the CLI table's why
        if why["audio_rank"]:
            assert f"sound #{why['audio_rank']}" in shown and f"by sound (cosine {why['audio_score']:.3f})" in title
        else:
            assert mode == "text" and "by sound" not in title
    tone_title, tone = cell("tone.wav")  # the one named with every content word ("a" is a stop word)
    assert tone.startswith("named") and "every word (" in tone_title and "tone" in tone_title
    assert mode == "text" or tone == f"named · sound #{api['tone.wav']['audio_rank']}"
    if mode != "text":
        assert cell("noise.mp3")[1] == f"sound #{api['noise.mp3']['audio_rank']}"  # the sound alone found it


def test_copies_fold_into_one_row_listing_their_formats(served: Served) -> None:
    shutil.copy2(served.files["long.flac"], served.root / "tones" / "long copy.flac")
    served.reindex()
    api = served.client.get("/api/search", params={"q": "long", "k": 50}).json()
    assert len(api) == 7  # the API lists every file
    html = served.client.get("/", params={"q": "long", "k": 50}).text
    rows = rows_of(html)
    assert len(rows) == 6
    folded = next(r for r in rows.values() if "copies" in r)
    assert "+1 copy" in folded and "long copy.flac" in folded and "flac 44.1k 16-bit 1 ch" in folded


def test_files_under_a_root_that_is_gone_are_greyed_and_not_playable(served: Served) -> None:
    away = served.root.with_name("Unplugged")
    served.root.rename(away)
    api = served.client.get("/api/search", params={"q": "x", "k": 50}).json()
    assert len(api) == 6 and all(h["available"] is False for h in api)
    html = served.client.get("/", params={"q": "x", "k": 50}).text
    rows = rows_of(html)
    assert len(rows) == 6 and all(
        'class="hit offline" draggable="false"' in r and "disabled>▶" in r for r in rows.values()
    )
    away.rename(served.root)
    html = served.client.get("/", params={"q": "x", "k": 50}).text
    assert "offline" not in html.split("<tbody>")[1]
