"""`audiofind duplicates`: exact copies by hash, near copies by acoustic fingerprint, wasted bytes; nothing deleted."""

import json
import shutil
from pathlib import Path

import apsw
import audiogen
import numpy as np
import pytest
from modelkit import register_tiny, synthetic_state_dict
from typer.testing import CliRunner

from audiofind.audio import decode
from audiofind.audio.fingerprint import fingerprint
from audiofind.bench import prints
from audiofind.cli import app
from audiofind.model import weights
from audiofind.model.config import TINY
from audiofind.search import duplicates
from audiofind.store.sqlite.store import SqliteStore

runner = CliRunner()
SR = audiogen.SAMPLE_RATE


def run(*args: object, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    return result.stdout


def register_other(name: str = "tiny-b") -> str:
    """A second tiny model: the same architecture, every weight scaled, so its vectors are another model's."""
    state = {k: v * 1.5 if v.is_floating_point() else v for k, v in synthetic_state_dict(TINY).items()}
    weights.save_model(state, name, TINY.to_dict(), {"note": "synthetic test weights, another model"})
    return name


@pytest.fixture
def library(tmp_path: Path) -> tuple[Path, list[set[str]]]:
    """Three recordings, each with copies a library gathers (another codec, rate, gain, a trim), one byte-for-byte
    copy, and two sounds that are alike but not the same recording (tones a semitone apart)."""
    root = tmp_path / "lib"
    root.mkdir()
    burst = audiogen.noise(2.0, seed=3, amp=0.4)[0]
    sweep = audiogen.chirp(300, 3000, 2.5, amp=0.4)[0]
    knock = prints.knocks(np.array([0.3, 0.9, 1.6]), 2.2, 700.0, seed=5)
    expected = []
    for name, x in {"burst": burst, "sweep": sweep, "knock": knock}.items():
        files = [
            prints.write(root / f"{name}.wav", x),
            prints.write(root / f"{name}.mp3", x, bit_rate=128_000),
            prints.write(root / f"{name} 48k.wav", prints.resample(x, 48000), rate=48000),
            prints.write(root / f"{name} quieter.flac", x * 0.5),
            prints.write(root / f"{name} trimmed.wav", x[int(0.5 * SR) :]),
        ]
        expected.append({str(p) for p in files})
    shutil.copy(root / "burst.wav", root / "burst copy.wav")  # exact: the same bytes
    expected[0].add(str(root / "burst copy.wav"))
    prints.write(root / "A4.wav", prints.tone(440.0, 2.0, 3))
    prints.write(root / "A#4.wav", prints.tone(466.16, 2.0, 3))
    return root, expected


def near_groups(db: Path | None = None) -> list[set[str]]:
    args = ["duplicates", "--json", *(["--db", db] if db else [])]
    groups = json.loads(run(*args))
    return sorted(({*g["paths"]} for g in groups if g["kind"] == "near"), key=sorted)


def test_copies_group_by_fingerprint_whatever_the_model(library: tuple[Path, list[set[str]]], tmp_path: Path) -> None:
    root, expected = library
    register_tiny("tiny")
    run("index", root, "-w", "tiny")
    groups = json.loads(run("duplicates", "--json"))
    size = (root / "burst.wav").stat().st_size
    pair = sorted([str(root / "burst copy.wav"), str(root / "burst.wav")])
    # One group per file: the byte-for-byte pair sits in its recording's near group, said to be identical there.
    every = [p for g in groups for p in g["paths"]]
    assert len(every) == len(set(every)) == 16
    assert [g["kind"] for g in groups] == ["near"] * 3
    burst = next(g for g in groups if pair[0] in g["paths"])
    assert burst["identical"] == [pair] and all(g["identical"] == [] for g in groups if g is not burst)
    assert [f["path"] for f in burst["files"]] == burst["paths"] and all(f["available"] for f in burst["files"])
    # Every copy kind with its source; the two tones a semitone apart in no group.
    assert near_groups() == sorted(expected, key=sorted)
    near = next(g for g in groups if g["kind"] == "near" and str(root / "sweep.wav") in g["paths"])
    sizes = [Path(p).stat().st_size for p in near["paths"]]
    assert near["bytes"] == sum(sizes) and near["wasted"] == sum(sizes) - max(sizes)
    assert all(Path(p).exists() for g in expected for p in g)  # it never deletes
    # Another model (or none: fingerprints use no model): the same groups.
    register_other("tiny-b")
    run("index", root, "-w", "tiny-b", "--db", tmp_path / "b.db")
    assert near_groups(tmp_path / "b.db") == near_groups()
    # With --near 0 only exact copies remain.
    files = [{"path": p, "bytes": size, "available": True} for p in pair]
    assert json.loads(run("duplicates", root, "--json", "--near", 0)) == [
        {"kind": "exact", "paths": pair, "bytes": 2 * size, "wasted": size, "files": files, "identical": [pair]}
    ]
    # The table: the copy named as such, and a total that counts each file once (what can really be freed).
    table = run("duplicates")
    assert "burst.wav (same bytes as burst copy.wav)" in table
    freed = sum(g["wasted"] for g in groups)
    assert freed == sum(sum(f["bytes"] for f in g["files"]) - max(f["bytes"] for f in g["files"]) for g in groups)
    assert f"3 group(s) of 16 files; keeping the largest file of each would free {freed / 2**20:.2f} MiB." in table
    result = runner.invoke(app, ["duplicates", "--near", "2"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_fingerprints_are_made_at_index_time_from_the_windows(tmp_path: Path) -> None:
    register_tiny()
    root = tmp_path / "lib"
    root.mkdir()
    long = audiogen.write_audio(root / "long.wav", audiogen.noise(23.0, seed=2, amp=0.3))  # 4 overlapping windows
    short = audiogen.write_audio(root / "short.wav", audiogen.chirp(200, 900, 1.5))
    run("index", root, "-w", "tiny")
    with SqliteStore.open(_default_db()) as index:
        rows = {Path(r.path).name: r.hash for r in index.files_under([root])}
        stored = index.fingerprints(rows.values())
    for path in (long, short):  # the windows fed whole-file samples, not their overlaps twice
        assert stored[rows[path.name]] == fingerprint(decode.load_audio(path, max_seconds=60.0)).to_bytes()


def _default_db() -> Path:
    from audiofind.paths import default_db

    return default_db()


def test_an_index_without_fingerprints_gets_them_on_its_first_run(library: tuple[Path, list[set[str]]]) -> None:
    root, expected = library
    register_tiny()
    run("index", root, "-w", "tiny")
    conn = apsw.Connection(str(_default_db()))  # as an index made before fingerprints were
    conn.execute("DELETE FROM fingerprints")
    conn.close()
    seen: list[tuple[str, int, int]] = []
    with SqliteStore.open(_default_db()) as index:
        groups = duplicates.find(index, progress=lambda what, done, total: seen.append((what, done, total)))
        assert len(index.fingerprints(h for h in {r.hash for r in index.files_under([root])} if h)) == 17
    assert sorted(({*g.paths} for g in groups if g.kind == "near"), key=sorted) == sorted(expected, key=sorted)
    made = [s for s in seen if s[0] == "fingerprints"]
    assert made[-1] == ("fingerprints", 17, 17)  # 18 files, one an exact copy: 17 contents, each decoded once


def test_bench_near_measures_copies_against_different_sounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    few = {
        k: v
        for k, v in prints.generated_sounds().items()
        if k in ("white noise 1", "sweep up", "gesture take 1", "gesture take 2")
    }
    assert len(few) == 4, sorted(prints.generated_sounds())
    monkeypatch.setattr(prints, "generated_sounds", lambda: few)
    report = json.loads(run("bench", "near", "--json"))
    assert list(report)[:4] == ["sounds", "copies", "different", "suggested"] and report["sounds"] == 4
    assert set(report["copies"]) == set(prints.KINDS) - {"source"}
    assert min(report["copies"].values()) > duplicates.NEAR > report["different"]
    assert min(report["copies"].values()) > report["suggested"] > report["different"]
    (tmp_path / "one").mkdir()
    audiogen.write_audio(tmp_path / "one" / "a.wav", audiogen.sine(440, 1.0))
    result = runner.invoke(app, ["bench", "near", str(tmp_path / "one")])
    assert result.exit_code == 2 and "fewer than two readable audio files" in result.stderr
    result = runner.invoke(app, ["bench", "near", str(tmp_path / "nope"), "-w", "tiny"])  # -w: accepted, unused
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {tmp_path / 'nope'} is not a folder."


def sounds(root: Path) -> dict[str, Path]:
    """Rain in weather/ with an exact copy in foley/ and a FLAC of it in weather/; wind with its FLAC in weather/; steps
    alone in foley/."""
    for folder in ("weather", "foley"):
        (root / folder).mkdir(parents=True)
    rain, wind = audiogen.noise(1.5, seed=7, amp=0.4)[0], audiogen.chirp(200, 2000, 1.5, amp=0.4)[0]
    files = {
        "rain": prints.write(root / "weather" / "rain.wav", rain),
        "rain flac": prints.write(root / "weather" / "rain.flac", rain),
        "wind": prints.write(root / "weather" / "wind.wav", wind),
        "wind flac": prints.write(root / "weather" / "wind.flac", wind),
        "steps": prints.write(root / "foley" / "steps.wav", prints.knocks(np.array([0.2, 0.7]), 1.2, 500.0, seed=1)),
    }
    files["rain copy"] = Path(shutil.copy(files["rain"], root / "foley" / "rain copy.wav"))
    return files


def test_a_path_lists_the_groups_it_has_a_file_in_with_all_their_files(tmp_path: Path) -> None:
    files = sounds(tmp_path / "sounds")
    register_tiny()
    run("index", tmp_path / "sounds", "-w", "tiny")
    rain = sorted(str(files[k]) for k in ("rain", "rain flac", "rain copy"))
    wind = sorted(str(files[k]) for k in ("wind", "wind flac"))
    # foley holds a copy of a weather file: the group is listed whole, so the other copy shows where it is
    assert [g["paths"] for g in json.loads(run("duplicates", tmp_path / "sounds" / "foley", "--json"))] == [rain]
    weather = json.loads(run("duplicates", tmp_path / "sounds" / "weather", "--json"))
    assert sorted(g["paths"] for g in weather) == [rain, wind]
    assert json.loads(run("duplicates", files["steps"], "--json")) == []  # a file alone: no group
    assert [g["paths"] for g in json.loads(run("duplicates", files["rain copy"], "--json"))] == [rain]
    # a PATH that is not there (and holds nothing indexed) is a typo, as search's --under says
    result = runner.invoke(app, ["duplicates", str(tmp_path / "nope")])
    assert result.exit_code == 2 and result.stderr == f"error: {tmp_path / 'nope'}: no such folder.\n"
    assert result.stdout == ""


def test_files_of_an_unplugged_root_are_grouped_and_marked_offline(tmp_path: Path) -> None:
    files = sounds(tmp_path / "sounds")
    register_tiny()
    run("index", tmp_path / "sounds" / "weather", tmp_path / "sounds" / "foley", "-w", "tiny")  # two roots
    # foley is unplugged: its files are still grouped (and its folder still names them), marked as search marks them
    (tmp_path / "sounds" / "foley").rename(tmp_path / "unplugged")
    for args in ([], [tmp_path / "sounds" / "foley"]):
        groups = json.loads(run("duplicates", *args, "--json"))
        rain = next(g for g in groups if str(files["rain"]) in g["paths"])
        assert {f["path"]: f["available"] for f in rain["files"]} == {
            str(files["rain"]): True, str(files["rain flac"]): True, str(files["rain copy"]): False
        }  # fmt: skip
    table = run("duplicates")
    assert table.count(".wav offline") == 1 and f"{files['rain copy']} offline" in table
