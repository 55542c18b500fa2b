"""`index --rebuild` without risk, and a bad library end to end, through the CLI."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import audiogen
import numpy as np
from indexkit import check_consistent, snapshot
from modelkit import register_tiny, synthetic_state_dict
from typer.testing import CliRunner

from audiofind.cli import app
from audiofind.model.config import TINY
from audiofind.store.sqlite.store import SqliteStore, staging_path

runner = CliRunner()


def run(*args: object, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    return result.stdout if code == 0 else result.stderr


def wav(path: Path, seconds: float, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return audiogen.write_int16_wav(path, (audiogen.noise(seconds, seed=seed) * 9000).astype(np.int16))


def library(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(3):
        wav(a / f"a{i}.wav", 0.4 + i * 0.3, seed=i)
        wav(b / "sub" / f"b{i}.wav", 0.5 + i * 0.2, seed=10 + i)
    return a, b


def test_a_broken_checkpoint_changes_nothing(tmp_path: Path) -> None:
    tiny = register_tiny()
    a, b = library(tmp_path)
    db = tmp_path / "i.db"
    run("index", a, b, "--db", db, "-w", tiny)
    before = snapshot(db)
    broken = synthetic_state_dict(TINY)
    broken.pop(next(k for k in broken if k.startswith("audio.")))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in broken.items()}, tmp_path / "broken.safetensors")
    err = run("index", "--rebuild", a, "--db", db, "-w", tmp_path / "broken.safetensors", code=1)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert snapshot(db) == before and not staging_path(db).exists()


KILLER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from audiofind.model.encoder import Encoder
real, calls = Encoder.embed_audio, [0]
def embed_audio(self, clips):
    calls[0] += 1
    if calls[0] == {at}:
        os.kill(os.getpid(), signal.SIGKILL)  # at this model call, every time: no timing race
    return real(self, clips)
Encoder.embed_audio = embed_audio
from audiofind.cli import main
sys.argv = ["audiofind", *{argv!r}]
main()
"""


def test_rebuild_killed_half_way_keeps_the_old_index_and_resumes(tmp_path: Path, audiofind_home: Path) -> None:
    tiny = register_tiny()
    a, b = library(tmp_path)
    db = tmp_path / "i.db"
    run("index", a, b, "--db", db, "-w", tiny)
    before = snapshot(db)
    # The model's check clip is call 1; files 1-3 commit, then the process dies at the model call of the 4th.
    argv = ["index", "--rebuild", str(b / "sub"), "--db", str(db), "-w", tiny]
    code = KILLER.format(tests=str(Path(__file__).parent), at=5, argv=argv)
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, "AUDIOFIND_HOME": str(audiofind_home)}
    )
    assert child.returncode == -signal.SIGKILL
    assert snapshot(db) == before  # search and status still read the old index, untouched
    with SqliteStore.open(staging_path(db)) as stage:
        assert len(stage.files_under([tmp_path])) == 3  # what the killed run embedded is kept
    check_consistent(staging_path(db))
    report = json.loads(run("index", "--rebuild", b / "sub", "--db", db, "-w", tiny, "--json").splitlines()[-1])
    assert (report["embedded"], report["skipped"]) == (3, 3)  # only the rest is embedded
    assert not staging_path(db).exists()
    after = snapshot(db)
    assert after["files"] == before["files"] and after["vectors"] == before["vectors"]  # every root kept
    assert sorted(after["roots"]) == sorted(before["roots"])


def test_rebuild_waits_for_an_unplugged_root(tmp_path: Path) -> None:
    tiny = register_tiny()
    a, b = library(tmp_path)
    db = tmp_path / "i.db"
    run("index", a, b, "--db", db, "-w", tiny)
    before = snapshot(db)
    b.rename(tmp_path / "away")
    err = run("index", "--rebuild", a, "--db", db, "-w", tiny, code=1)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # after a progress line per file
    assert len(errors) == 1 and f"{b} is not available" in errors[0] and err.strip().endswith(errors[0])
    assert snapshot(db) == before
    (tmp_path / "away").rename(b)
    run("index", "--rebuild", a, "--db", db, "-w", tiny)
    assert snapshot(db)["files"] == before["files"]


def test_a_folder_of_every_kind_of_bad_file(tmp_path: Path) -> None:
    """Exit 0, each bad file named once with its reason, every good file searchable."""
    tiny = register_tiny()
    root = tmp_path / "lib"
    good = [wav(root / f"good{i}.wav", 0.5 + i / 4, seed=i) for i in range(3)]
    nan = (audiogen.noise(0.5, seed=5)[0] * 0.5).astype(np.float32)
    nan[100] = np.nan
    bad = {
        "nan.wav": audiogen.write_float_wav(root / "nan.wav", nan),
        "inf.wav": audiogen.write_float_wav(root / "inf.wav", np.full(4410, np.inf, np.float32)),
        "empty.wav": audiogen.write_empty(root / "empty.wav"),
        "notes.wav": audiogen.write_not_audio(root / "notes.wav"),
        "cut.flac": audiogen.write_truncated(
            root / "cut.flac", audiogen.write_audio(tmp_path / "s.flac", audiogen.sine(300, 3.0))
        ),
    }
    result = runner.invoke(app, ["index", str(root), "--db", str(tmp_path / "i.db"), "-w", tiny])
    assert result.exit_code == 0, result.output
    for name in bad:
        lines = [line for line in result.stderr.splitlines() if name in line]
        assert len(lines) == 1 and lines[0].startswith("failed ") and ": " in lines[0], (name, result.stderr)
    for path in good:
        hits = json.loads(run("search", "--like", path, "--db", tmp_path / "i.db", "-w", tiny, "--json", "-k", "1"))
        assert hits[0]["path"] == str(path)
