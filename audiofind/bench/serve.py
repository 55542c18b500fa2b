"""How fast `audiofind serve` answers, for `bench speed`: a warm search at 100k segments, a page of 50 results with
their waveforms once peaks are cached, and the first byte of a transcoded file. Over real HTTP on 127.0.0.1."""

import statistics
import threading
import time
import urllib.request
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from audiofind.audio import decode
from audiofind.bench import speed as bench
from audiofind.bench.synthetic_search import bench_search
from audiofind.model.embedder import Embedder
from audiofind.serve import transcode
from audiofind.serve.app import create_app
from audiofind.serve.guard import new_token
from audiofind.serve.library import Library
from audiofind.serve.server import Server, bind
from audiofind.store import AudioRow, FileRow, ModelBinding, open_store

BROWSER_CONNECTIONS = 6  # what a browser opens to one host


def serve_speed(encoder: Embedder, segments: int = 100_000, page: int = 50, seconds: float = 20.0) -> dict[str, float]:
    """Seconds: a warm search through serve's library at `segments`, a page of `page` results and their peaks, and
    the first decoded byte of a transcoded (24-bit WAV) file, from its start and after a seek."""
    out: dict[str, float] = {}
    with bench.scratch_dir() as tmp:
        tmp = Path(tmp)
        bench_search(tmp / "big.db", segments, encoder.dim, queries=1, timing=False)
        with Library(tmp / "big.db", encoder) as library:
            captions = iter(bench.SAMPLE_CAPTIONS * 10)
            run = lambda: library.search(next(captions), 20)
            out[f"serve_search_{segments // 1000}k_s"] = bench.timed(run, encoder.device, repeat=7)
        db, transcoded = _page_index(tmp, encoder.dim, page, seconds)
        with Library(db, encoder) as library, _running(library, tmp / "peaks") as (base, token):
            auth = {"Authorization": f"Bearer {token}"}
            out[f"serve_page_{page}_s"] = bench.timed(lambda: _load_page(base, auth, page), encoder.device, repeat=3)
            url = f"{base}/api/audio/{transcoded}"
            out["serve_first_byte_transcoded_s"] = statistics.median(_first_sample(url, auth) for _ in range(5))
            seek = auth | {"Range": "bytes=5000000-"}  # half-way: the decoder seeks
            out["serve_first_byte_seek_s"] = statistics.median(_first_sample(url, seek) for _ in range(5))
    return out


def _page_index(folder: Path, dim: int, n: int, seconds: float) -> tuple[Path, int]:
    """An index of n real FLAC files (random vectors) and one 24-bit WAV; returns its path and the WAV's id."""
    files = bench.make_library(folder / "library", n, seconds)
    wav24 = folder / "library" / "long-24bit.wav"
    second = np.random.default_rng(0).integers(-(2**22), 2**22, 2 * decode.SAMPLE_RATE, dtype="<i4")  # stereo
    with wave.open(str(wav24), "wb") as w:  # 24-bit: a WAV browsers may fail on, so served transcoded
        w.setnchannels(2)
        w.setsampwidth(3)
        w.setframerate(decode.SAMPLE_RATE)
        for _ in range(60):  # one minute
            w.writeframes(second.view(np.uint8).reshape(-1, 4)[:, :3].tobytes())  # little-endian: the low 3 bytes
    rng = np.random.default_rng(1)
    with open_store(folder / "page.db", create=True) as index:
        index.bind_model(ModelBinding("synthetic", "0" * 64, dim, decode.WINDOW_SECONDS, decode.HOP_SECONDS))
        for i, path in enumerate([*files, wav24]):
            st, h = path.stat(), f"{i:064x}"
            length = seconds if path != wav24 else 60.0
            row = FileRow(str(path), str(folder / "library"), st.st_size, st.st_mtime_ns, h)
            index.add_file(
                row, AudioRow(h, length, decode.SAMPLE_RATE, 1), [(0.0, length)], rng.standard_normal((1, dim))
            )
        file_id = index.file_ids([str(wav24)])[str(wav24)][0]
    return folder / "page.db", int(file_id)


@contextmanager
def _running(library: Library, peaks_dir: Path) -> Iterator[tuple[str, str]]:
    """The server on a free port in a thread: (base URL, token)."""
    sock = bind("127.0.0.1", 0)
    port, token = sock.getsockname()[1], new_token()
    import uvicorn

    server = Server(
        uvicorn.Config(create_app(library, token, "127.0.0.1", port, peaks_dir), log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


def _load_page(base: str, auth: dict[str, str], n: int) -> None:
    """What a browser does: the page, then the waveform of every row over a few connections."""
    html = _get(f"{base}/?q=rain+on+a+tin+roof&k={n}", auth).decode()
    ids = [int(part.split('"', 1)[0]) for part in html.split('data-id="')[1:]]
    if len(ids) != n:
        raise RuntimeError(f"the page listed {len(ids)} results, not {n}")
    with ThreadPoolExecutor(BROWSER_CONNECTIONS) as pool:
        list(pool.map(lambda i: _get(f"{base}/api/peaks/{i}", auth), ids))


def _first_sample(url: str, headers: dict[str, str]) -> float:
    """Seconds until the first byte of decoded audio arrives (past the WAV header, which needs no decoding)."""
    start = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as r:
        r.read(1 if "Range" in headers else transcode.HEADER_BYTES + 1)
        return time.perf_counter() - start


def _get(url: str, auth: dict[str, str]) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=auth)) as r:
        return r.read()
