"""An index made by an earlier release (tests/data/legacy, see make.sh there) still opens, upgrades and searches."""

import json
import shutil
from pathlib import Path

import pytest
from modelkit import register_tiny
from typer.testing import CliRunner

from audiofind.cli import app
from audiofind.store import open_store
from audiofind.store.sqlite import migrations

LEGACY = Path(__file__).parent / "data" / "legacy"
runner = CliRunner()


@pytest.fixture
def legacy_db(tmp_path: Path) -> Path:
    db = tmp_path / "index.db"
    shutil.copy(LEGACY / "index-7caaa9c.db", db)
    return db


def cli(*args: object) -> list | dict:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_it_opens_and_upgrades_keeping_every_row(legacy_db: Path) -> None:
    before = json.loads((LEGACY / "status.json").read_text())
    status = cli("status", "--json", "--db", legacy_db)
    assert isinstance(status, dict)
    for key in ("model", "sha256", "roots", "files", "ok", "failed", "segments", "audio_hours", "failures"):
        assert status[key] == before[key], key
    assert status["schema_version"] == len(migrations.MIGRATIONS) >= before["schema_version"]
    with open_store(legacy_db) as index:  # reopening applies nothing more
        assert index.stats().schema_version == status["schema_version"]


def test_it_searches_as_that_release_did(legacy_db: Path) -> None:
    register_tiny("tiny")  # the deterministic weights the index was built with
    for mode in ("audio", "text"):
        then = json.loads((LEGACY / f"search-{mode}.json").read_text())
        now = cli("search", "door creak", "-w", "tiny", "-k", 5, "--mode", mode, "--json", "--db", legacy_db)
        assert [r["path"] for r in now] == [r["path"] for r in then], mode
        if mode == "audio":  # BM25 scores moved on purpose when extensions became words (m008); vectors never do
            assert [r["score"] for r in now] == pytest.approx([r["score"] for r in then], abs=1e-6)


def test_its_hits_carry_the_facts_its_files_still_give(legacy_db: Path) -> None:
    from audiofind.audio.decode import probe

    register_tiny("tiny")
    root = Path("/tmp/audiofind-legacy/library")  # where make.sh put the files; on most machines they are not there
    for mode in ("audio", "text"):
        for hit in cli("search", "door creak", "-w", "tiny", "-k", 5, "--mode", mode, "--json", "--db", legacy_db):
            assert isinstance(hit, dict) and hit["available"] is root.is_dir()
            assert isinstance(hit["sample_rate"], int) and isinstance(
                hit["channels"], int
            )  # kept since the first schema
            if hit["codec"] is None:  # the migration could not read the file: unknown, not guessed
                assert hit["format"] is None and hit["bits"] is None
            else:
                info = probe(Path(hit["path"]))
                assert (hit["format"], hit["codec"], hit["bits"]) == (info.container, info.codec, info.bits)
