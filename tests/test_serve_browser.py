"""`audiofind serve` for real: the command in a subprocess, and the page in Debian's chromium driven by Playwright."""

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_plus

import audiogen
import numpy as np
import pytest
from modelkit import register_tiny
from typer.testing import CliRunner

from audiofind.cli import app as cli

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required", "--mute-audio",
]  # fmt: skip
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium; .ci/run does)",
)
QUERY = "rain on a tin roof"


@dataclass
class Server:
    url: str
    base: str
    token: str
    proc: subprocess.Popen
    stderr: "queue.Queue[str]"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_library(root: Path) -> dict[str, Path]:
    """A small library as it comes: several rates, depths and channel counts, long enough that matching segments
    start inside the files, one AIFF and one 24-bit WAV (which the server transcodes), and a copy in another folder."""
    sr = audiogen.SAMPLE_RATE
    rng = np.random.default_rng(7)

    def shaped(x: np.ndarray, envelope: np.ndarray) -> np.ndarray:  # waveforms worth looking at in the screenshot
        return (x * envelope[None, : x.shape[1]]).astype(np.float32)

    def t(seconds: float, rate: int = sr) -> np.ndarray:
        return np.arange(round(seconds * rate)) / rate

    steps = lambda seconds, every, rate=sr: np.repeat(
        rng.uniform(0.1, 1.0, int(seconds / every) + 1), round(every * rate)
    )
    files = {  # name: (folder, samples, rate, writer options)
        "rain on a tin roof.flac": ("Field Recordings", shaped(audiogen.noise(24.0, sr=48000, channels=2, seed=1),
                                    0.5 + 0.4 * steps(24.0, 0.1, 48000)), 48000, {"sample_fmt": "s32"}),
        "door creak, slow.aiff": ("Foley/Doors", shaped(audiogen.chirp(150, 900, 16.0, channels=2), np.sin(np.pi * t(16.0) / 4) ** 2), sr, {}),
        "forest birds at dawn.wav": ("Field Recordings/Forest", shaped(audiogen.chirp(2000, 6000, 20.0, sr=48000),
                                     steps(20.0, 0.4, 48000) * 0.9), 48000, {"codec": "pcm_s24le"}),
        "warm pad.wav": ("Synth", shaped(audiogen.square(110, 12.0), 0.6 * (1 - np.exp(-t(12.0) / 3))), sr, {}),
        "thunder, distant.mp3": ("Field Recordings/Weather", shaped(audiogen.noise(30.0, channels=2, seed=5),
                                 0.05 + 0.6 * np.exp(-((t(30.0) - 12) ** 2) / 8)), sr, {}),
    }  # fmt: skip
    out = {}
    for name, (folder, samples, rate, options) in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        out[name] = audiogen.write_audio(root / folder / name, samples, sr=rate, **options)
    (root / "Archive").mkdir()
    shutil.copy2(out["rain on a tin roof.flac"], root / "Archive" / "rain on a tin roof.flac")  # one row, two files
    return out


def start(args: list[str], library: "Library") -> Server:
    """Run `audiofind serve ARGS` on the library's index and wait for the first line with http:// in it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "audiofind", "serve", "--db", str(library.db), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"AUDIOFIND_HOME": str(library.home)},
    )
    lines: queue.Queue[str] = queue.Queue()
    errors: queue.Queue[str] = queue.Queue()
    for stream, q in ((proc.stdout, lines), (proc.stderr, errors)):
        threading.Thread(target=lambda s=stream, q=q: [q.put(line) for line in s], daemon=True).start()
    try:
        while "http://" not in (line := lines.get(timeout=180)):
            pass
    except queue.Empty:
        proc.kill()
        raise AssertionError(f"serve printed no URL; stderr: {''.join(errors.queue)}") from None
    url = line.strip()
    m = re.fullmatch(r"(http://127\.0\.0\.1:\d+)/\?token=([\w-]+)", url)
    assert m, url
    return Server(url, m[1], m[2], proc, errors)


def stop(server: Server, sig: int) -> str:
    """Send sig, expect a clean exit (code 0) and return what it printed on stderr."""
    server.proc.send_signal(sig)
    assert server.proc.wait(timeout=60) == 0
    return "".join(server.stderr.queue)


@dataclass
class Library:
    db: Path
    home: Path  # the AUDIOFIND_HOME holding the tiny model
    files: dict[str, Path]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    """One indexed library for the module (read only: the server never writes)."""
    base = tmp_path_factory.mktemp("served")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDIOFIND_HOME", str(base / "home"))
        register_tiny()
        files = make_library(base / "Sounds")
        result = CliRunner().invoke(cli, ["index", str(base / "Sounds"), "--db", str(base / "index.db"), "-w", "tiny"])
    assert result.exit_code == 0, result.output
    return Library(base / "index.db", base / "home", files)


def get(url: str, **headers: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_serve_warns_off_loopback_answers_and_stops_on_sigterm(library: Library) -> None:
    server = start(["--host", "0.0.0.0", "--port", str(free_port()), "--no-open"], library)
    try:
        assert get(f"{server.base}/api/status", Authorization=f"Bearer {server.token}")[0] == 200
        assert get(f"{server.base}/api/status")[0] == 401
    finally:
        err = stop(server, signal.SIGTERM)
    assert "warning: listening on 0.0.0.0" in err and err.rstrip().endswith("stopped.")


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--db", str(tmp_path / "none.db"), "--port", str(port), "--no-open"])
    assert result.exit_code == 2
    assert (
        result.stderr.startswith(f"error: Cannot listen on 127.0.0.1 port {port}")
        and len(result.stderr.splitlines()) == 1
    )


@needs_chromium
def test_search_play_next_and_more_like_this_in_chromium(library: Library, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    server = start(["--port", str(free_port()), "--no-open"], library)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            context = browser.new_context(viewport={"width": 1180, "height": 560})
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base)
            page = context.new_page()
            page.goto(server.url)
            page.fill("input[name=q]", QUERY)
            page.press("input[name=q]", "Enter")
            page.wait_for_selector("tr.hit")
            rows = page.locator("tr.hit")
            assert rows.count() == len(library.files)
            hit = lambda i: {k: rows.nth(i).get_attribute(f"data-{k}") for k in ("id", "start", "duration", "path")}
            first, second = hit(0), hit(1)
            assert float(first["start"]) > 0  # the match is inside the file, so "from its start" means something

            # Space plays the selected (first) result from the start of its matching segment
            page.evaluate(RECORD)
            page.keyboard.press("Space")
            _wait_playing(page, first["id"], float(first["start"]))
            # Down moves to the next result and plays it
            page.evaluate("window.played = []")
            page.keyboard.press("ArrowDown")
            _wait_playing(page, second["id"], float(second["start"]))
            page.wait_for_function(DRAWN)  # every row's waveform came from /api/peaks
            page.locator("tr.hit details.copies summary").first.click()  # the copy folded into the rain's row
            page.wait_for_timeout(600)  # the playhead moves on a little
            page.screenshot(path=str(tmp_path / "serve.png"))
            if os.environ.get("AUDIOFIND_SCREENSHOT"):  # how docs/serve.png is made
                shutil.copy(tmp_path / "serve.png", os.environ["AUDIOFIND_SCREENSHOT"])
            # Space again stops
            page.keyboard.press("Space")
            page.wait_for_function("document.getElementById('player').paused")

            # clicking a waveform plays from there: the AIFF is transcoded, and seeking still works
            aiff = next(i for i in range(rows.count()) if hit(i)["path"].endswith(".aiff"))
            page.evaluate("window.played = []")
            canvas = rows.nth(aiff).locator("canvas")
            canvas.click(position={"x": 0.75 * canvas.bounding_box()["width"], "y": 17})  # 3/4 of the way
            _wait_playing(page, hit(aiff)["id"], 0.74 * float(hit(aiff)["duration"]))
            page.keyboard.press("Space")
            page.wait_for_function("document.getElementById('player').paused")

            # copy the path; with the whole file selected (dragged past both ends of the waveform), a drag carries
            # the file:// URL and, for Chromium, a DownloadURL of the original file
            rows.nth(0).locator("button.copy").click()
            assert page.evaluate("navigator.clipboard.readText()") == first["path"]
            _select(page, 0, 0.0, 1.1)
            page.keyboard.press("Space")  # selecting plays: stop it
            dragged = _drag(page, 0)
            assert dragged[0] == Path(first["path"]).as_uri() and dragged[1] == first["path"]
            mime, name, download = dragged[2].split(":", 2)
            assert name == Path(first["path"]).name and mime.startswith("audio/")
            assert get(download) == (200, Path(first["path"]).read_bytes())

            # Enter on the selected row: more like this, which lists the file itself first
            rows.nth(1).click(position={"x": 5, "y": 5})  # select the second row (click plays it; fine)
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(r".*[?&]like=\d+"))
            page.wait_for_selector("tr.hit")
            assert page.locator("tr.hit").first.get_attribute("data-id") == second["id"]
            assert "Sounds like" in page.inner_text("main")
            browser.close()
    finally:
        err = stop(server, signal.SIGINT)
    assert err.rstrip().endswith("stopped.")


# Whether every thumbnail shows waveform bars (drawn only once its peaks arrived) in the page's waveform colours.
DRAWN = """() => [...document.querySelectorAll('tr.hit canvas')].every(c => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let i = 0; i < d.length; i += 4) if ((d[i] === 39 && d[i + 1] === 104) || (d[i] === 155 && d[i + 1] === 181)) return true;
  return false; })"""

# Every position the player reports while playing, by file: playing "from t" means none of them is before t.
RECORD = """() => { const p = document.getElementById('player'); window.played = [];
  p.addEventListener('timeupdate', () => { if (!p.paused) window.played.push([p.dataset.id, p.currentTime]); }); }"""


def _wait_playing(page, file_id: str, at_least: float) -> None:  # type: ignore[no-untyped-def]
    """Wait until the player plays this file past at_least seconds, having played nothing of it before that."""
    page.wait_for_function(
        """([id, t]) => { const p = document.getElementById('player');
           return p.dataset.id === id && !p.paused && p.currentTime > t
                  && window.played.some(([i]) => i === id); }""",
        arg=[file_id, at_least],
        timeout=30_000,
    )
    heard = page.evaluate("id => window.played.filter(([i]) => i === id).map(([, t]) => t)", file_id)
    assert heard and min(heard) >= at_least - 0.05, (file_id, at_least, heard[:5])


def _select(page, row: int, a: float, b: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Drag with the mouse across row's waveform from fraction a to fraction b of its width (b past an end clamps);
    the selection the page took, from its download link."""
    box = page.locator("tr.hit").nth(row).locator("canvas").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + a * box["width"], y)
    page.mouse.down()
    page.mouse.move(box["x"] + (a + b) / 2 * box["width"], y, steps=4)
    page.mouse.move(box["x"] + b * box["width"], y, steps=4)
    page.mouse.up()
    href = page.locator("tr.hit").nth(row).locator("a.download").get_attribute("href")
    query = dict(p.split("=", 1) for p in href.split("?", 1)[1].split("&"))
    return {"start": float(query["start"]), "end": float(query["end"])}


def _drag(page, row: int) -> list[str]:  # type: ignore[no-untyped-def]
    """What a drag of row's handle carries: text/uri-list, text/plain and DownloadURL."""
    return page.evaluate(
        """i => { const dt = new DataTransfer();
           document.querySelectorAll('tr.hit')[i].querySelector('.grip')
             .dispatchEvent(new DragEvent('dragstart', {dataTransfer: dt, bubbles: true}));
           return [dt.getData('text/uri-list'), dt.getData('text/plain'), dt.getData('DownloadURL')]; }""",
        row,
    )


@pytest.fixture(scope="module")
def browser_page(library: Library):  # type: ignore[no-untyped-def]
    """One server for the module, and a function that opens a fresh page at a viewport: (server, open_page)."""
    from playwright.sync_api import sync_playwright

    server = start(["--port", str(free_port()), "--no-open"], library)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)

            def open_page(width: int = 1180, height: int = 560, **query: str):  # type: ignore[no-untyped-def]
                page = browser.new_context(viewport={"width": width, "height": height}).new_page()
                page.responses = []  # type: ignore[attr-defined]
                page.on("response", lambda r: page.responses.append((r.url, r.status)))  # type: ignore[attr-defined]
                page.goto(server.url + "".join(f"&{k}={quote_plus(v)}" for k, v in query.items()))
                return page

            yield server, open_page
            browser.close()
    finally:
        stop(server, signal.SIGINT)


@needs_chromium
def test_a_selected_region_is_what_downloads_and_drags_out(browser_page, library: Library, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from audiofind.audio import region
    from wavkit import decoded, samples

    server, open_page = browser_page
    page = open_page(q=QUERY)
    page.wait_for_selector("tr.hit")
    rows = page.locator("tr.hit")
    i = next(n for n in range(rows.count()) if rows.nth(n).get_attribute("data-name") == "rain on a tin roof.flac")
    row = rows.nth(i)
    source = Path(row.get_attribute("data-path"))
    # before any choice the selection is the matching segment
    href = row.locator("a.download").get_attribute("href")
    assert f"start={row.get_attribute('data-start')}&end={row.get_attribute('data-end')}" in href
    page.evaluate(RECORD)
    sel = _select(page, i, 0.25, 0.5)
    duration = float(row.get_attribute("data-duration"))
    assert sel["start"] == pytest.approx(0.25 * duration, abs=0.2) and sel["end"] == pytest.approx(
        0.5 * duration, abs=0.2
    )
    _wait_playing(page, row.get_attribute("data-id"), sel["start"])  # a selection plays from its start
    assert page.locator("#selection").inner_text().startswith(f"{int(sel['start'] // 60)}:")
    page.keyboard.press("Space")

    # the download button: exactly that region of the file, in its own rate (48 kHz), depth (24-bit) and channels
    with page.expect_download() as d:
        row.locator("a.download").click()
    saved = tmp_path / d.value.suggested_filename
    d.value.save_as(saved)
    assert saved.name == region.default_name(source, sel["start"], sel["end"])
    fmt, got = samples(saved.read_bytes())
    assert (fmt["rate"], fmt["channels"], fmt["bits"]) == (48000, 2, 24)
    first, frames = round(sel["start"] * 48000), round(sel["end"] * 48000) - round(sel["start"] * 48000)
    assert len(got) == frames
    fade = round(region.FADE_SECONDS * 48000)
    assert np.array_equal(got[fade:-fade], decoded(source, "s24")[first + fade : first + frames - fade])

    # the drag handle carries the same region (Chromium's DownloadURL), not the whole file
    uri, text, download = _drag(page, i)
    mime, name, url = download.split(":", 2)
    assert (mime, name, uri, text) == ("audio/wav", saved.name, url, str(source))
    status, body = get(url)
    assert status == 200 and np.array_equal(samples(body)[1], got)


@needs_chromium
def test_loop_volume_and_the_time_readout(browser_page) -> None:  # type: ignore[no-untyped-def]
    server, open_page = browser_page
    page = open_page(q=QUERY)
    page.wait_for_selector("tr.hit")
    page.keyboard.press("l")
    assert page.is_checked("#loop")
    page.evaluate(
        "v => { const r = document.getElementById('volume'); r.value = v; r.dispatchEvent(new Event('input')); }",
        "0.35",
    )
    assert page.evaluate("document.getElementById('player').volume") == pytest.approx(0.35)
    sel = _select(page, 1, 0.40, 0.45)  # a short selection, looped
    page.evaluate(RECORD)
    page.wait_for_function(
        "end => window.played.some(([, t]) => t > end - 0.3) && window.played.slice(-1)[0][1] < end - 0.2",
        arg=sel["end"],
        timeout=20_000,
    )  # it reached the end and came back round
    heard = [t for _, t in page.evaluate("window.played")]
    assert max(heard) < sel["end"] + 0.3 and min(heard) >= sel["start"] - 0.05
    page.wait_for_function(  # the readout follows the playhead
        """start => { const p = document.getElementById('player'), [m, s] = document.getElementById('position').textContent.split(':');
                      return p.currentTime > start + 0.4 && Math.abs(60 * m + parseFloat(s) - p.currentTime) < 0.2; }""",
        arg=sel["start"], timeout=10_000,
    )  # fmt: skip
    assert page.evaluate("localStorage.getItem('audiofind.volume')") == "0.35"


@needs_chromium
def test_sorting_by_each_column(browser_page) -> None:  # type: ignore[no-untyped-def]
    server, open_page = browser_page
    page = open_page(q=QUERY)
    page.wait_for_selector("tr.hit")
    shown = lambda key: page.evaluate(f"[...document.querySelectorAll('tr.hit')].map(r => r.dataset.{key})")
    ranks = [int(r) for r in shown("rank")]
    assert ranks == sorted(ranks)
    for key, first_order, number in [("name", 1, False), ("folder", 1, False), ("duration", 1, True), ("rate", -1, True),
                                     ("score", -1, True), ("rank", 1, True)]:  # fmt: skip
        for order in (first_order, -first_order):  # a second click reverses
            page.click(f"th button[data-sort={key}]")
            values = [float(v) if number else v.casefold() for v in shown(key)]
            assert values == sorted(values, reverse=order < 0), (key, order, values)
            th = page.locator(f"th:has(button[data-sort={key}])")
            assert th.get_attribute("aria-sort") == ("ascending" if order > 0 else "descending")
    # the keys follow the order shown: Down selects the row shown below the selected one
    page.click("th button[data-sort=duration]")
    ids = shown("id")
    at = ids.index(page.locator("tr.hit.selected").get_attribute("data-id"))
    page.keyboard.press("ArrowDown")
    assert page.locator("tr.hit.selected").get_attribute("data-id") == ids[min(at + 1, len(ids) - 1)]


@needs_chromium
def test_the_mode_selector_searches_by_names_alone(browser_page, library: Library) -> None:  # type: ignore[no-untyped-def]
    server, open_page = browser_page
    page = open_page()
    page.fill("input[name=q]", "door")
    page.select_option("select[name=mode]", "text")
    page.press("input[name=q]", "Enter")
    page.wait_for_selector("tr.hit")
    assert "mode=text" in page.url and page.input_value("select[name=mode]") == "text"
    names = page.evaluate("[...document.querySelectorAll('tr.hit')].map(r => r.dataset.name)")
    assert names == ["door creak, slow.aiff"]  # by name alone: no other file is named door
    page.select_option("select[name=mode]", "audio")
    page.press("input[name=q]", "Enter")
    page.wait_for_url(re.compile(r".*mode=audio"))
    page.wait_for_selector("tr.hit")
    assert page.locator("tr.hit").count() == len(library.files)  # by sound every file has a place


@needs_chromium
def test_each_row_says_why_it_is_there(browser_page) -> None:  # type: ignore[no-untyped-def]
    server, open_page = browser_page
    page = open_page(q=QUERY)
    page.wait_for_selector("tr.hit")
    found = page.evaluate(  # what the API says of the same search
        "q => fetch('/api/search?q=' + encodeURIComponent(q), {headers: {Authorization: 'Bearer ' + document.body.dataset.token}}).then(r => r.json())",
        QUERY,
    )  # fmt: skip
    ranks = {h["path"]: h["why"]["audio_rank"] for h in found}
    shown = {}
    for i in range(page.locator("tr.hit").count()):
        row = page.locator("tr.hit").nth(i)
        cell = row.locator("td.why")
        box = cell.bounding_box()
        assert cell.is_visible() and box and box["x"] + box["width"] <= 1180  # on screen beside the score
        shown[row.get_attribute("data-path")] = (cell.inner_text(), cell.get_attribute("title"))
    rain = next(p for p in shown if p.endswith("rain on a tin roof.flac"))  # named with every word of the query
    text, title = shown.pop(rain)
    assert text == f"named · sound #{ranks[rain]}" and title.startswith("Its name, folders or tags hold every word (")
    assert all(text == f"sound #{ranks[path]}" and "by sound (cosine" in title for path, (text, title) in shown.items())


@needs_chromium
def test_the_page_fits_800_px_with_a_visible_segment_and_no_401(browser_page, library: Library) -> None:  # type: ignore[no-untyped-def]
    server, open_page = browser_page
    page = open_page(800, 600, q=QUERY)
    page.wait_for_selector("tr.hit")
    page.wait_for_function(DRAWN)
    assert page.evaluate("document.documentElement.scrollWidth") <= 800
    for row in range(page.locator("tr.hit").count()):  # everything a row offers is on screen
        for part in ("button.play", "a.like", "button.copy", "a.download", ".grip", "canvas"):
            box = page.locator("tr.hit").nth(row).locator(part).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 800, (row, part)
        # no room for the why column: the score's tooltip says it instead
        assert not page.locator("tr.hit").nth(row).locator("td.why").is_visible()
        assert "by sound" in page.locator("tr.hit").nth(row).locator("td.score").get_attribute("title")
    # the matching segment is highlighted across the waveform's whole height, at least 6 px wide, and so is a region
    # of a few pixels (as a 10 s match in a 15-minute recording would be)
    width = page.locator("tr.hit").nth(0).locator("canvas").bounding_box()["width"]
    sel = _select(page, 0, 0.5, 0.5 + 4 / width)  # the shortest drag that selects
    assert (sel["end"] - sel["start"]) / float(
        page.locator("tr.hit").nth(0).get_attribute("data-duration")
    ) * width < 4.5
    page.keyboard.press("Space")  # stop it, so no playhead is drawn
    page.wait_for_function("document.getElementById('player').paused")
    marks = page.evaluate(MARKS)
    assert marks and all(w >= 6 and full for w, full in marks), marks
    assert page.evaluate("fetch('/favicon.ico').then(r => r.status)") == 200  # as a browser asks: without the token
    assert not [r for r in page.responses if r[1] == 401], page.responses


# Per row: the CSS width of the selection drawn on the canvas (columns whose top pixel is fully painted) and whether
# each of those columns is painted from top to bottom.
MARKS = """() => [...document.querySelectorAll('tr.hit canvas')].map(c => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, w = c.width, h = c.height;
  const painted = (x, y) => d[4 * (y * w + x) + 3] === 255;
  const cols = [...Array(w).keys()].filter(x => painted(x, 0));
  return [cols.length * c.clientWidth / w, cols.every(x => [...Array(h).keys()].every(y => painted(x, y)))]; })"""
