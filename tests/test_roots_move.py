"""Libraries that move or go offline, through the command line: `status` and `roots` say which roots are missing,
`search` marks what is offline, `index` spots a moved root instead of doubling it, and `roots move` re-points it."""

import json
import shutil
from pathlib import Path

import audiogen
import pytest
from modelkit import register_tiny
from typer.testing import CliRunner

from audiofind.cli import app

runner = CliRunner()


def invoke(*args: object, code: int = 0):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output
    return result


def as_json(*args: object, code: int = 0) -> object:
    return json.loads(invoke(*args, "--json", code=code).stdout.strip().splitlines()[-1])


def one_line_error(*args: object) -> str:
    result = invoke(*args, code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


SOUNDS = {"Doors/Door_Creak.wav": 300, "Doors/Gate_Slam.wav": 420, "Drums/Kick808.wav": 60, "Rain.wav": 900}


def make_library(root: Path, sounds: dict[str, float] = SOUNDS) -> list[Path]:
    out = []
    for name, freq in sounds.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        out.append(audiogen.write_audio(root / name, audiogen.sine(freq, 0.6)))
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    register_tiny()
    return request.getfixturevalue("pg_url") if request.param == "postgres" else str(tmp_path / "index.db")


def test_a_moved_library_is_spotted_marked_and_re_pointed(db: str, tmp_path: Path) -> None:
    old, new = tmp_path / "Sounds Library", tmp_path / "Moved Sounds"
    make_library(old)
    assert as_json("index", old, "-w", "tiny", "--db", db)["embedded"] == len(SOUNDS)
    assert as_json("status", "--db", db)["root_state"] == {str(old): "available"}
    old.rename(new)  # the user moved the library (or the drive is mounted elsewhere now)

    status = as_json("status", "--db", db)
    assert status["root_state"] == {str(old): "missing"} and status["roots"] == [str(old)]
    assert f"{old} (missing)" in invoke("status", "--db", db).stdout
    assert [r["state"] for r in as_json("roots", "--db", db)] == ["missing"]
    assert "missing" in invoke("roots", "--db", db).stdout
    hits = as_json("search", "door creak", "-w", "tiny", "--db", db)
    assert hits and not any(h["available"] for h in hits)
    table = invoke("search", "door creak", "-w", "tiny", "--db", db).stdout
    assert table.count("offline") == len(hits)

    # Indexing the new place embeds nothing and doubles nothing: it says what happened and what to run.
    result = invoke("index", new, "-w", "tiny", "--db", db, "--json", code=1)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["relocated"] == [{"old": str(old), "new": str(new), "files": len(SOUNDS)}]
    assert (report["embedded"], report["reused"], report["seen"]) == (0, 0, 0)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"relocated {new}: 4 of the 4 files of the missing folder {old}")
    assert lines[0].endswith(f"audiofind roots move '{old}' '{new}'")
    status = as_json("status", "--db", db)
    assert (status["files"], status["roots"]) == (len(SOUNDS), [str(old)])

    assert as_json("roots", "move", old, new, "--db", db) == {"old": str(old), "new": str(new), "files": len(SOUNDS)}
    again = as_json("index", new, "-w", "tiny", "--db", db)
    assert (again["skipped"], again["embedded"], again["moved"], again["relocated"]) == (len(SOUNDS), 0, 0, [])
    status = as_json("status", "--db", db)
    assert (status["files"], status["root_state"]) == (len(SOUNDS), {str(new): "available"})
    hits = as_json("search", "door creak", "-w", "tiny", "--db", db)
    assert all(h["available"] and h["path"].startswith(str(new)) for h in hits)
    assert "offline" not in invoke("search", "door creak", "-w", "tiny", "--db", db).stdout


def test_roots_move_refuses_bad_input_in_one_line_changing_nothing(tmp_path: Path) -> None:
    register_tiny()
    old, other, db = tmp_path / "old", tmp_path / "other", tmp_path / "index.db"
    make_library(old)
    make_library(other, {"x.wav": 100})
    invoke("index", old, other, "-w", "tiny", "--db", db)
    (tmp_path / "a file.wav").write_bytes(b"")
    (tmp_path / "new").mkdir()
    before = as_json("status", "--db", db)
    errors = {
        (tmp_path / "never", tmp_path / "new"): "is not an indexed folder",
        (old, tmp_path / "nowhere"): "does not exist",
        (old, tmp_path / "a file.wav"): "is not a folder",
        (old, tmp_path / "new"): "still holds its indexed files",  # a copy, not a move
    }
    for (source, target), why in errors.items():
        assert why in one_line_error("roots", "move", source, target, "--db", db)
    shutil.rmtree(old)
    (other / "inside").mkdir()
    assert "inside the indexed folder" in one_line_error("roots", "move", old, other / "inside", "--db", db)
    assert "inside the indexed folder" in one_line_error("roots", "move", old, other, "--db", db)
    assert "holds none of the files indexed under" in one_line_error("roots", "move", old, tmp_path / "new", "--db", db)
    after = as_json("status", "--db", db)
    assert after["root_state"] == {str(old): "missing", str(other): "available"}
    unchanged = lambda status: {k: v for k, v in status.items() if k != "root_state"}
    assert unchanged(after) == unchanged(before)  # last_update too: nothing was written


def test_only_a_folder_holding_most_of_a_missing_roots_sounds_is_a_move(tmp_path: Path) -> None:
    register_tiny()
    old, db = tmp_path / "old", tmp_path / "index.db"
    make_library(old)
    invoke("index", old, "-w", "tiny", "--db", db)
    copy = tmp_path / "copy"
    shutil.copytree(old, copy)  # the old root is still there: a copy, indexed as one (nothing embedded)
    report = as_json("index", copy, "-w", "tiny", "--db", db)
    assert (report["relocated"], report["reused"], report["embedded"]) == ([], len(SOUNDS), 0)
    shutil.rmtree(old)
    part = tmp_path / "part"  # two of the four: a part of the library, not the library
    make_library(part, {k: v for k, v in list(SOUNDS.items())[:2]})
    report = as_json("index", part, "-w", "tiny", "--db", db)
    assert (report["relocated"], report["reused"]) == ([], 2)
    other = tmp_path / "other"  # the same names and sizes, other sounds
    make_library(other, {k: v * 1.5 for k, v in SOUNDS.items()})
    report = as_json("index", other, "-w", "tiny", "--db", db)
    assert (report["relocated"], report["embedded"]) == ([], len(SOUNDS))


def test_a_root_indexed_before_is_not_new_whatever_ext_asks(tmp_path: Path) -> None:
    register_tiny()
    old, new, db = tmp_path / "old", tmp_path / "new", tmp_path / "index.db"
    make_library(old, {"Doors/one.flac": 300, "two.flac": 500})
    make_library(new, {"kept.wav": 100})
    invoke("index", old, new, "-w", "tiny", "--db", db)
    shutil.copytree(old, new, dirs_exist_ok=True)  # the old library merged into a root indexed before
    shutil.rmtree(old)
    report = as_json("index", new, "--ext", "flac", "-w", "tiny", "--db", db)  # known under new: no .flac yet
    assert (report["relocated"], report["reused"], report["embedded"]) == ([], 2, 0)


@pytest.mark.postgres
def test_a_moved_root_indexed_under_a_new_name_can_still_be_re_pointed(pg_url: str, tmp_path: Path) -> None:
    register_tiny()
    old, new = tmp_path / "sfx", tmp_path / "sfx2"
    make_library(old)
    invoke("index", old, "-w", "tiny", "--db", pg_url, "--root-name", "sfx")
    old.rename(new)
    # --root-name mounts the folder before the walk; a folder found to be a moved root must not stay one
    report = as_json("index", new, "-w", "tiny", "--db", pg_url, "--root-name", "sfx2", code=1)
    assert [r["new"] for r in report["relocated"]] == [str(new)]
    assert [r["name"] for r in as_json("roots", "--db", pg_url)] == ["sfx"]
    assert as_json("roots", "move", old, new, "--db", pg_url)["files"] == len(SOUNDS)
