"""`audiofind bench speed`: how fast the model, the indexer and search run on this machine, against their goals."""

from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Annotated

import typer
from rich.table import Table

from audiofind.cli.bench import bench_app
from audiofind.cli.common import DeviceOpt, JsonOpt, WeightsOpt, console, err_console, json_text

PARTS = ("model", "indexing", "reindex", "query", "names", "cold", "serve", "training")


@dataclass(frozen=True)
class Target:
    """A goal: `ratio` bounds value / reference (measured in the same run), `at_most` and `at_least` the value."""

    text: str
    ratio: float | None = None
    at_most: float | None = None
    at_least: float | None = None

    def met(self, value: float, reference: float | None) -> bool:
        """Whether a figure reaches this goal."""
        if self.ratio is not None:
            return reference is not None and value <= self.ratio * reference
        if self.at_most is not None:
            return value <= self.at_most
        return self.at_least is None or value >= self.at_least


def targets(device: str, extensions: list[str]) -> list[tuple[str, Target]]:
    """The goals of issues 10 and 13 for figure keys (shell patterns) on this device and CPU."""
    if device.startswith("cuda"):
        return [
            ("long_*_end_to_end_x", Target("≥ 2000x", at_least=2000.0)),
            ("*_share_of_decode", Target("≥ 70%", at_least=0.7)),
            ("text_*_s", Target("≤ 0.33x ref", ratio=0.33)),
        ]
    avx512 = "AVX-512" in extensions
    return [
        ("audio_5s_s", Target("≤ 0.67x ref", ratio=0.67)),
        ("audio_20s_s", Target("≤ 0.5x ref (AVX-512)", ratio=0.5) if avx512 else Target("≤ 0.7x ref (AVX2)", ratio=0.7)),
        ("text_*_s", Target("≤ 0.33x ref", ratio=0.33)),
        ("*_share_of_model", Target("≥ 80%", at_least=0.8)),
        ("reindex_10k_s", Target("< 5 s", at_most=5.0)),
        ("query_*_s", Target("< 50 ms", at_most=0.05)),
        ("hybrid_adds_*_s", Target("< 10 ms", at_most=0.01)),
        ("cold_search_100k_s", Target("< 1.0 s", at_most=1.0)),
        ("serve_search_100k_s", Target("< 100 ms", at_most=0.1)),
        ("serve_page_50_s", Target("< 1 s", at_most=1.0)),
        ("serve_first_byte_transcoded_s", Target("< 200 ms", at_most=0.2)),
    ]


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "bytes":
        return f"{value / 2**20:,.0f} MiB"
    if unit == "x real time":
        return f"{value:,.1f}x real time"
    if unit == "%":
        return f"{value * 100:.0f}%"
    if unit == "rel":
        return f"{value:.1e}"
    return f"{value:.2f} {unit}"


@bench_app.command()
def speed(
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    synthetic: Annotated[bool, typer.Option("--synthetic", help="Random full-size weights: same speed, no download.")] = False,
    only: Annotated[list[str] | None, typer.Option("--only", metavar="PART", help=f"Run only these parts: {', '.join(PARTS)}.")] = None,
    precision: Annotated[
        list[str] | None,
        typer.Option("--precision", metavar="P", help="fp32, tf32 or bf16 (repeatable; default fp32, and all three on CUDA)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure encoding (beside the reference AudioCLIP), indexing, re-indexing, search latency and training here."""
    from audiofind.bench import speed as bench
    from audiofind.device import PRECISIONS, check_precision, resolve_device
    from audiofind.errors import UsageError

    parts = set(only or PARTS)
    if parts - set(PARTS):
        raise UsageError(f"Unknown part(s) {sorted(parts - set(PARTS))}; choose from {', '.join(PARTS)}.")
    dev = resolve_device(device)
    precisions = tuple(precision or (PRECISIONS if dev.type == "cuda" else ("fp32",)))
    for p in precisions:
        check_precision(p, dev)
    machine = bench.machine(dev)
    say = (lambda msg: None) if json_out else (lambda msg: err_console.print(f"[dim]{msg}[/]"))
    figures: list[bench.Figure] = []
    if "model" in parts:
        say("model: encode audio and text, beside the reference…")
        figures += bench.model_speed(weights, str(dev), synthetic, precisions[0])
    encoder = bench.bench_encoder(weights, str(dev), synthetic, precisions[0]) if parts & {"indexing", "query", "serve"} else None
    if "indexing" in parts:
        say("indexing: decode-only, model-only, end to end…")
        figures += bench.indexing_figures(encoder, precisions)
    if "reindex" in parts:
        say("re-index of 10,000 unchanged files…")
        figures.append(bench.Figure("reindex_10k_s", "re-index 10,000 unchanged files", bench.reindex_speed(), "s"))
    if "query" in parts:
        say("warm query latency at 10k and 100k segments…")
        for key, value in bench.query_speed(encoder).items():
            size = key.split("_")[1]
            figures.append(bench.Figure(key, f"warm query at {size} segments (text encode + search + grouping)", value, "s"))
    if "names" in parts:
        from audiofind.bench.names import names_speed

        say("names: what hybrid adds to a query at 100k files, a names-only query, filling the full-text index…")
        labels = {"hybrid_adds_100k_s": "hybrid adds to a query, 100k files (names ranked and fused)",
                  "text_query_100k_s": "names-only query (--mode text), 100k files",
                  "fts_fill_100k_s": "fill the names index of an existing 100k-file index"}  # fmt: skip
        for key, value in names_speed().items():
            figures.append(bench.Figure(key, labels.get(key, key), value, "s"))
    if "cold" in parts:
        from audiofind.bench import coldstart

        say("cold search: a fresh process per query on a 100k-segment index, beside `import torch`…")
        figures.append(bench.Figure("cold_search_100k_s", "cold search, 100k segments (a new process)", coldstart.cold_search_bench(), "s"))
        figures.append(bench.Figure("import_torch_s", "python -c 'import torch' (for comparison)", coldstart.import_torch_seconds(), "s"))
    if "serve" in parts:
        from audiofind.bench.serve import serve_speed

        say("serve: warm search, a page of 50 results, first byte of a transcoded file…")
        labels = {"serve_search_100k_s": "serve: warm search at 100k segments", "serve_page_50_s": "serve: page of 50 with cached peaks",
                  "serve_first_byte_transcoded_s": "serve: first byte, transcoded", "serve_first_byte_seek_s": "serve: first byte after a seek"}  # fmt: skip
        for key, value in serve_speed(encoder or bench.bench_encoder(weights, str(dev), synthetic, precisions[0])).items():
            figures.append(bench.Figure(key, labels.get(key, key), value, "s"))
    if "training" in parts:
        say("training throughput…")
        train = bench.training_speed(str(dev))
        figures.append(bench.Figure("train_clips_per_s", "fine-tuning, batch 6 of 20 s crops", train["train_clips_per_s"], "clips/s"))
        figures.append(bench.Figure("train_peak_memory_bytes", "fine-tuning peak memory", train["train_peak_memory_bytes"], "bytes"))

    goals = targets(str(dev), machine["extensions"])
    rows = []
    for f in figures:
        goal = next((t for pattern, t in goals if fnmatch(f.key, pattern)), None)
        rows.append((f, goal, None if goal is None else goal.met(f.value, f.reference)))
    if json_out:
        out: dict = {"device": str(dev), "machine": machine}
        for f, _, _ in rows:
            out[f.key] = f.value
            if f.reference is not None:
                out[f"{f.key}_reference"] = f.reference
        out["missed"] = [f.key for f, _, met in rows if met is False]
        typer.echo(json_text(out))
        return
    title = f"audiofind bench speed on {machine['cpu']} · {', '.join(machine['extensions']) or 'no AVX2'}"
    gpu = f" · {machine['gpu']}" if "gpu" in machine else ""
    caption = f"{machine['threads']} torch threads · torch {machine['torch']} · device {machine['device']}{gpu}"
    table = Table("measure", "this machine", "reference, same run", "ratio", "target", "", title=title, caption=caption)
    for f, goal, met in rows:
        ref = "" if f.reference is None else _fmt(f.reference, f.unit)
        ratio = "" if f.reference is None else f"{f.value / f.reference:.2f}x"
        mark = "" if met is None else "[green]met[/]" if met else "[red]✗ missed[/]"
        table.add_row(f.label, _fmt(f.value, f.unit), ref, ratio, goal.text if goal else "", mark)
    console.print(table)
