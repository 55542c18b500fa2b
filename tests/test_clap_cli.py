"""CLAP through the whole command line: a checkpoint in the published layout imported with its tokenizer, then index,
search in every mode, --like, embed, duplicates, watch, serve and bench captions on it, a cold search without torch,
and the family of an index kept apart from the other. The tiny configuration on the fixture's recipe and vocabulary."""

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import audiogen
import numpy as np
import pytest
import torch
from modelkit import register_tiny
from starlette.testclient import TestClient
from typer.testing import CliRunner

from audiofind.audio import decode
from audiofind.cli import app
from audiofind.library.sync import Event, indexing_encoder
from audiofind.library.watch import watch
from audiofind.model.clap import frontend
from audiofind.model.clap.encoder import clip_windows
from audiofind.model.clap.model import CLAP, from_state_dict, inference_state_dict
from audiofind.model.encoder import load_encoder
from audiofind.search.embedding import encoder_for, query_encoder
from audiofind.serve.app import create_app
from audiofind.serve.library import Library
from audiofind.store import open_store
from clapkit import CLAP_CLI, VOCAB, published_checkpoint, tiny_state_dict

runner = CliRunner()
NAME = "clap-tiny"
TOKEN = "test-token-0123456789"


def cli(*args: object, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.stdout if code == 0 else result.stderr


def one_line(*args: object, code: int = 1) -> str:
    """The stderr of a command that must fail with one line and no traceback."""
    err = cli(*args, code=code)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


class Home:
    """The module's AUDIOFIND_HOME: clap-tiny imported from a published-layout checkpoint, AudioCLIP's tiny beside
    it, and a library indexed with clap-tiny."""

    def __init__(self, root: Path) -> None:
        self.home, self.lib, self.db = root / "home", root / "library", root / "lib.db"
        self.checkpoint = published_checkpoint(root / "src" / "630k-audioset-best.pt")
        self.lib.mkdir()
        rain = audiogen.noise(3.0, seed=1)
        self.files = {
            "rain.wav": audiogen.write_audio(self.lib / "rain.wav", rain),
            "rain copy.wav": audiogen.write_audio(self.lib / "rain copy.wav", rain),
            "rain.flac": audiogen.write_audio(self.lib / "rain.flac", rain),  # same samples, another file
            "tone.wav": audiogen.write_audio(self.lib / "tone.wav", audiogen.sine(440, 1.0)),
            "long sweep.flac": audiogen.write_audio(self.lib / "long sweep.flac", audiogen.chirp(200, 4000, 12.0)),
        }


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    h = Home(tmp_path_factory.mktemp("clap-cli"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDIOFIND_HOME", str(h.home))
        cli("weights", "import", h.checkpoint, "--name", NAME, "--tokenizer", VOCAB)
        register_tiny()  # AudioCLIP's tiny model, for the family checks
        cli("index", h.lib, "--db", h.db, "-w", NAME)
    return h


@pytest.fixture
def home(module_home: Home, monkeypatch: pytest.MonkeyPatch) -> Home:
    monkeypatch.setenv("AUDIOFIND_HOME", str(module_home.home))
    return module_home


def reference_model() -> CLAP:
    """The model built straight from the recipe's state dict, for what the command line must compute."""
    return from_state_dict(tiny_state_dict(CLAP_CLI), CLAP_CLI)


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize("prefix,position_ids", [(True, True), (True, False), (False, True), (False, False)])
def test_import_recognises_clap_in_every_published_layout(tmp_path: Path, prefix: bool, position_ids: bool) -> None:
    src = published_checkpoint(tmp_path / "ckpt.pt", prefix=prefix, position_ids=position_ids)
    out = cli("weights", "import", src, "--tokenizer", VOCAB)
    assert "Imported 'ckpt'" in out
    models = {m["name"]: m for m in json.loads(cli("weights", "list", "--json"))}
    assert models["ckpt"]["family"] == "clap" and models["ckpt"]["status"] == "imported"
    path = Path(models["ckpt"]["path"])
    assert sorted(p.name for p in path.with_suffix(".tokenizer").iterdir()) == ["merges.txt", "vocab.json"]
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta, keys = f.metadata(), set(f.keys())
        state = {k: f.get_tensor(k) for k in keys}
    with torch.device("meta"):
        own = set(CLAP(CLAP_CLI).state_dict())
    assert keys == own == set(inference_state_dict(tiny_state_dict(CLAP_CLI)))  # only inference tensors
    assert meta["family"] == "clap" and json.loads(meta["config"]) == json.loads(json.dumps(CLAP_CLI.to_dict()))
    want = tiny_state_dict(CLAP_CLI)
    assert all(torch.equal(state[k], want[k]) for k in keys)


def test_a_clap_import_without_its_tokenizer_is_one_line(tmp_path: Path) -> None:
    src = published_checkpoint(tmp_path / "ckpt.pt")
    err = one_line("weights", "import", src)
    assert "is a CLAP checkpoint" in err and "--tokenizer DIR" in err
    half = tmp_path / "half"
    half.mkdir()
    (half / "vocab.json").write_bytes((VOCAB / "vocab.json").read_bytes())
    assert "has no merges.txt" in one_line("weights", "import", src, "--tokenizer", half)
    assert "is not a folder" in one_line("weights", "import", src, "--tokenizer", tmp_path / "nowhere")
    assert not list((Path(os.environ["AUDIOFIND_HOME"]) / "weights").glob("*.safetensors"))
    from modelkit import synthetic_state_dict

    audioclip = tmp_path / "audioclip.pt"
    torch.save(synthetic_state_dict(), audioclip)
    assert "AudioCLIP checkpoint" in one_line("weights", "import", audioclip, "--tokenizer", VOCAB, code=2)


def test_download_fetches_checkpoint_and_tokenizer_checked_and_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from httpkit import Server

    sha = lambda data: hashlib.sha256(data).hexdigest()

    ckpt = published_checkpoint(tmp_path / "630k.pt")
    server = Server()
    data = {"630k.pt": ckpt.read_bytes(), "vocab.json": (VOCAB / "vocab.json").read_bytes(),
            "merges.txt": (VOCAB / "merges.txt").read_bytes()}  # fmt: skip
    server.files |= data
    tokenizer = [{"file": f, "url": f"{server.url}/{f}", "size": len(data[f]), "sha256": sha(data[f])}
                 for f in ("vocab.json", "merges.txt")]  # fmt: skip
    entry = {
        "name": "clap-small",
        "family": "clap",
        "file": "630k.pt",
        "url": f"{server.url}/630k.pt",
        "size": len(data["630k.pt"]),
        "sha256": sha(data["630k.pt"]),
        "licence": "CC0-1.0",
        "tokenizer": tokenizer,
    }
    bad = entry | {"name": "clap-bad", "tokenizer": [tokenizer[0], tokenizer[1] | {"sha256": "0" * 64}]}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"default": "clap-small", "models": [entry, bad]}))
    monkeypatch.setenv("AUDIOFIND_MANIFEST", str(manifest))
    try:
        weights_dir = Path(os.environ["AUDIOFIND_HOME"]) / "weights"
        weights_dir.mkdir(parents=True)
        (weights_dir / "630k.pt.part").write_bytes(data["630k.pt"][:1000])  # an interrupted download
        listed = {m["name"]: m for m in json.loads(cli("weights", "list", "--json"))}
        assert listed["clap-small"]["family"] == "clap" and listed["clap-small"]["status"] == "not downloaded"
        assert "clap-small.safetensors" in cli("weights", "download", "clap-small")
        assert "bytes=1000-" in server.requests  # resumed where the part ended
        assert (weights_dir / "clap-small.tokenizer" / "merges.txt").read_bytes() == data["merges.txt"]
        assert not (weights_dir / "630k.pt").exists()  # converted and deleted
        enc = load_encoder("clap-small", "cpu")
        assert enc.sample_rate == 48000 and enc.dim == CLAP_CLI.embed_dim
        err = one_line("weights", "download", "clap-bad")
        assert "merges.txt has sha256" in err and "was expected" in err
        assert not (weights_dir / "clap-bad.safetensors").exists()
        assert not (weights_dir / "clap-bad.tokenizer" / "merges.txt").exists()
        cli("weights", "remove", "clap-small")
        assert (
            not (weights_dir / "clap-small.tokenizer").exists()
            and not (weights_dir / "clap-small.safetensors").exists()
        )
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


# ---------------------------------------------------------------- index and search


def test_the_index_holds_each_window_as_the_model_embeds_it_at_48_khz(home: Home) -> None:
    status = json.loads(cli("status", "--json", "--db", home.db))
    assert status["model"] == NAME and status["ok"] == len(home.files)
    model = reference_model()
    path = home.files["long sweep.flac"]
    clip = decode.load_audio(path, rate=48000)
    with torch.inference_mode():
        want = model.embed_audio(torch.from_numpy(np.stack(clip_windows(clip)))).numpy()
    with open_store(home.db) as index:
        row = index.get_file(str(path))
        bounds, got = index.segment_vectors(row.hash)
    assert bounds == [(0.0, 10.0), (2.0, 12.0)]  # 10 s windows every 5 s, the last ending at the end
    assert np.abs(got - want).max() < 1e-6
    tone = decode.load_audio(home.files["tone.wav"], rate=48000)  # 1 s: one window, repeat-padded to 10 s
    with torch.inference_mode():
        want = model.embed_audio(torch.from_numpy(frontend.prepare(tone / np.float32(32768)))[None]).numpy()
    with open_store(home.db) as index:
        bounds, got = index.segment_vectors(index.get_file(str(home.files["tone.wav"])).hash)
    assert bounds == [(0.0, 1.0)] and np.abs(got - want).max() < 1e-6


def test_search_in_every_mode(home: Home) -> None:
    for mode in ("hybrid", "audio", "text"):
        hits = json.loads(cli("search", "rain", "--mode", mode, "--db", home.db, "--json"))
        assert hits, mode
    names = [
        Path(h["path"]).name for h in json.loads(cli("search", "rain", "--mode", "text", "--db", home.db, "--json"))
    ]
    assert set(names) == {"rain.wav", "rain copy.wav", "rain.flac"}
    away = json.loads(
        cli("search", "a hiss", "--not", "a pure tone", "--mode", "audio", "--db", home.db, "--json", "-k", "5")
    )
    plain = json.loads(cli("search", "a hiss", "--mode", "audio", "--db", home.db, "--json", "-k", "5"))
    assert len(away) == len(plain) == 5 and [h["score"] for h in away] != [h["score"] for h in plain]


def test_a_query_is_embedded_by_the_numpy_tower_as_the_torch_tower_embeds_it(home: Home) -> None:
    queries = ["rain on a tin roof", "A DOG barks twice, far away!", "café crème", "x " * 100]
    with open_store(home.db) as index:
        fast, warm = query_encoder(index, None, "auto"), encoder_for(index, None, "cpu")
        got, want = fast.embed_text(queries), warm.embed_text(queries)
        assert fast._encoder is None
    assert got.shape == (4, CLAP_CLI.embed_dim) and np.abs(got - want).max() < 1e-5


def test_like_finds_the_file_itself_and_embeds_a_new_one_at_48_khz(home: Home, tmp_path: Path) -> None:
    tone = home.files["tone.wav"]
    hits = json.loads(cli("search", "--like", tone, "--db", home.db, "--json", "-k", "3"))
    assert hits[0]["path"] == str(tone) and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    outside = audiogen.write_audio(tmp_path / "tone again.wav", audiogen.sine(440, 1.0))  # not in the index
    hits = json.loads(cli("search", "--like", outside, "--db", home.db, "--json", "-k", "3"))
    assert hits[0]["path"] == str(tone) and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_a_cold_search_of_a_clap_index_imports_no_torch(home: Home) -> None:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])
    }
    argv = [sys.executable, "-X", "importtime", "-m", "audiofind", "search", "rain", "--db", str(home.db), "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert {"audiofind.model.clap.textnp", "audiofind.model.clap.bpe"} <= loaded and "torch" not in loaded
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert json.loads(lines[-1]) == json.loads(cli("search", "rain", "--db", home.db, "--json"))


def test_an_index_of_one_family_refuses_the_other_in_one_line(home: Home, tmp_path: Path) -> None:
    err = one_line("search", "rain", "--db", home.db, "-w", "tiny")
    assert f"This index was built with model '{NAME}'" in err and "you asked for 'tiny'" in err
    err = one_line("index", home.lib, "--db", home.db, "-w", "tiny")
    assert f"built with model '{NAME}'" in err and "--rebuild" in err
    other = tmp_path / "audioclip.db"
    cli("index", home.lib, "--db", other, "-w", "tiny")
    err = one_line("search", "rain", "--db", other, "-w", NAME)
    assert "This index was built with model 'tiny'" in err and f"you asked for '{NAME}'" in err


# ---------------------------------------------------------------- embed, duplicates, watch, serve, bench


def test_embed_gives_the_unit_mean_of_the_index_windows(home: Home) -> None:
    path = home.files["long sweep.flac"]
    rows = [json.loads(line) for line in cli("embed", path, "-t", "a rising sweep", "-w", NAME, "--json").splitlines()]
    vector = np.asarray(rows[0]["embedding"], dtype=np.float32)
    with open_store(home.db) as index:
        _, windows = index.segment_vectors(index.get_file(str(path)).hash)
    whole = windows.mean(axis=0) / np.linalg.norm(windows.mean(axis=0))
    assert len(windows) == 2 and np.abs(vector - whole).max() < 1e-6 and abs(np.linalg.norm(vector) - 1) < 1e-6
    assert rows[1]["kind"] == "text" and len(rows[1]["embedding"]) == CLAP_CLI.embed_dim
    assert "empty" in one_line("embed", "-t", "", "-w", NAME, code=2)


def test_duplicates_of_a_clap_index_use_fingerprints_taken_at_44_1_khz(home: Home) -> None:
    from audiofind.audio.fingerprint import MAX_SECONDS, fingerprint

    with open_store(home.db) as index:  # stored by the indexer, which decoded at 48 kHz for the model
        stored = index.fingerprints([index.get_file(str(p)).hash for p in home.files.values()])
        for path in home.files.values():
            want = fingerprint(decode.load_audio(path, max_seconds=MAX_SECONDS)).to_bytes()
            assert stored[index.get_file(str(path)).hash] == want, path.name
    groups = json.loads(cli("duplicates", "--db", home.db, "--json"))
    rain = next(g for g in groups if str(home.files["rain.wav"]) in g["paths"])  # each file in one group only
    assert rain["kind"] == "near"
    assert {Path(p).name for p in rain["paths"]} == {"rain.wav", "rain copy.wav", "rain.flac"}
    assert [[Path(p).name for p in same] for same in rain["identical"]] == [["rain copy.wav", "rain.wav"]]


def test_watch_embeds_a_new_file(home: Home, tmp_path: Path) -> None:
    root = tmp_path / "watched"
    root.mkdir()
    events: list[Event] = []
    stop, ready = threading.Event(), threading.Event()
    with open_store(tmp_path / "w.db", create=True) as index:
        encoder = indexing_encoder(index, NAME, "cpu")
        from audiofind.library.sync import prepare

        prepare(index, encoder)
        thread = threading.Thread(
            target=watch,
            args=(index, encoder, [root]),
            daemon=True,
            kwargs={"on_event": events.append, "stop": stop, "on_ready": ready.set, "settle": 0.2},
        )
        thread.start()
        assert ready.wait(120)
        new = audiogen.write_audio(root / "new.wav", audiogen.sine(660, 0.7))
        end = time.monotonic() + 120
        while not any(e.event == "embedded" and e.path == str(new) for e in events) and time.monotonic() < end:
            time.sleep(0.05)
        stop.set()
        thread.join(120)
        assert [e.event for e in events if e.path == str(new)] == ["embedded"]
        assert index.model().name == NAME


def test_serve_answers_a_search_as_the_command_line_does(home: Home) -> None:
    library = Library.open(home.db)
    client = TestClient(create_app(library, TOKEN, "127.0.0.1", 8765), base_url="http://127.0.0.1:8765",
                        headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    try:
        got = client.get("/api/search", params={"q": "rain", "k": "3"}).json()
    finally:
        client.close()
        library.close()
    want = json.loads(cli("search", "rain", "--db", home.db, "--json", "-k", "3"))
    assert [{k: v for k, v in g.items() if k != "id"} for g in got] == want and len(want) == 3


def test_bench_captions_scores_a_clap_model(home: Home, tmp_path: Path) -> None:
    csv = tmp_path / "captions.csv"
    rows = ["path,caption"] + [f"{p},{caption}" for p, caption in [
        (home.files["rain.wav"], "rain on a roof"), (home.files["tone.wav"], "a pure tone"),
        (home.files["long sweep.flac"], "a rising sweep"), (home.files["long sweep.flac"], "a siren")]]  # fmt: skip
    csv.write_text("\n".join(rows) + "\n")
    submission = tmp_path / "ranked.csv"
    result = json.loads(cli("bench", "captions", csv, "-w", NAME, "--json", "--write-submission", submission))
    assert result["n_clips"] == 3 and result["n_queries"] == 4 and 0 <= result["R1"] <= 1
    # Each caption's ranking is the one the whole-file vectors `embed` prints give (decoded at 48 kHz).
    clips = [home.files[n] for n in ("rain.wav", "tone.wav", "long sweep.flac")]
    captions = ["rain on a roof", "a pure tone", "a rising sweep", "a siren"]
    args = [*clips, *[a for c in captions for a in ("-t", c)], "-w", NAME, "--json"]
    rows = [json.loads(line) for line in cli("embed", *args).splitlines()]
    a = np.asarray([r["embedding"] for r in rows[:3]])
    t = np.asarray([r["embedding"] for r in rows[3:]])
    ranked = [line.split(",")[1:4] for line in submission.read_text().splitlines()[1:]]
    assert ranked == [[str(clips[j]) for j in np.argsort(-(t[q] @ a.T), kind="stable")] for q in range(4)]


# ---------------------------------------------------------------- fine-tuning


def test_finetune_trains_clap_and_registers_it_with_its_tokenizer(home: Home, tmp_path: Path) -> None:
    from trainkit import make_clotho

    clotho = make_clotho(tmp_path / "clotho")
    args = ["finetune", "--clotho", clotho, "--init", NAME, "--name", "clap-tuned", "--out", tmp_path / "run",
            "--epochs", "1", "--batch", "6", "--workers", "0", "--lr", "1e-3", "--warmup-steps", "1",
            "--average-top", "1", "--json"]  # fmt: skip
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["finished"] and summary["step"] == 3 and summary["baseline"] and summary["validation"]
    assert any("fbsp" in note for note in summary["notes"]) and "--fbsp-weight does not apply" in result.stderr
    assert any("crops are 10 s" in note for note in summary["notes"])
    models = {m["name"]: m for m in json.loads(cli("weights", "list", "--json"))}
    assert models["clap-tuned"]["family"] == "clap" and models["clap-tuned"]["status"] == "fine-tuned"
    tuned, start = load_encoder("clap-tuned", "cpu"), load_encoder(NAME, "cpu")
    texts = ["a rising sweep", "white noise hissing"]
    assert np.abs(tuned.embed_text(texts) - start.embed_text(texts)).max() > 1e-4  # it trained
    rows = cli("embed", home.files["tone.wav"], "-t", "a low hum", "-w", "clap-tuned", "--json").splitlines()
    assert [json.loads(r)["kind"] for r in rows] == ["audio", "text"]
    cli("weights", "remove", "clap-tuned")
    assert not (Path(os.environ["AUDIOFIND_HOME"]) / "weights" / "clap-tuned.tokenizer").exists()
