"""A cold `audiofind search`: the query runs on the numpy text tower, --like on an indexed file loads no model, no
torch is imported, and audiofind.coldstart times it all from a fresh process."""

import os
import subprocess
import sys
from pathlib import Path

import audiogen
import numpy as np
import pytest
from modelkit import register_tiny, synthetic_state_dict
from typer.testing import CliRunner

from audiofind.bench import coldstart
from audiofind.cli import app
from audiofind.errors import AudiofindError, DeviceError, SchemaMismatch, WeightsNotFound
from audiofind.model.config import TINY
from audiofind.search.embedding import QueryEncoder, encoder_for, query_encoder, search_like, search_text
from audiofind.store import open_store

runner = CliRunner()


def cli(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def library(tmp_path: Path) -> list[Path]:
    """Three different sounds indexed with the tiny model in the default index."""
    root = tmp_path / "sounds"
    root.mkdir()
    files = [
        audiogen.write_audio(root / "tone.wav", audiogen.sine(440, 1.0)),
        audiogen.write_audio(root / "hiss.flac", audiogen.noise(1.5, seed=2)),
        audiogen.write_audio(root / "sweep.mp3", audiogen.chirp(200, 4000, 2.0)),
    ]
    cli("index", root, "-w", register_tiny(), "--json")
    return files


def test_a_text_query_runs_on_the_numpy_tower_and_finds_what_torch_finds(library: list[Path]) -> None:
    with open_store() as index:
        fast = query_encoder(index, None, "auto")
        warm = encoder_for(index, None, "cpu")
        queries = ["rain on a tin roof", "A DOG barks twice, far away!", "café", "x " * 100]
        got, want = fast.embed_text(queries), warm.embed_text(queries)
        assert np.abs(got - want).max() / np.linalg.norm(want, axis=-1).min() < 1e-6
        hits, torch_hits = search_text(index, fast, "a bird sings", k=3), search_text(index, warm, "a bird sings", k=3)
        assert [h.path for h in hits] == [h.path for h in torch_hits] and len(hits) == 3
        assert [h.score for h in hits] == pytest.approx([h.score for h in torch_hits], abs=1e-6)
        assert fast._encoder is None  # the torch encoder was never built


def test_like_of_an_indexed_file_needs_no_model(library: list[Path]) -> None:
    cli("weights", "remove", "tiny")
    with open_store() as index:
        fast = query_encoder(index, None, "auto")
        for path in library:
            assert search_like(index, fast, path, k=3)[0].path == str(path)
        assert fast._encoder is None and fast._tower is None
        with pytest.raises(WeightsNotFound, match="not installed any more"):
            encoder_for(index, None, "auto")  # which the CLI used to build before every search
        with pytest.raises(WeightsNotFound, match="not installed any more"):
            search_text(index, fast, "rain", k=3)  # a description does need the model


def test_another_model_is_refused_with_the_rebuild_command(library: list[Path]) -> None:
    from audiofind.model import weights

    other = synthetic_state_dict(TINY)
    other["text_projection"] += 0.1
    weights.save_model(other, "tiny-other", TINY.to_dict(), {})
    with open_store() as index:
        with pytest.raises(SchemaMismatch, match="audiofind index --rebuild -w tiny-other"):
            search_text(index, query_encoder(index, "tiny-other", "auto"), "rain")
        with pytest.raises(SchemaMismatch, match="audiofind index --rebuild -w tiny-other"):
            encoder_for(index, "tiny-other", "auto")


def test_an_explicit_gpu_device_takes_the_torch_tower(library: list[Path]) -> None:
    with open_store() as index:
        with pytest.raises(DeviceError, match="cuda:99"):
            search_text(index, query_encoder(index, None, "cuda:99"), "rain")
        assert isinstance(query_encoder(index, None, " CPU "), QueryEncoder)
        search_text(index, encoder := query_encoder(index, None, " CPU "), "rain")
        assert encoder._encoder is None


def imports(*args: object) -> set[str]:
    """The modules a fresh `audiofind ARGS...` process imports (it must succeed)."""
    argv = [sys.executable, "-X", "importtime", "-m", "audiofind", *map(str, args)]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


def test_cold_cli_search_imports_no_torch(library: list[Path]) -> None:
    loaded = imports("search", "a bird sings", "-k", "2")
    assert "numpy" in loaded and "audiofind.model.textnp" in loaded and "torch" not in loaded
    loaded = imports("search", "--like", library[0], "-k", "2")
    assert "torch" not in loaded and "av" not in loaded and "audiofind.model.textnp" not in loaded


def test_cold_search_seconds_times_a_real_search(library: list[Path], tmp_path: Path) -> None:
    seconds = coldstart.cold_search_seconds(Path(os.environ["AUDIOFIND_HOME"]) / "index.db", "a bird sings", repeat=2)
    assert 0 < seconds < 120
    with pytest.raises(AudiofindError, match="No index at"):
        coldstart.cold_search_seconds(tmp_path / "missing.db", repeat=1)
    assert coldstart.Timing([0.5, 0.2, 0.3]).seconds == 0.2


def test_cold_search_bench_builds_what_it_times(tmp_path: Path) -> None:
    assert 0 < coldstart.cold_search_bench(segments=1500, repeat=1, cfg=TINY) < 120
