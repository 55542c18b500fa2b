"""`audiofind index`, `search` and `status` end to end through the CLI, on generated libraries."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import apsw
import audiogen
import numpy as np
import pytest
from librarykit import make_library, put
from modelkit import register_tiny, synthetic_state_dict
from typer.testing import CliRunner

from audiofind.cli import app
from audiofind.model.config import AudioCLIPConfig
from audiofind.store.sqlite.store import SqliteStore

runner = CliRunner()
SR = audiogen.SAMPLE_RATE


def run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    return result.stdout


def index_json(*args: str) -> dict:
    return json.loads(run("index", *args, "--json").strip().splitlines()[-1])


@pytest.fixture
def tiny() -> str:
    return register_tiny()


@pytest.fixture
def library(tmp_path: Path) -> tuple[Path, dict[str, list[Path]]]:
    root = tmp_path / "Sounds Library"
    return root, make_library(root)


def test_index_then_every_file_finds_itself(tiny: str, library: tuple[Path, dict]) -> None:
    root, files = library
    report = index_json(root, "-w", tiny)
    assert (report["embedded"], report["failed"], report["skipped"]) == (len(files["good"]), len(files["broken"]), 0)
    assert report["device"] == "cpu" and report["audio_seconds"] > 6
    for path in files["good"]:
        hits = json.loads(run("search", "--like", path, "--json", "-k", "3"))
        assert hits[0]["path"] == str(path)
        assert hits[0]["score"] > 0.99999
        assert {"path", "score", "start", "end", "duration"} <= set(hits[0])
    status = json.loads(run("status", "--json"))
    assert status["files"] == len(files["good"]) + len(files["broken"]) and status["failed"] == len(files["broken"])
    assert {f["path"] for f in status["failures"]} == {str(p) for p in files["broken"]}


def test_reindex_embeds_nothing_and_failures_are_not_retried(tiny: str, library: tuple[Path, dict]) -> None:
    root, files = library
    index_json(root, "-w", tiny)
    again = index_json(root, "-w", tiny)
    assert (again["embedded"], again["failed"], again["moved"], again["removed"]) == (0, 0, 0, 0)
    assert again["skipped"] == len(files["good"]) + len(files["broken"])
    retried = index_json(root, "-w", tiny, "--retry-failed")
    assert (retried["embedded"], retried["failed"]) == (0, len(files["broken"]))


def test_rename_move_copy_change_delete(tiny: str, library: tuple[Path, dict]) -> None:
    root, files = library
    index_json(root, "-w", tiny)
    kick = files["good"][1]
    moved = root / "renamed folder" / "kick drum.wav"
    moved.parent.mkdir()
    kick.rename(moved)
    report = index_json(root, "-w", tiny)
    assert (report["moved"], report["embedded"], report["removed"]) == (1, 0, 0)
    paths = run("search", "--like", moved, "--paths").splitlines()
    assert paths[0] == str(moved) and str(kick) not in paths

    copy = root / "copy of lead.ogg"
    shutil.copy2(files["good"][3], copy)
    report = index_json(root, "-w", tiny)
    assert (report["reused"], report["embedded"]) == (1, 0)

    pad = files["good"][2]
    audiogen.write_audio(pad, audiogen.square(330, 1.0))  # new content, same path
    report = index_json(root, "-w", tiny)
    assert (report["embedded"], report["moved"]) == (1, 0)

    files["good"][3].unlink()  # the copy keeps the shared vectors alive
    shutil.rmtree(root / "fx")
    report = index_json(root, "-w", tiny)
    assert report["removed"] == 3
    remaining = set(run("search", "--like", copy, "--paths", "-k", "50").splitlines())
    assert str(copy) in remaining and not any("/fx/" in p for p in remaining)


def test_search_filters_and_formats(tiny: str, library: tuple[Path, dict]) -> None:
    import mutagen.flac

    root, files = library
    birds = files["good"][0]
    tags = mutagen.flac.FLAC(birds)
    tags["genre"] = "Ambience"
    tags.save()
    index_json(root, "-w", tiny)
    everything = json.loads(run("search", "a bird sings", "--json", "-k", "50", "--mode", "audio"))
    assert len(everything) == len(files["good"])
    scores = [h["score"] for h in everything]
    assert scores == sorted(scores, reverse=True)
    assert {h["path"] for h in json.loads(run("search", "x", "--json", "--ext", "wav"))} == {
        str(files["good"][1]),
        str(files["good"][5]),
    }
    assert {h["path"] for h in json.loads(run("search", "x", "--json", "--under", root / "synth"))} == {
        str(p) for p in files["good"][2:4]
    }
    assert {h["path"] for h in json.loads(run("search", "x", "--json", "--tag", "genre=ambience"))} == {str(birds)}
    long_only = json.loads(run("search", "x", "--json", "--min-duration", "1.4"))
    assert long_only and all(h["duration"] >= 1.4 for h in long_only)
    short_only = json.loads(run("search", "x", "--json", "--max-duration", "0.9"))
    assert short_only and all(h["duration"] <= 0.9 for h in short_only)
    assert run("search", "x", "--paths", "-k", "2", "--mode", "audio").splitlines() == [
        h["path"] for h in everything[:2]
    ]
    table = run("search", "a bird sings", "-k", "3")
    assert "score" in table


@pytest.mark.parametrize(
    "args,needle",
    [
        (["search", ""], "empty"),
        (["search", "   "], "empty"),
        (["search"], "QUERY"),
        (["search", "x", "--like", "a.wav"], "not both"),
        (["search", "x", "--tag", "novalue"], "KEY=VALUE"),
        (["search", "x", "--under", "/no/such/folder"], "no such folder"),
        (["search", "x", "--min-duration", "5", "--max-duration", "1"], "more than"),
        (["search", "x", "--min-duration", "-3"], "min-duration"),
    ],
)
def test_search_usage_errors(tiny: str, library: tuple[Path, dict], args: list[str], needle: str) -> None:
    index_json(library[0], "-w", tiny)
    result = runner.invoke(app, args)
    assert result.exit_code != 0 and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_search_without_index_or_with_bad_example(tiny: str, library: tuple[Path, dict], tmp_path: Path) -> None:
    result = runner.invoke(app, ["search", "rain"])
    assert result.exit_code == 1 and "audiofind index" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    index_json(library[0], "-w", tiny)
    bad = put(audiogen.write_not_audio, tmp_path / "bad.wav")
    result = runner.invoke(app, ["search", "--like", str(bad)])
    assert result.exit_code == 1 and "bad.wav" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(app, ["index", str(tmp_path / "nowhere"), "-w", tiny])
    assert result.exit_code == 2 and "not a folder" in result.stderr


def test_another_model_is_refused_until_rebuild(tiny: str, library: tuple[Path, dict]) -> None:
    from audiofind.model import weights
    from audiofind.model.config import TINY

    root, _ = library
    index_json(root, "-w", tiny)
    other = synthetic_state_dict(TINY)
    other["audio.fc.bias"] += 1.0
    weights.save_model(other, "tiny-other", TINY.to_dict(), {})
    for args in (["index", root, "-w", "tiny-other"], ["search", "rain", "-w", "tiny-other"]):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 1 and "audiofind index --rebuild" in result.stderr
    report = index_json(root, "-w", "tiny-other", "--rebuild")
    assert report["embedded"] > 0
    run("search", "rain", "-k", "1")  # now searches with the new model, found from the index


def test_a_second_writer_is_refused_before_the_model_loads(
    tiny: str, library: tuple[Path, dict], audiofind_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiofind.library import sync as sync_module

    root, _ = library
    index_json(root, "-w", tiny)
    monkeypatch.setattr(sync_module, "load_checked", lambda *a, **k: pytest.fail("the model was loaded first"))
    with SqliteStore.open(audiofind_home / "index.db") as held, held.writer_lock():
        result = runner.invoke(app, ["index", str(root), "-w", tiny])
    assert result.exit_code == 1 and "already writing" in result.stderr
    db = audiofind_home / "sub" / "index.db"
    (audiofind_home / "sub").mkdir()
    (audiofind_home / "sub").chmod(0o500)  # root ignores it: make the check see it as a user would
    monkeypatch.setattr("os.access", lambda path, mode: str(path) != str(audiofind_home / "sub"))
    result = runner.invoke(app, ["index", str(root), "-w", tiny, "--db", str(db)])
    assert result.exit_code == 1 and "is not writable for this user" in result.stderr and not db.exists()


def test_sigkill_loses_nothing_committed(tiny: str, tmp_path: Path, audiofind_home: Path) -> None:
    root = tmp_path / "many"
    for i in range(40):
        put(audiogen.write_int16_wav, root / f"{i:02d}.wav", (audiogen.noise(12.0, seed=i) * 20000).astype(np.int16))
    db = audiofind_home / "index.db"
    cmd = [sys.executable, "-m", "audiofind", "index", str(root), "-w", tiny, "--json"]
    proc = subprocess.Popen(cmd, env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    committed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
                committed = conn.execute("SELECT count(*) FROM files WHERE status = 'ok'").fetchone()[0]
                conn.close()
            except apsw.Error:
                committed = 0
        if committed >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "indexing finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with SqliteStore.open(db) as index:
        assert index.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = index.files_under([root])
        assert 0 < len(rows) < 40
        for row in rows:  # every committed file is complete: its segments and vectors are all there
            bounds, vectors = index.segment_vectors(row.hash)
            assert bounds == [(0.0, 10.0), (2.0, 12.0)] and vectors.shape == (2, 32)
    report = index_json(root, "-w", tiny)
    assert report["embedded"] == 40 - len(rows) and report["skipped"] == len(rows) and report["failed"] == 0


def test_full_size_end_to_end_excerpt_finds_its_place(tmp_path: Path) -> None:
    """The real architecture (fixture weights): files find themselves, a 10 s excerpt its place in a recording."""
    from audiofind.model import weights

    weights.save_model(synthetic_state_dict(AudioCLIPConfig()), "full", AudioCLIPConfig().to_dict(), {})
    root = tmp_path / "lib"
    sections = [
        audiogen.sine(300, 10.0),
        audiogen.noise(10.0, seed=1, amp=0.2),
        audiogen.chirp(500, 4000, 10.0),
        audiogen.square(90, 10.0, amp=0.3),
    ]
    recording = np.concatenate(sections, axis=1)  # 40 s
    long = put(audiogen.write_audio, root / "walk.flac", recording)
    short = [
        put(audiogen.write_audio, root / f"{n}.wav", s)
        for n, s in (("beep", audiogen.sine(2000, 1.0)), ("hiss", audiogen.noise(2.0, seed=9)))
    ]
    report = index_json(root, "-w", "full")
    assert report["embedded"] == 3 and report["segments"] == 7 + 2  # 40 s: windows at 0, 5, ..., 30
    for path in [long, *short]:
        assert json.loads(run("search", "--like", path, "--json"))[0]["path"] == str(path)
    start = 22.5
    excerpt = put(
        audiogen.write_audio, tmp_path / "excerpt.flac", recording[:, int(start * SR) : int((start + 10) * SR)]
    )
    hit = json.loads(run("search", "--like", excerpt, "--json"))[0]
    assert hit["path"] == str(long)
    overlap = min(hit["end"], start + 10) - max(hit["start"], start)
    assert overlap >= 5.0, hit  # the best segment is where the excerpt was cut from


def test_ext_narrows_a_run_and_never_removes_other_files(tiny: str, library: tuple[Path, dict]) -> None:
    root, files = library
    first = index_json(root, "-w", tiny)
    narrowed = index_json(root, "-w", tiny, "--ext", "flac")
    assert (narrowed["removed"], narrowed["embedded"]) == (0, 0)
    typo = index_json(root, "-w", tiny, "--ext", "mp3x")
    assert typo["removed"] == 0
    status = json.loads(run("status", "--json"))
    assert status["files"] == first["embedded"] + first["failed"]


def test_ext_picks_the_extensions_and_index_counts_the_audio_files_it_left_out(tiny: str, tmp_path: Path) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    for i, name in enumerate(("door.wav", "kick.flac", "rain.au", "wind.au", "gong.tta")):
        audiogen.write_audio(root / name, audiogen.sine(220 + 110 * i, 0.5))
    (root / "notes.txt").write_text("not audio")
    first = index_json(root, "-w", tiny)
    assert first["embedded"] == 2 and first["left_out"] == {"au": 2, "tta": 1}  # outside the default list
    line = run("index", root, "-w", tiny).strip().splitlines()[-1]
    assert "3 audio file(s) not indexed for their extension (.au .tta: --ext picks them)" in line
    picked = index_json(root, "-w", tiny, "--ext", "au", "--ext", "tta")  # not a narrowing: these, beside the rest
    assert (picked["embedded"], picked["failed"], picked["left_out"]) == (3, 0, {})
    assert "not indexed" not in run("index", root, "-w", tiny, "--ext", "wav")  # left out now, but indexed earlier
    audiogen.write_audio(root / "snare.mp3", audiogen.sine(990, 0.5))
    assert index_json(root, "-w", tiny, "--ext", "wav")["left_out"] == {"mp3": 1}  # a default format, in no index


def test_reindex_uses_the_model_that_built_the_index(tiny: str, library: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = library
    index_json(root, "-w", tiny)
    again = index_json(root)  # no --weights: the index's own model, not the (absent) default one
    assert again["model"] == tiny and again["embedded"] == 0
    result = runner.invoke(app, ["index", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a folder" in result.stderr  # the path is checked before any model


def test_search_explains_a_removed_model(tiny: str, library: tuple[Path, dict]) -> None:
    index_json(library[0], "-w", tiny)
    assert runner.invoke(app, ["weights", "remove", tiny]).exit_code == 0
    result = runner.invoke(app, ["search", "rain"])
    assert result.exit_code == 1 and "not installed any more" in result.stderr and f"--name {tiny}" in result.stderr


def test_without_a_terminal_each_file_is_a_line_and_json_stays_last(tiny: str, library: tuple[Path, dict]) -> None:
    root, files = library
    result = runner.invoke(app, ["index", str(root), "-w", tiny, "--json"])
    assert result.exit_code == 0, result.output
    embedded = [line for line in result.stderr.splitlines() if line.startswith("embedded ")]
    assert sorted(line.removeprefix("embedded ") for line in embedded) == sorted(map(str, files["good"]))
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["seen"] == report["embedded"] + report["failed"] == len(files["good"]) + len(files["broken"])


def test_like_puts_the_file_itself_first_among_its_copies(tiny: str, tmp_path: Path) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    original = put(audiogen.write_audio, root / "zz-original.wav", audiogen.noise(1.0, seed=5))
    for name in ("aa-copy.wav", "mm-copy.wav"):
        shutil.copy(original, root / name)  # the same audio: every copy scores exactly the same
    index_json(root, "-w", tiny)
    for path in sorted(root.iterdir()):
        assert run("search", "--like", path, "--paths", "-k", "3").splitlines()[0] == str(path)


def test_precision_is_asked_per_command_and_kept_by_the_index(
    tiny: str, library: tuple[Path, dict], audiofind_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiofind import device

    monkeypatch.setattr(device, "describe_cpu", lambda: ("Test CPU", ["AVX2", "AVX-512"]))  # no bfloat16 here
    root, files = library
    index_json(root, "-w", tiny)
    db = audiofind_home / "index.db"
    for args, needle in (
        (["index", root, "--device", "cpu", "--precision", "bf16"], "this CPU (Test CPU) has AVX2, AVX-512"),
        (["watch", root, "--device", "cpu", "--precision", "tf32"], "is for CUDA devices"),
        (
            ["serve", "--device", "cpu", "--precision", "bf16", "--no-open", "--port", "0"],
            "needs a CUDA GPU or a CPU with",
        ),
    ):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 2 and needle in result.stderr, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    # An index built in bf16 on a GPU, then opened on a CPU: kept as it is, and each command says why it stops.
    conn = apsw.Connection(str(db))
    conn.execute("UPDATE meta SET value = 'bf16' WHERE key = 'precision'")
    conn.close()
    result = runner.invoke(app, ["index", str(root), "--device", "cpu"])  # no --precision: the index's own
    assert result.exit_code == 2 and "This index holds bf16 embeddings, which need a CUDA device" in result.stderr
    for args in (["index", root, "--precision", "fp32"], ["watch", root, "--precision", "fp32"]):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 1 and "This index holds bf16 embeddings; you asked for fp32" in result.stderr, (
            result.output
        )
    with SqliteStore.open(db) as index:
        assert index.model().precision == "bf16" and index.stats().files == len(files["good"]) + len(files["broken"])
    assert run("search", "rain", "-k", "1", "--paths").strip()  # queries embed in fp32 whatever the index holds


def test_a_truncated_file_is_indexed_with_a_warning_and_one_audio_total(tiny: str, tmp_path: Path) -> None:
    root = tmp_path / "lib"
    whole = put(audiogen.write_int16_wav, tmp_path / "whole.wav", (audiogen.sine(440, 5.0)[0] * 20000).astype(np.int16))
    put(audiogen.write_truncated, root / "cut short.wav", whole, fraction=0.06)  # the header still says 5 s
    put(audiogen.write_audio, root / "tone.wav", audiogen.sine(220, 2.0))
    shutil.copy(root / "tone.wav", root / "tone copy.wav")  # a copy found in the same run counts, as status counts it
    result = runner.invoke(app, ["index", str(root), "-w", tiny, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["embedded"] == 2 and report["failed"] == 0 and report["truncated"] == 1
    assert f"warning {root / 'cut short.wav'}: truncated: 0.3 s of 5.0 s present" in " ".join(result.stderr.split())
    status = json.loads(run("status", "--json"))
    assert status["warnings"] == [{"path": str(root / "cut short.wav"), "reason": "truncated: 0.3 s of 5.0 s present"}]
    assert report["audio_seconds"] == pytest.approx(status["audio_hours"] * 3600, abs=0.5)  # one total, not two
    assert report["audio_seconds"] == pytest.approx(2.0 + 2.0 + 0.3, abs=0.05)


def test_ctrl_c_stops_between_windows_and_says_what_it_kept(
    tiny: str, tmp_path: Path, audiofind_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiofind.audio import decode
    from audiofind.model.encoder import Encoder

    root = tmp_path / "lib"
    put(audiogen.write_audio, root / "a short one.wav", audiogen.sine(330, 1.0))
    long = put(
        audiogen.write_int16_wav, root / "long take.wav", (audiogen.noise(150.0, seed=5)[0] * 9000).astype(np.int16)
    )
    windows = len(decode.window_bounds(150 * SR))
    calls = 0  # of the long take's windows
    real = Encoder.embed_audio

    def ctrl_c_at_19(self, clips):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += sum(len(c) == decode.WINDOW_SECONDS * SR for c in clips)
        if calls == 19:  # past its first minute, which is committed
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, clips)

    monkeypatch.setattr(Encoder, "embed_audio", ctrl_c_at_19)
    result = runner.invoke(app, ["index", str(root), "-w", tiny, "--json"])
    assert result.exit_code == 130, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["stopped"] is True and report["embedded"] == 1
    assert 0 < report["windows_kept"] < 19 and report["seconds_kept"] >= 60.0
    said = " ".join(result.stderr.split())
    assert f"interrupted: the 1 file(s) finished in this run are kept, with {report['windows_kept']} window(s)" in said
    assert "Traceback" not in result.output
    listed = json.loads(run("roots", "--json"))  # the folder is known from its first file, finished or not
    assert [(r["path"], r["last_indexed"]) for r in listed] == [(str(root), None)]
    calls = 0
    again = index_json(root, "-w", tiny)
    assert again["embedded"] == 1 and again["stopped"] is False and calls == windows - report["windows_kept"]
    with SqliteStore.open(audiofind_home / "index.db") as index:
        assert index.get_file(long) is not None


def test_a_database_url_of_another_scheme_is_refused_not_made_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lib").mkdir()
    for args, env in (
        (["index", "lib", "--db", "mysql://foo/bar"], {}),
        (["search", "rain"], {"AUDIOFIND_DB": "sqlite://x.db"}),
    ):
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 2 and "is not supported" in result.stderr, result.output
        assert len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib"]  # no file named mysql: or sqlite: made here


def test_a_file_is_not_a_folder_to_index_even_when_it_is_indexed(tiny: str, tmp_path: Path) -> None:
    root = tmp_path / "lib"
    tone = put(audiogen.write_audio, root / "tone.wav", audiogen.sine(440, 1.0))
    index_json(root, "-w", tiny)
    copy = put(audiogen.write_audio, tmp_path / "elsewhere.wav", audiogen.sine(220, 1.0))
    for path in (tone, copy):  # indexed or not, a file is refused the same way
        result = runner.invoke(app, ["index", str(path), "-w", tiny])
        assert result.exit_code == 2 and result.stderr.strip() == f"error: {path} is not a folder.", result.output


def test_query_text_shown_in_the_table_is_not_markup(tiny: str, tmp_path: Path) -> None:
    root = tmp_path / "lib"
    put(audiogen.write_audio, root / "foo rain.wav", audiogen.noise(1.0, seed=2))
    index_json(root, "-w", tiny)
    # not every word is in a name, so the table's why lists the words that are, [/foo] among them
    result = runner.invoke(app, ["search", "rain [/foo] zebra", "-w", tiny], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "foo rain.wav" in result.stdout and "[/foo]" in result.stdout
