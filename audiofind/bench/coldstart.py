"""How long a command takes from a cold process: `audiofind search` on a big index, and `import torch` alone.

A command-line search is run once per query, so its start-up is its latency: these run each command in a fresh
Python process and time it from the outside, wall clock, as a user waits for it. On a shared machine other
processes only ever add time, so the least of a few runs is the figure (each run is also returned).
"""

import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from audiofind.errors import AudiofindError

if TYPE_CHECKING:
    from audiofind.model.clap.config import CLAPConfig
    from audiofind.model.config import AudioCLIPConfig

QUERY = "rain on a tin roof"
SYNTHETIC = "synthetic"  # the model name and all-zero sha256 that synthetic_search.bench_search binds its index to
SYNTHETIC_SHA = "0" * 64


@dataclass(frozen=True)
class Timing:
    """Wall seconds of each fresh-process run of one command; `seconds` is the least of them."""

    runs: list[float]

    @property
    def seconds(self) -> float:
        """The least wall time: the run least slowed down by other processes."""
        return min(self.runs)


def time_command(argv: list[str], env: Mapping[str, str] | None = None, repeat: int = 3) -> Timing:
    """Run argv repeat times, each in a fresh process with output captured; AudiofindError if a run fails."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, env=dict(env) if env is not None else None, capture_output=True, text=True)
        runs.append(time.perf_counter() - start)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise AudiofindError(
                f"The timed command `python {shlex.join(argv[1:])}` failed (exit {done.returncode}): {last}"
            )
    return Timing(runs)


def import_torch_seconds(repeat: int = 3) -> float:
    """Least wall time of `python -c "import torch"` here: the floor of any command that needs torch."""
    return time_command([sys.executable, "-c", "import torch"], repeat=repeat).seconds


def search_argv(db: Path | str, query: str = QUERY, weights: str | None = None) -> list[str]:
    """The command line of a search as a user types it (the default results table), run by this Python.

    -P keeps the working directory off the child's import path: a source checkout there must not stand in for the
    audiofind being measured (cold_search_seconds puts that one on PYTHONPATH)."""
    argv = [sys.executable, "-P", "-m", "audiofind", "search", query, "--db", str(Path(db).resolve())]
    return argv + (["--weights", weights] if weights else [])


def cold_search_seconds(
    db: Path | str,
    query: str = QUERY,
    weights: str | None = None,
    env: Mapping[str, str] | None = None,
    repeat: int = 3,
) -> float:
    """Least wall time of `audiofind search QUERY --db DB` in a fresh process of this audiofind (env: the child's
    environment, e.g. a scratch AUDIOFIND_HOME holding the index's model; default this one's)."""
    env = dict(os.environ if env is None else env)
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
    return time_command(search_argv(db, query, weights), env, repeat).seconds


def write_synthetic_text_model(home: Path, cfg: "AudioCLIPConfig | None" = None) -> Path:
    """A text tower with random weights (full size unless cfg says otherwise), installed in AUDIOFIND_HOME=home
    as the model synthetic_search.bench_search binds its index to: a cold search costs with it what it costs with real weights."""
    from audiofind.model import checkpoint
    from audiofind.model.config import AudioCLIPConfig
    from audiofind.model.load import build

    cfg = cfg or AudioCLIPConfig()
    tower = build(cfg, ["text"])
    out = home / "weights" / f"{SYNTHETIC}.safetensors"
    tensors = checkpoint.select(tower.state_dict(), "a synthetic text tower")
    return checkpoint.write(tensors, out, SYNTHETIC, SYNTHETIC_SHA, "imported", cfg.to_dict())


def cold_search_bench(
    segments: int = 100_000,
    repeat: int = 3,
    cfg: "AudioCLIPConfig | CLAPConfig | None" = None,
    family: str = "audioclip",
) -> float:
    """Least wall seconds of a cold `audiofind search` on a synthetic index of this many segments, with a random
    text tower of the family's published size (or cfg's), in a fresh process on this machine."""
    from audiofind.bench.synthetic_search import bench_search

    with tempfile.TemporaryDirectory(prefix="audiofind-cold-") as tmp:
        home, db = Path(tmp) / "home", Path(tmp) / "index.db"
        if family == "clap":
            from audiofind.bench.families import write_synthetic_clap_text_model
            from audiofind.model.clap.config import CLAPConfig

            clap = cfg if isinstance(cfg, CLAPConfig) else None
            out = home / "weights" / f"{SYNTHETIC}.safetensors"
            write_synthetic_clap_text_model(out, SYNTHETIC, SYNTHETIC_SHA, clap)
            dim = clap.embed_dim if clap else CLAPConfig().embed_dim
        else:
            from audiofind.model.config import AudioCLIPConfig

            audioclip = cfg if isinstance(cfg, AudioCLIPConfig) else None
            write_synthetic_text_model(home, audioclip)
            dim = audioclip.embed_dim if audioclip else 1024
        bench_search(db, segments, dim=dim, timing=False)
        env = {k: v for k, v in os.environ.items() if k not in ("AUDIOFIND_WEIGHTS", "AUDIOFIND_DB")}
        return cold_search_seconds(db, env={**env, "AUDIOFIND_HOME": str(home)}, repeat=repeat)
