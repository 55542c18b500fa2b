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
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium; .ci/run does)"
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
    """Long enough files that matching segments start inside them; one AIFF, which the server transcodes."""
    sr = audiogen.SAMPLE_RATE
    rng = np.random.default_rng(7)

    def shaped(x: np.ndarray, envelope: np.ndarray) -> np.ndarray:  # waveforms worth looking at in the screenshot
        return (x * envelope[None, : x.shape[1]]).astype(np.float32)

    def t(seconds: float) -> np.ndarray:
        return np.arange(round(seconds * sr)) / sr

    steps = lambda seconds, every: np.repeat(rng.uniform(0.1, 1.0, int(seconds / every) + 1), round(every * sr))
    files = {
        "rain on a tin roof.flac": shaped(audiogen.noise(24.0, seed=1), 0.5 + 0.4 * steps(24.0, 0.1)),
        "door creak, slow.aiff": shaped(audiogen.chirp(150, 900, 16.0, channels=2), np.sin(np.pi * t(16.0) / 4) ** 2),
        "forest birds at dawn.wav": shaped(audiogen.chirp(2000, 6000, 20.0), steps(20.0, 0.4) * 0.9),
        "warm pad.wav": shaped(audiogen.square(110, 12.0), 0.6 * (1 - np.exp(-t(12.0) / 3))),
    }
    folders = ["Field Recordings", "Foley/Doors", "Field Recordings/Forest", "Synth"]
    out = {}
    for (name, samples), folder in zip(files.items(), folders):
        (root / folder).mkdir(parents=True, exist_ok=True)
        out[name] = audiogen.write_audio(root / folder / name, samples)
    return out


def start(args: list[str], library: "Library") -> Server:
    """Run `audiofind serve ARGS` on the library's index and wait for the first line with http:// in it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "audiofind", "serve", "--db", str(library.db), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | {"AUDIOFIND_HOME": str(library.home)},
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
    assert result.stderr.startswith(f"error: Cannot listen on 127.0.0.1 port {port}") and len(result.stderr.splitlines()) == 1


@needs_chromium
def test_search_play_next_and_more_like_this_in_chromium(library: Library, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    server = start(["--port", str(free_port()), "--no-open"], library)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 340})
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
            page.screenshot(path=str(tmp_path / "serve.png"))
            if os.environ.get("AUDIOFIND_SCREENSHOT"):  # how docs/serve.png is made
                shutil.copy(tmp_path / "serve.png", os.environ["AUDIOFIND_SCREENSHOT"])
            # Space again stops
            page.keyboard.press("Space")
            page.wait_for_function("document.getElementById('player').paused")

            # clicking a waveform plays from there: the AIFF is transcoded, and seeking still works
            aiff = next(i for i in range(rows.count()) if hit(i)["path"].endswith(".aiff"))
            page.evaluate("window.played = []")
            rows.nth(aiff).locator("canvas").click(position={"x": 180, "y": 17})  # 3/4 of the way
            _wait_playing(page, hit(aiff)["id"], 0.74 * float(hit(aiff)["duration"]))
            page.keyboard.press("Space")
            page.wait_for_function("document.getElementById('player').paused")

            # copy the path; drag carries the file:// URL and, for Chromium, a DownloadURL of the original file
            rows.nth(0).locator("button.copy").click()
            assert page.evaluate("navigator.clipboard.readText()") == first["path"]
            dragged = page.evaluate(
                """() => { const dt = new DataTransfer();
                   document.querySelector('tr.hit').dispatchEvent(new DragEvent('dragstart', {dataTransfer: dt, bubbles: true}));
                   return [dt.getData('text/uri-list'), dt.getData('text/plain'), dt.getData('DownloadURL')]; }"""
            )
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
