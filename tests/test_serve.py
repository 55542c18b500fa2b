"""`audiofind serve` over HTTP, in-process: the JSON API against the CLI, audio with Range and transcoding, peaks,
and the token, Host and path checks."""

import html as html_lib
import io
import json
import re
import shutil
import wave
from collections.abc import Iterator
from pathlib import Path

import audiogen
import av
import numpy as np
import pytest
from starlette.testclient import TestClient

import servekit
from audiofind.serve import peaks
from audiofind.serve.guard import host_allowed
from servekit import BASE, TOKEN, Served, cli_run


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return servekit.build(tmp_path_factory)


@pytest.fixture
def served(pristine: tuple[Path, Path]) -> Iterator[Served]:
    with servekit.serving(pristine) as served:
        yield served


def test_search_and_like_answer_what_the_cli_prints(served: Served) -> None:
    for query, filters, cli_filters in [
        ("a bright tone", {}, []),
        ("noise", {"k": "2"}, ["-k", "2"]),
        (
            "a sweep",
            {"ext": ["wav", "aiff"], "min_duration": "1.2"},
            ["--ext", "wav", "--ext", "aiff", "--min-duration", "1.2"],
        ),
        (
            "long",
            {"max_duration": "3", "under": str(served.root / "tones")},
            ["--max-duration", "3", "--under", served.root / "tones"],
        ),
    ]:
        got = served.client.get("/api/search", params={"q": query, **filters}).json()
        want = json.loads(cli_run("search", query, "--json", "--db", served.db, *cli_filters))
        assert want, query
        assert [{k: v for k, v in g.items() if k != "id"} for g in got] == want
        assert [g["id"] for g in got] == [served.id(Path(w["path"]).name) for w in want]
    like = served.id("long.flac")
    got = served.client.get("/api/like", params={"id": like, "k": 3}).json()
    want = json.loads(cli_run("search", "--like", served.files["long.flac"], "-k", 3, "--json", "--db", served.db))
    assert [{k: v for k, v in g.items() if k != "id"} for g in got] == want
    assert got[0]["id"] == like and got[0]["path"] == str(served.files["long.flac"])


def test_status_is_the_status_json_object(served: Served) -> None:
    want = json.loads(cli_run("status", "--json", "--db", served.db))
    assert served.client.get("/api/status").json() == want


def test_each_search_sees_the_last_commit(served: Served) -> None:
    assert len(served.client.get("/api/search", params={"q": "x", "k": 50}).json()) == 6  # the pool is warm now
    audiogen.write_audio(served.root / "new.flac", audiogen.sine(880, 1.0))
    served.reindex()  # another connection writes and commits
    paths = [h["path"] for h in served.client.get("/api/search", params={"q": "x", "k": 50}).json()]
    assert str(served.root / "new.flac") in paths and len(paths) == 7


def test_range_requests_answer_206_with_the_right_bytes(served: Served) -> None:
    data = served.files["tone.wav"].read_bytes()
    url = f"/api/audio/{served.id('tone.wav')}"
    whole = served.client.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "audio/wav" and whole.headers["accept-ranges"] == "bytes"
    for header, (a, b) in {"bytes=100-199": (100, 200), "bytes=1000-": (1000, len(data)), "bytes=-64": (len(data) - 64, len(data)),
                           "bytes=5-999999999": (5, len(data))}.items():  # fmt: skip
        r = served.client.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.content == data[a:b] and r.headers["content-range"] == f"bytes {a}-{b - 1}/{len(data)}", header
    r = served.client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"
    r = served.client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"another version"'})
    assert r.status_code == 200 and r.content == data


def _pcm16(path: Path) -> tuple[int, int, np.ndarray]:
    """(rate, channels, interleaved int16 samples) of any file, decoded by PyAV."""
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        layout = "mono" if s.codec_context.channels == 1 else "stereo"
        resampler = av.AudioResampler(format="s16", layout=layout, rate=s.sample_rate)
        out = [o.to_ndarray().reshape(-1) for f in c.decode(s) for o in resampler.resample(f)]
        return s.sample_rate, 1 if layout == "mono" else 2, np.concatenate(out)


def _wav(content: bytes) -> tuple[int, int, np.ndarray]:
    with wave.open(io.BytesIO(content)) as w:
        assert w.getsampwidth() == 2
        return w.getframerate(), w.getnchannels(), np.frombuffer(w.readframes(w.getnframes()), "<i2")


@pytest.mark.parametrize("name", ["sweep.aiff", "float.wav", "take.wv"])
def test_other_formats_are_transcoded_to_the_same_samples(served: Served, name: str) -> None:
    url = f"/api/audio/{served.id(name)}"
    r = served.client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert int(r.headers["content-length"]) == len(r.content)
    rate, channels, samples = _wav(r.content)
    assert (rate, channels) == _pcm16(served.files[name])[:2]
    assert np.array_equal(samples, _pcm16(served.files[name])[2])
    # a range in the middle seeks the decoder and still gives exactly those bytes
    a, b = 10_001, len(r.content) - 999
    part = served.client.get(url, headers={"Range": f"bytes={a}-{b - 1}"})
    assert part.status_code == 206 and part.content == r.content[a:b]
    # the original bytes stay available (for dragging a file out)
    original = served.client.get(url, params={"original": 1})
    assert original.content == served.files[name].read_bytes()


def test_browser_formats_are_served_untouched(served: Served) -> None:
    for name in ("long.flac", "noise.mp3"):
        r = served.client.get(f"/api/audio/{served.id(name)}")
        assert r.content == served.files[name].read_bytes(), name
    assert served.client.get(f"/api/audio/{served.id('noise.mp3')}").headers["content-type"] == "audio/mpeg"


def test_peaks_follow_the_sound_and_copies_reuse_them(served: Served) -> None:
    audiogen.write_audio(
        served.root / "steps.wav", np.concatenate([audiogen.sine(300, 1.0, amp=0.8), audiogen.silence(1.0)], axis=1)
    )
    served.reindex()
    served.files["steps.wav"] = served.root / "steps.wav"
    body = served.client.get(f"/api/peaks/{served.id('steps.wav')}").json()
    levels = np.array(body["peaks"])
    assert len(levels) == peaks.BUCKETS and body["duration"] == pytest.approx(2.0)
    assert levels[: peaks.BUCKETS // 2 - 2].min() > 0.75 and levels[peaks.BUCKETS // 2 + 2 :].max() < 0.01
    cached = peaks.cache_file(body["hash"])
    assert cached.is_file()
    # a copy has the same content hash: its peaks come from the cache, not from decoding it again
    data = json.loads(cached.read_text())
    cached.write_text(json.dumps(data | {"peaks": [0.125] * peaks.BUCKETS}))
    shutil.copy(served.root / "steps.wav", served.root / "tones" / "copy.wav")
    served.reindex()
    served.files["copy.wav"] = served.root / "tones" / "copy.wav"
    again = served.client.get(f"/api/peaks/{served.id('copy.wav')}").json()
    assert again["hash"] == body["hash"] and again["peaks"] == [0.125] * peaks.BUCKETS


ROUTES = [
    "/",
    "/api/search?q=x",
    "/api/like?id=1",
    "/api/audio/1",
    "/api/region/1?start=0&end=0.5",
    "/api/peaks/1",
    "/api/status",
]


def test_every_route_needs_the_token(served: Served) -> None:
    bare = TestClient(served.client.app, base_url=BASE)
    for route in ROUTES:
        assert bare.get(route).status_code == 401, route
        assert bare.get(route, headers={"Authorization": "Bearer wrong"}).status_code == 403, route
        sep = "&" if "?" in route else "?"
        assert bare.get(f"{route}{sep}token=wrong").status_code == 403, route
        assert bare.get(f"{route}{sep}token={TOKEN}").status_code == 200, route
        assert bare.get(route, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, route
    assert bare.get("/api/status").json()["error"].startswith("This needs the token")
    assert bare.get("/static/app.js").status_code == 200  # the page's own code holds nothing of the library


def test_foreign_hosts_are_refused_and_no_cors(served: Served) -> None:
    for host in ("evil.example:8765", "127.0.0.1:9999", "attacker.test", "", "127.0.0.1.evil.example:8765"):
        r = served.client.get("/api/status", headers={"Host": host})
        assert r.status_code == 403 and "own address" in r.json()["error"], host
    assert served.client.get("/api/status", headers={"Host": "localhost:8765"}).status_code == 200
    r = served.client.get("/api/status", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and not any(h.startswith("access-control-") for h in r.headers)
    pre = served.client.options(
        "/api/status", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert pre.status_code >= 400 and "access-control-allow-origin" not in pre.headers
    assert host_allowed("[::1]:8765", "::1", 8765) and not host_allowed("[::1]:8765", "127.0.0.1", 8765)
    assert host_allowed("192.168.1.20:80", "0.0.0.0", 80) and not host_allowed("rebind.example:80", "0.0.0.0", 80)


def test_only_indexed_files_can_be_served(served: Served, tmp_path: Path) -> None:
    secret = tmp_path / "secret.wav"
    audiogen.write_audio(secret, audiogen.sine(100, 0.5))
    for route in ("/api/audio/999999", "/api/peaks/999999", "/api/audio/-1", "/api/audio/..%2F..%2Fsecret.wav",
                  f"/api/audio/{secret}", "/api/audio/%2Fetc%2Fpasswd", "/api/audio/1/../../../secret.wav",
                  "/api/peaks/abc", "/static/../page.py", "/static/%2e%2e/page.py", "/api/like?id=999999"):  # fmt: skip
        r = served.client.get(route)
        assert r.status_code == 404, route
        assert b"RIFF" not in r.content and b"Traceback" not in r.content, route
        assert not r.request.url.path.startswith("/api/") or "error" in r.json(), route
    # an indexed file swapped for a symlink that leads out of the root is not served
    victim = served.files["tone.wav"]
    file_id = served.id("tone.wav")
    victim.unlink()
    victim.symlink_to(secret)
    assert served.client.get(f"/api/audio/{file_id}").status_code == 404
    assert served.client.get(f"/api/peaks/{file_id}").status_code == 404


def test_a_file_deleted_since_indexing_is_404_not_a_traceback(served: Served) -> None:
    file_id = served.id("long.flac")
    served.files["long.flac"].unlink()
    for route in (f"/api/audio/{file_id}", f"/api/peaks/{file_id}", f"/api/audio/{file_id}?original=1"):
        r = served.client.get(route)
        assert r.status_code == 404 and "error" in r.json(), route
    # the index still lists it until the next `index` run: "more like this" on it says why it cannot
    r = served.client.get("/api/like", params={"id": file_id})
    assert r.status_code == 404 and "file not found" in r.json()["error"]


def test_bad_parameters_are_one_sentence_400s(served: Served) -> None:
    for params in ({"q": "x", "k": "0"}, {"q": "x", "k": "many"}, {"q": "x", "min_duration": "5", "max_duration": "1"},
                   {"q": "x", "tag": "novalue"}, {"q": "x", "under": "/no/such/folder"}, {"q": " "}, {},
                   {"q": "x", "min_duration": "-1"}):  # fmt: skip
        r = served.client.get("/api/search", params=params)
        assert r.status_code == 400, params
        assert r.json()["error"].endswith("."), params
    assert served.client.get("/api/like", params={"id": "x"}).status_code == 400


def test_the_page_lists_results_with_what_the_script_needs(served: Served) -> None:
    odd = served.root / 'a <b>"odd" & name.wav'
    audiogen.write_audio(odd, audiogen.sine(660, 1.0))
    served.reindex()
    r = served.client.get("/", params={"q": "a tone", "k": 10, "ext": "wav"})
    assert r.status_code == 200 and r.headers["content-security-policy"].startswith("default-src 'none'")
    html = r.text
    assert html.count('<tr class="hit"') == 3  # tone.wav, float.wav and the odd one
    assert "<b>" not in html and "a &lt;b&gt;&quot;odd&quot; &amp; name.wav" in html
    assert f'data-file-url="{odd.as_uri()}"' in html
    like = served.client.get("/", params={"like": served.id("tone.wav"), "k": 10, "ext": "wav"}).text
    first = like.split('<tr class="hit"', 2)[1]
    assert f'data-id="{served.id("tone.wav")}"' in first and "Sounds like" in like
    links = re.findall(r'class="like" href="([^"]+)"', like)
    assert links and all(f"token={TOKEN}" in html_lib.unescape(link) and "ext=wav" in link for link in links)
    assert "No indexed file has id 424242." in served.client.get("/", params={"like": 424242}).text
    assert "k must be between" in served.client.get("/", params={"q": "x", "k": 0}).text


def test_speed_measures_what_bench_speed_reports(served: Served) -> None:
    from audiofind.bench.serve import serve_speed

    result = serve_speed(served.library.encoder.torch(), segments=300, page=3, seconds=1.0)
    assert set(result) == {
        "serve_search_0k_s",
        "serve_page_3_s",
        "serve_first_byte_transcoded_s",
        "serve_first_byte_seek_s",
    }
    assert all(0 < v < 60 for v in result.values())
