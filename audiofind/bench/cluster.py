"""`bench speed --ray ADDRESS`: the same files indexed here and on a Ray cluster (`index --ray`), interleaved.

On a machine of its own (`--ray local`) it says what the cluster costs over a local run (the target: under 20 % on
two CPUs); on a machine with GPUs, what the cluster gives: audio hours indexed per hour, per GPU, with one actor on
one GPU and with an actor on every GPU.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from audiofind.bench.speed import Figure, library_lengths, make_library, scratch_dir
from audiofind.library.cluster import Cluster, connect
from audiofind.library.sync import Report, prepare, sync
from audiofind.model import checkpoint, weights
from audiofind.model.config import AudioCLIPConfig
from audiofind.model.embedder import Embedder
from audiofind.model.encoder import load_encoder
from audiofind.model.load import build
from audiofind.store import open_store

# What is indexed both ways, as (files, seconds each; 0: clips of 0.5 to 9.5 s, all different lengths): long
# recordings and a sample library, about a minute of model time on two CPUs; on GPUs, enough to keep them busy.
LIBRARIES = {"cpu": [(6, 30.0), (12, 0.0)], "cuda": [(32, 300.0), (800, 0.0)]}


@dataclass(frozen=True)
class Run:
    """One indexing of the library: its report, and the seconds to be ready for it (load, or start the cluster)."""

    report: Report
    ready_s: float


def synthetic_checkpoint(folder: Path, cfg: AudioCLIPConfig) -> Path:
    """Random weights of this size as a safetensors file (the same speed as real ones, no download)."""
    tensors = checkpoint.select(build(cfg).state_dict(), "synthetic weights")
    config = None if cfg == AudioCLIPConfig() else cfg.to_dict()
    return checkpoint.write(
        tensors, folder / "synthetic.safetensors", "synthetic", checkpoint.content_sha256(tensors), "imported", config
    )


def _index(db: Path, encoder: Embedder, root: Path, cluster: Cluster | None) -> Report:
    with open_store(db, create=True) as index:
        prepare(index, encoder)
        return sync(index, encoder, [root], cluster=cluster)


def ray_figures(weights_name: str | None, address: str, device: str = "auto", precision: str = "fp32",
                synthetic: bool = False, libraries: list[tuple[int, float]] | None = None, repeat: int = 2,
                cfg: AudioCLIPConfig | None = None, say: Callable[[str], None] = lambda msg: None) -> list[Figure]:  # fmt: skip
    """Index one library here and on the cluster at address, `repeat` times each in turn (the fastest counts), and
    on a cluster with several GPUs also with a single actor. cfg sizes the synthetic model (tests pass a tiny one)."""
    with scratch_dir() as tmp:
        folder = Path(tmp)
        model = str(synthetic_checkpoint(folder, cfg or AudioCLIPConfig())) if synthetic else weights_name
        with connect(address, device=device) as cluster:
            start = time.perf_counter()
            remote_encoder = cluster.start(None, model, precision)
            started = time.perf_counter() - start
            cuda = remote_encoder.device.type == "cuda"
            root = folder / "library"
            for i, (n, seconds) in enumerate(libraries or LIBRARIES["cuda" if cuda else "cpu"]):
                make_library(root / str(i), n, library_lengths(n, seconds))
            start = time.perf_counter()
            encoder = load_encoder(weights.resolve(model), device, ["audio"], precision=precision)
            loaded = time.perf_counter() - start
            here, there = [], []
            for i in range(repeat):
                say(f"ray: indexing here, then on the cluster at {address} ({i + 1} of {repeat})…")
                here.append(Run(_index(folder / f"here{i}.db", encoder, root, None), loaded))
                there.append(Run(_index(folder / f"there{i}.db", remote_encoder, root, cluster), started))
            actors = len(cluster.busy)
            one = None
            if cuda and actors > 1:
                say("ray: on one GPU…")
                cluster.start(None, model, precision, actors=1)
                one = _index(folder / "one.db", remote_encoder, root, cluster)
    return _figures(min(here, key=lambda r: r.report.seconds), min(there, key=lambda r: r.report.seconds), actors,
                    cuda, address, one)  # fmt: skip


def _figures(here: Run, there: Run, actors: int, cuda: bool, address: str, one: Report | None) -> list[Figure]:
    audio = here.report.audio_seconds
    on = f"--ray {address}, {actors} actor{'s' if actors != 1 else ''}"
    figures = [
        Figure("ray_here_s", f"index here, {audio / 60:.1f} min of audio", here.report.seconds, "s"),
        Figure("ray_cluster_s", f"index on the cluster ({on})", there.report.seconds, "s"),
        Figure(
            "ray_overhead", "the cluster's time over the local one", there.report.seconds / here.report.seconds - 1, "%"
        ),
        Figure("ray_start_s", "join the cluster, load the model in its actors", there.ready_s, "s"),
        Figure("ray_load_s", "load the model here", here.ready_s, "s"),
        Figure(
            "ray_overhead_with_start",
            "the same, counting the start and the load",
            (there.report.seconds + there.ready_s) / (here.report.seconds + here.ready_s) - 1,
            "%",
        ),  # fmt: skip
    ]
    if cuda:
        per_gpu = audio / there.report.seconds / actors
        figures.append(
            Figure("ray_per_gpu_all_x", f"audio hours per hour per GPU, {actors} GPUs", per_gpu, "x real time")
        )
        if one is not None:
            figures.append(
                Figure("ray_per_gpu_1_x", "audio hours per hour per GPU, 1 GPU", audio / one.seconds, "x real time")
            )
    return figures
