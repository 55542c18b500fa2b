"""`bench speed` measures what it says, at toy sizes (the real numbers come from running the command)."""

import torch
from typer.testing import CliRunner

from audiofind import bench
from audiofind.cli import app
from audiofind.encoder import from_model
from audiofind.model import TINY
from modelkit import synthetic_model


def tiny_encoder():  # type: ignore[no-untyped-def]
    return from_model(synthetic_model(TINY), TINY, torch.device("cpu"), "tiny", "a" * 64)


def test_indexing_reindex_and_query_measurements() -> None:
    enc = tiny_encoder()
    indexing = bench.indexing_speed(enc, n_files=2, seconds=12.0)
    assert set(indexing) == {"decode_x", "model_x", "end_to_end_x"} and all(v > 0 for v in indexing.values())
    assert bench.reindex_speed(n_files=40, dim=32) > 0  # raises unless every file was skipped unchanged
    query = bench.query_speed(enc, sizes=(300,), per_file=3)
    assert list(query) == ["query_0k_s"] and query["query_0k_s"] > 0


def test_unknown_part_is_one_line() -> None:
    result = CliRunner().invoke(app, ["bench", "speed", "--only", "reindx"])
    assert result.exit_code == 2 and "reindx" in result.stderr and len(result.stderr.strip().splitlines()) == 1
