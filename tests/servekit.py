"""A served library in tests: six files of several formats, their index built once per module and restored for each
test, and the application in-process behind a client that carries the token."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import audiogen
import pytest
from modelkit import register_tiny
from starlette.testclient import TestClient
from typer.testing import CliRunner

from audiofind.cli import app as cli
from audiofind.serve.app import create_app
from audiofind.serve.library import Library

runner = CliRunner()
TOKEN = "test-token-0123456789"
BASE = "http://127.0.0.1:8765"


def cli_run(*args: object) -> str:
    result = runner.invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


@dataclass
class Served:
    root: Path
    db: Path
    files: dict[str, Path]
    library: Library
    client: TestClient  # carries the token

    def id(self, name: str) -> int:
        with self.library.borrow() as index:
            return index.file_ids([str(self.files[name])])[str(self.files[name])][0]

    def reindex(self) -> None:
        cli_run("index", self.root, "--db", self.db, "-w", "tiny")


def make_library(root: Path) -> dict[str, Path]:
    (root / "tones").mkdir(parents=True)
    files = {
        "tone.wav": audiogen.write_audio(root / "tones" / "tone.wav", audiogen.sine(440, 1.5)),
        "long.flac": audiogen.write_audio(root / "long.flac", audiogen.chirp(200, 3000, 16.0)),
        "sweep.aiff": audiogen.write_audio(root / "sweep.aiff", audiogen.chirp(300, 6000, 2.5, channels=2)),
        "noise.mp3": audiogen.write_audio(root / "noise.mp3", audiogen.noise(1.0, seed=2)),
        "float.wav": audiogen.write_audio(root / "float.wav", audiogen.square(110, 1.0), codec="pcm_f32le"),
        "take.wv": audiogen.write_audio(
            root / "take.wv", audiogen.chirp(500, 1500, 1.2)
        ),  # seeks land before the frame
    }
    return files


def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A library and its index, built at `live` and kept as a copy (mtimes and all) to restore for each test."""
    live = tmp_path_factory.mktemp("serve-live")  # one per module that uses it
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDIOFIND_HOME", str(tmp_path_factory.mktemp("serve-home")))
        register_tiny()
        make_library(live / "Sounds")
        cli_run("index", live / "Sounds", "--db", live / "index.db", "-w", "tiny")
    saved = tmp_path_factory.mktemp("serve-pristine") / "copy"
    shutil.copytree(live, saved, symlinks=True)
    return live, saved


@contextmanager
def serving(pristine: tuple[Path, Path]) -> Iterator[Served]:
    """The built library as it was, served in-process for the duration."""
    live, saved = pristine
    shutil.rmtree(live)
    shutil.copytree(saved, live, symlinks=True)  # copy2 keeps mtimes: the index still matches every file
    register_tiny()
    root = live / "Sounds"
    files = {p.name: p for p in root.rglob("*") if p.is_file()}
    library = Library.open(live / "index.db")
    client = TestClient(
        create_app(library, TOKEN, "127.0.0.1", 8765), base_url=BASE, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        yield Served(root, live / "index.db", files, library, client)
    finally:
        client.close()
        library.close()
