"""`bench speed`'s parts: which run (on which precisions, for which model family) and the labelled Figures each
gives. What a part needs is imported only when it runs: the command line reads PARTS at start-up."""

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from audiofind.bench.speed import Loaded
    from audiofind.bench.targets import Figure

PARTS = (
    "model",
    "families",
    "indexing",
    "reindex",
    "query",
    "names",
    "cold",
    "serve",
    "training",
    "duplicates",
    "ray",
    "postgres",
)

Say = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What one `bench speed` run measures: its parts, the precisions, the model's family, and whether parts were named."""

    parts: frozenset[str]
    precisions: tuple[str, ...]
    family: str
    named: bool


def plan(
    only: list[str] | None,
    ray: str | None,
    postgres: str | None,
    precision: list[str] | None,
    dev: "torch.device",
    weights: str | None,
    synthetic: bool,
) -> Plan:
    """The parts and precisions asked for (by default every part that needs nothing more than this machine and, on
    a CPU with bf16, fp32 and bf16); UsageError for an unknown part, a ray part without --ray, or a precision this
    device lacks."""
    from audiofind.device import BF16_EXTENSIONS, PRECISIONS, check_precision, describe_cpu
    from audiofind.errors import UsageError, WeightsError
    from audiofind.model.weights import resolve

    default = (
        ["ray"] if ray else [p for p in PARTS if p not in ("ray", "postgres")] + (["postgres"] if postgres else [])
    )
    parts = set(only or default)
    if "ray" in parts and not ray:
        raise UsageError("The ray part needs --ray ADDRESS (local: a cluster started on this machine).")
    if parts - set(PARTS):
        raise UsageError(f"Unknown part(s) {sorted(parts - set(PARTS))}; choose from {', '.join(PARTS)}.")
    cpu_bf16 = dev.type == "cpu" and bool(set(describe_cpu()[1]) & set(BF16_EXTENSIONS))
    precisions = tuple(precision or (PRECISIONS if dev.type == "cuda" else ("fp32", "bf16") if cpu_bf16 else ("fp32",)))
    for p in precisions:
        check_precision(p, dev)
    family = "audioclip"
    if parts & {"model", "indexing", "query", "serve"} and not synthetic:
        with contextlib.suppress(WeightsError):  # each part that needs the model says so in its own words
            family = resolve(weights).family
    if family == "clap":  # bf16 is AudioCLIP's (the ResNeXt autocast); CLAP runs in fp32 or tf32
        precisions = tuple(p for p in precisions if p != "bf16") or ("fp32",)
    return Plan(frozenset(parts), precisions, family, bool(only))


def measure(
    plan: Plan,
    weights: str | None,
    dev: "torch.device",
    device: str,
    synthetic: bool,
    ray: str | None,
    postgres: str | None,
    say: Say,
) -> list["Figure"]:
    """Run the plan's parts in order, saying what each does; their Figures."""
    from audiofind.bench import speed as bench

    parts, precision = plan.parts, plan.precisions[0]
    figures = _model_parts(plan, weights, dev, synthetic, say)
    encoder = bench.bench_encoder(weights, str(dev), synthetic, precision) if parts & {"indexing", "query"} else None
    if "indexing" in parts and encoder is not None:
        say("indexing: decode-only, model-only, end to end…")
        figures += bench.indexing_figures(encoder, plan.precisions)
    if "reindex" in parts:
        say("re-index of 10,000 unchanged files…")
        figures.append(bench.Figure("reindex_10k_s", "re-index 10,000 unchanged files", bench.reindex_speed(), "s"))
    if "query" in parts and encoder is not None:
        say("warm query latency at 10k and 100k segments…")
        for key, value in bench.query_speed(encoder).items():
            label = f"warm query at {key.split('_')[1]} segments (text encode + search + grouping)"
            figures.append(bench.Figure(key, label, value, "s"))
    figures += _search_parts(parts, say)
    if "serve" in parts:
        from audiofind.bench.serve import serve_speed

        say("serve: warm search, a page of 50 results, first byte of a transcoded file…")
        labels = {"serve_search_100k_s": "serve: warm search at 100k segments", "serve_page_50_s": "serve: page of 50 with cached peaks",
                  "serve_first_byte_transcoded_s": "serve: first byte, transcoded", "serve_first_byte_seek_s": "serve: first byte after a seek"}  # fmt: skip
        served: Loaded = encoder or bench.bench_encoder(weights, str(dev), synthetic, precision)
        figures += [bench.Figure(k, labels.get(k, k), v, "s") for k, v in serve_speed(served).items()]
    if "ray" in parts and ray:
        from audiofind.bench.cluster import ray_figures

        say(f"ray: one library indexed here and on the Ray cluster at {ray}…")
        figures += ray_figures(weights, ray, device, precision, synthetic, say=say)
    if "postgres" in parts and (postgres or plan.named):
        figures += postgres_figures(postgres, say)
    if "training" in parts:
        say("training throughput…")
        train = bench.training_speed(str(dev))
        clips, memory = train["train_clips_per_s"], train["train_peak_memory_bytes"]
        figures.append(bench.Figure("train_clips_per_s", "fine-tuning, batch 6 of 20 s crops", clips, "clips/s"))
        figures.append(bench.Figure("train_peak_memory_bytes", "fine-tuning peak memory", memory, "bytes"))
    return figures


def _model_parts(plan: Plan, weights: str | None, dev: "torch.device", synthetic: bool, say: Say) -> list["Figure"]:
    """The model beside its reference, and both families' audio towers side by side."""
    from audiofind.bench import speed as bench

    figures: list[Figure] = []
    if "model" in plan.parts and plan.family == "clap":
        say("model: skipped; it times AudioCLIP beside its reference (the families part times both models)…")
    elif "model" in plan.parts:
        say("model: encode audio and text, beside the reference…")
        also = plan.precisions[1:] if dev.type == "cpu" else ()  # CUDA's precisions show in the indexing figures
        figures += bench.model_speed(weights, str(dev), synthetic, plan.precisions[0], also=also)
    if "families" in plan.parts:
        from audiofind.bench import families

        say("families: one 10 s window through each family's audio tower (random full-size weights)…")
        figures += [bench.Figure(k, families.LABELS[k], v, "s") for k, v in families.window_speed(str(dev)).items()]
    return figures


def _search_parts(parts: frozenset[str], say: Say) -> list["Figure"]:
    """What needs no model: names and hybrid, cold search in a new process, grouping fingerprints."""
    from audiofind.bench.targets import Figure

    figures: list[Figure] = []
    if "names" in parts:
        from audiofind.bench.names import names_speed

        say("names: what hybrid adds to a query at 100k files, a names-only query, filling the full-text index…")
        labels = {"hybrid_adds_100k_s": "hybrid adds to a query, 100k files (names ranked and fused)",
                  "text_query_100k_s": "names-only query (--mode text), 100k files",
                  "fts_fill_100k_s": "fill the names index of an existing 100k-file index"}  # fmt: skip
        figures += [Figure(k, labels.get(k, k), v, "s") for k, v in names_speed().items()]
    if "cold" in parts:
        from audiofind.bench import coldstart

        say("cold search: a fresh process per query on a 100k-segment index, beside `import torch`…")
        cold, clap = coldstart.cold_search_bench(), coldstart.cold_search_bench(family="clap")
        figures.append(Figure("cold_search_100k_s", "cold search, 100k segments (a new process)", cold, "s"))
        label = "cold search of a CLAP index, 100k segments (a new process)"
        figures.append(Figure("cold_search_clap_100k_s", label, clap, "s"))
        torch_s = coldstart.import_torch_seconds()
        figures.append(Figure("import_torch_s", "python -c 'import torch' (for comparison)", torch_s, "s"))
    if "duplicates" in parts:
        from audiofind.bench import prints

        say("duplicates: grouping 100,000 synthetic fingerprints…")
        found = prints.grouping_speed(100_000)
        label = "group 100k fingerprints (duplicates)"
        figures.append(Figure("group_100k_prints_s", label, found["seconds"], "s"))
        share = found["found"] / max(found["planted"], 1)
        figures.append(Figure("group_100k_copies_found", "planted copies found among them", share, "%"))
    return figures


def postgres_figures(url: str | None, say: Say) -> list["Figure"]:
    """The PostgreSQL backend beside SQLite (bench.postgres), on url or on a server started here for it."""
    from audiofind.bench import postgres as pg
    from audiofind.bench import speed as bench
    from audiofind.store.postgres.server import scratch_server

    labels = {"load_segments_per_s": ("bulk insert (binary COPY)", "segments/s"), "query_ms": ("warm query", "s"),
              "query_p90_ms": ("warm query, 90th percentile", "s"), "recall_at_10": ("recall@10 against exact", "%"),
              "optimize_s": ("build the HNSW index", "s")}  # fmt: skip
    with contextlib.ExitStack() as stack, bench.scratch_dir() as tmp:
        target = url or stack.enter_context(scratch_server())
        say("postgres: 100k and 1M synthetic segments, SQLite beside it at each, two writers…")
        found = pg.postgres_speed(target, sqlite=str(Path(tmp) / "beside.db"), progress=say)
    figures = []
    for key, value in found.items():
        sized = re.fullmatch(r"(pg|sqlite)_(.+)_(\d+k)", key)
        backend, name, size = sized.groups() if sized else (key.split("_", 1) + [""])
        where = "PostgreSQL" if backend == "pg" else "SQLite"
        label, unit = labels.get(name, (name.replace("_", " "), "segments/s" if name.endswith("per_s") else "s"))
        if name.endswith("_ms"):  # the figures table counts seconds
            value, key = value / 1000, f"{backend}_{name.removesuffix('_ms')}_{size}_s"
        figures.append(bench.Figure(key, f"{where}: {label}" + (f", {size}" if size else ""), value, unit))
    return figures
