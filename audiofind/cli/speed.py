"""`audiofind bench speed`: how fast the model, the indexer and search run on this machine."""

import json
from typing import Annotated

import typer
from rich.table import Table

from audiofind.cli.bench import bench_app
from audiofind.cli.common import DeviceOpt, JsonOpt, WeightsOpt, console, err_console

PARTS = ("model", "indexing", "reindex", "query", "training")

# What the reference AudioCLIP needs on a 2-core CPU (spec), and the issues' targets, for the table.
REFERENCE = {"audio_5s_s": "0.40 s", "audio_20s_s": "1.44 s", "text_1_s": "64 ms", "text_64_s": "3.15 s"}
TARGET = {
    "audio_5s_s": "≤ 0.27 s",
    "audio_20s_s": "≤ 0.96 s",
    "text_1_s": "≤ 21 ms",
    "end_to_end_x": "≥ 80% of model",
    "reindex_10k_s": "< 5 s",
    "query_100k_s": "< 50 ms",
}


def _fmt(key: str, value: float) -> str:
    if key.endswith("_bytes"):
        return f"{value / 2**20:.0f} MiB"
    if key.endswith("_x"):
        return f"{value:.1f}x real time"
    if key.endswith("_per_s"):
        return f"{value:.2f}/s"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


@bench_app.command()
def speed(
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    synthetic: Annotated[bool, typer.Option("--synthetic", help="Random full-size weights: same speed, no download.")] = False,
    only: Annotated[list[str] | None, typer.Option("--only", help=f"Run only these parts: {', '.join(PARTS)}.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure weights loading, encoding, indexing, re-indexing, search latency and training on this machine."""
    from audiofind import bench
    from audiofind.errors import UsageError

    parts = set(only or PARTS)
    if parts - set(PARTS):
        raise UsageError(f"Unknown part(s) {sorted(parts - set(PARTS))}; choose from {', '.join(PARTS)}.")
    results: dict[str, float] = {}
    say = (lambda msg: None) if json_out else (lambda msg: err_console.print(f"[dim]{msg}[/]"))
    if "model" in parts:
        say("model: load, encode audio and text…")
        results.update(bench.model_speed(weights, device, synthetic))
    encoder = None
    if parts & {"indexing", "query"}:
        encoder = bench.bench_encoder(weights, device, synthetic)
    if "indexing" in parts:
        say("indexing: decode-only, model-only, end to end…")
        results.update(bench.indexing_speed(encoder))
    if "reindex" in parts:
        say("re-index of 10,000 unchanged files…")
        results["reindex_10k_s"] = bench.reindex_speed()
    if "query" in parts:
        say("warm query latency at 10k and 100k segments…")
        results.update(bench.query_speed(encoder))
    if "training" in parts:
        say("training throughput…")
        results.update(bench.training_speed(device))
    if json_out:
        from audiofind.device import resolve_device

        typer.echo(json.dumps({"device": str(resolve_device(device)), **results}))
        return
    table = Table("measure", "this machine", "reference", "target", title="audiofind bench speed")
    for key, value in results.items():
        table.add_row(key, _fmt(key, value), REFERENCE.get(key, ""), TARGET.get(key, ""))
    console.print(table)
