"""`index --ray` and `watch --ray` on the session's local Ray cluster (tests/conftest.py): the same index as a local
run, from bytes the driver sends, through dead workers and actors and a killed driver; one line when no cluster."""

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import audiogen
import numpy as np
import pytest
from indexkit import check_consistent, counting, snapshot
from librarykit import make_library
from modelkit import register_tiny
from typer.testing import CliRunner

from audiofind.cli import app
from audiofind.library import cluster as cluster_module
from audiofind.library.cluster import ClusterError, connect
from audiofind.library.sync import load_checked, prepare, sync
from audiofind.store.sqlite.store import SqliteStore

ROOT = Path(__file__).parent.parent
runner = CliRunner()


def library(root: Path) -> Path:
    """test_index's library (formats, channels, broken files), a copy, and a recording long enough to be committed a
    chunk at a time (13 windows of 10 s every 5 s: a chunk of 12, then the file)."""
    make_library(root)
    (root / "long").mkdir()
    audiogen.write_int16_wav(root / "long" / "take 1.wav", (audiogen.noise(65.0, seed=7) * 9000).astype(np.int16))
    (root / "copies").mkdir()
    (root / "copies" / "kick again.wav").write_bytes((root / "drums" / "kick.wav").read_bytes())
    return root


def index(root: Path, db: Path, *extra: str, code: int = 0) -> tuple[dict, list[str]]:
    """`audiofind index ROOT --json` in this process: the report and the failure lines on stderr."""
    result = runner.invoke(app, ["index", str(root), "--db", str(db), "-w", "tiny", "--json", *extra])
    assert result.exit_code == code, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report, sorted(line for line in result.stderr.splitlines() if line.startswith("failed"))


def status(db: Path) -> dict:
    result = runner.invoke(app, ["status", "--db", str(db), "--json"])
    data = json.loads(result.stdout)
    return {k: v for k, v in data.items() if k not in ("path", "size_bytes", "last_update")}


@dataclass(frozen=True)
class Indexed:
    """The module's library, under a folder the cluster's workers cannot read, and its index made by a local run."""

    root: Path
    db: Path
    report: dict
    failures: list[str]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Indexed]:
    tmp = tmp_path_factory.mktemp("cluster")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDIOFIND_HOME", str(tmp / "home"))  # tests register the same tiny model in their own
        register_tiny()
        root = library(tmp / "workers-cannot-read" / "Sounds")  # see tests/raysite/sitecustomize.py
        report, failures = index(root, tmp / "local.db")
        yield Indexed(root, tmp / "local.db", report, failures)


@pytest.fixture(autouse=True)
def tiny() -> str:
    return register_tiny()


def test_a_ray_run_gives_the_index_a_local_run_gives(ray_cluster: str, indexed: Indexed, tmp_path: Path) -> None:
    ray = tmp_path / "ray.db"
    report, failures = index(indexed.root, ray, "--ray", "local")
    assert indexed.report["failed"] == 3 and indexed.report["reused"] == 1 and indexed.report["segments"] > 13
    assert {**report, "seconds": 0} == {**indexed.report, "seconds": 0}  # the same counts, audio, device and model
    assert failures == indexed.failures  # the same reasons, in the same words
    assert snapshot(ray) == snapshot(indexed.db)  # bit for bit: vectors, segments, failures, roots, nothing partial
    assert status(ray) == status(indexed.db)
    check_consistent(ray)
    like = str(indexed.root / "long" / "take 1.wav")
    searches = [
        runner.invoke(app, ["search", "--like", like, "--db", str(db), "--json"]).stdout for db in (indexed.db, ray)
    ]
    assert searches[0] == searches[1] and json.loads(searches[0])[0]["path"] == like


def test_workers_read_no_library_path_unless_told_to(ray_cluster: str, indexed: Indexed, tmp_path: Path) -> None:
    # The run above read the library through its bytes alone: its workers cannot open a path of it. Told to read
    # the files themselves, the same workers fail every file.
    report, failures = index(indexed.root, tmp_path / "shared.db", "--ray", "local", "--ray-shared-paths")
    assert report["embedded"] == 0 and report["failed"] == report["seen"] - report["reused"]
    assert any(line.endswith(": cannot read the file: Permission denied") for line in failures)


class Committing:
    """A store that counts what is committed: each file's add_file or record_failure, each chunk's add_segments."""

    def __init__(self, store: SqliteStore) -> None:
        self.store, self.files, self.chunks = store, Counter[str](), Counter[tuple[str, float]]()

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def add_file(self, row, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.files[row.path] += 1
        return self.store.add_file(row, *args, **kwargs)

    def record_failure(self, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.files[str(path)] += 1
        return self.store.record_failure(path, *args, **kwargs)

    def add_segments(self, hash, path, audio, segments, vectors):  # type: ignore[no-untyped-def]
        self.chunks[(path, segments[0][0])] += 1
        return self.store.add_segments(hash, path, audio, segments, vectors)


def test_a_dead_actor_and_a_dead_decoding_worker_lose_nothing_and_commit_nothing_twice(
    ray_cluster: str, indexed: Indexed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    actor, decoder = tmp_path / "actor died", tmp_path / "decoder died"
    # The actor dies in its 3rd batch, a decoding worker before its 1st piece: each once (the marker says so).
    monkeypatch.setenv("AUDIOFIND_RAY_FAULT", f"actor:3:{actor};decode:1:{decoder}")
    with connect("local") as cluster, SqliteStore.open(tmp_path / "ray.db") as store:
        encoder = cluster.start(None, "tiny", None)
        assert encoder.audio is None  # the driver holds no model: every window is embedded by an actor
        committing = Committing(store)
        prepare(store, encoder)
        events = []
        report = sync(committing, encoder, [indexed.root], cluster=cluster, on_event=events.append)  # type: ignore[arg-type]
    assert actor.exists() and decoder.exists()  # both died
    assert (report.embedded, report.failed, report.reused) == (7, 3, 1)
    assert set(committing.files.values()) == {1} and len(committing.files) == 11
    assert list(committing.chunks.values()) == [1]  # take 1: its first 12 windows, once, then the file
    assert all(n == 1 for n in Counter(e.path for e in events).values())
    assert snapshot(tmp_path / "ray.db") == snapshot(indexed.db)


def test_a_long_recording_begun_by_an_interrupted_run_is_finished_on_the_cluster(
    ray_cluster: str, tmp_path: Path
) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    audiogen.write_audio(root / "long.flac", audiogen.chirp(100, 3000, 73.0))  # 14 windows
    audiogen.write_audio(root / "short.wav", audiogen.sine(440, 1.0))
    local, ray = tmp_path / "local.db", tmp_path / "ray.db"
    index(root, local)
    with SqliteStore.open(ray) as store:  # its 14th window raises: the first chunk (12) is committed, not the 13th
        encoder = load_checked(ray, "tiny", "cpu")
        prepare(store, encoder)
        with pytest.raises(KeyboardInterrupt):
            sync(store, counting(encoder, fail_at=15), [root])  # short.wav is the first call
    with SqliteStore.open(ray) as store, connect("local") as cluster:
        (partial,) = [h for h, _ in snapshot(ray)["partial"]]
        assert store.partial_segments(partial) == 12
        encoder = cluster.start(store.model(), None, None)
        report = sync(store, encoder, [root], cluster=cluster)
    assert (report.embedded, report.skipped, report.segments) == (1, 1, 14)
    assert snapshot(ray) == snapshot(local)


def test_an_unreachable_cluster_is_one_line_and_exit_1_and_the_index_untouched(
    ray_cluster: str, tmp_path: Path
) -> None:
    (tmp_path / "lib").mkdir()
    audiogen.write_audio(tmp_path / "lib" / "a.wav", audiogen.sine(440, 0.5))
    db = tmp_path / "i.db"
    started = time.monotonic()
    command = [
        sys.executable,
        "-m",
        "audiofind",
        "index",
        str(tmp_path / "lib"),
        "--db",
        str(db),
        "-w",
        "tiny",
        "--ray",
        "127.0.0.1:1",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert done.returncode == 1 and not done.stdout
    assert done.stderr == "error: Cannot reach the Ray cluster at 127.0.0.1:1: Connection refused.\n"
    assert time.monotonic() - started < 60 and not db.exists()


def test_a_cluster_without_room_for_an_actor_is_one_line_and_exit_1(ray_cluster: str, tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    audiogen.write_audio(tmp_path / "lib" / "a.wav", audiogen.sine(440, 0.5))
    db = tmp_path / "i.db"
    result = runner.invoke(
        app, ["index", str(tmp_path / "lib"), "--db", str(db), "-w", "tiny", "--ray", "local", "--device", "cuda"]
    )
    assert result.exit_code == 1 and not db.exists()
    assert (
        result.stderr
        == "error: The Ray cluster at local has no GPU: no room for an embedding actor on --device cuda.\n"
    )


def test_a_sigkilled_driver_leaves_an_index_the_next_run_finishes(
    ray_cluster: str, indexed: Indexed, tmp_path: Path
) -> None:
    db, marker = tmp_path / "i.db", tmp_path / "driver killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AUDIOFIND_RAY_FAULT": f"driver:5:{marker}"}
    command = [
        sys.executable,
        "-m",
        "audiofind",
        "index",
        str(indexed.root),
        "--db",
        str(db),
        "-w",
        "tiny",
        "--ray",
        ray_cluster,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert done.returncode == -9 and marker.exists(), done.stderr  # killed once its 5th file was committed
    check_consistent(db)
    with SqliteStore.open(db) as store:
        assert 5 <= len(store.files_under([indexed.root])) < 11
    report, _ = index(indexed.root, db)  # without --ray: the same resume
    assert report["embedded"] + report["failed"] + report["reused"] < 11 and report["skipped"] >= 5
    assert snapshot(db) == snapshot(indexed.db)


def test_watch_syncs_through_the_cluster(ray_cluster: str, tmp_path: Path) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    audiogen.write_audio(root / "first.wav", audiogen.sine(300, 0.5))
    command = [sys.executable, "-m", "audiofind", "watch", str(root), "--db", str(tmp_path / "i.db"), "-w", "tiny",
               "--json", "--settle", "0.2", "--ray", ray_cluster]  # fmt: skip
    # A decoding worker dies in the first sync: Ray's word of it goes to stderr, never among the JSON lines.
    fault = f"decode:1:{tmp_path / 'decoder died'}"
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "AUDIOFIND_RAY_FAULT": fault})  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        first = json.loads(lines.get(timeout=120))
        assert (first["event"], first["path"]) == ("embedded", str(root / "first.wav"))
        audiogen.write_audio(root / "second.wav", audiogen.sine(600, 0.5))
        second = json.loads(lines.get(timeout=120))
        assert (second["event"], second["path"]) == ("embedded", str(root / "second.wav"))
    finally:
        time.sleep(1.0)  # time for anything else Ray would print
        proc.terminate()
        err = proc.stderr.read()  # type: ignore[union-attr]
        proc.wait(timeout=60)
    assert proc.returncode == 0 and err.splitlines()[-1] == "stopped", err
    assert (tmp_path / "decoder died").exists() and "A worker died" in err and lines.empty()


class FakeRay:
    """What _plan asks of Ray, for a cluster this machine does not have."""

    def __init__(self, resources: dict, nodes: list[dict]) -> None:
        self.resources, self.node_list = resources, nodes

    def cluster_resources(self) -> dict:
        return self.resources

    def nodes(self) -> list[dict]:
        return self.node_list


def node(name: str, cpus: int, gpus: int = 0, alive: bool = True) -> dict:
    return {"NodeID": name * 56, "Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


def test_an_actor_per_gpu_or_else_per_node_with_its_cores(ray_cluster: str) -> None:
    nodes = [node("1", 16, 2), node("2", 8, 1), node("3", 32)]  # node ids are hex
    plan = cluster_module.Cluster(FakeRay({"CPU": 56, "GPU": 3}, nodes), "x", False, "auto", False)._plan()
    assert plan.device == "cuda" and plan.actors == [({"num_gpus": 1, "num_cpus": 1}, 0)] * 3 and plan.decoders == 53
    plan = cluster_module.Cluster(FakeRay({"CPU": 56, "GPU": 3}, nodes), "x", False, "cpu", False)._plan()
    assert plan.device == "cpu" and [(o["num_cpus"], t) for o, t in plan.actors] == [(15, 16), (7, 8), (31, 32)]
    assert plan.decoders == 3  # a core a node
    plan = cluster_module.Cluster(
        FakeRay({"CPU": 3}, [node("4", 1), node("5", 2), node("6", 4, alive=False)]), "x", False, "auto", False
    )._plan()
    assert [(o["num_cpus"], t) for o, t in plan.actors] == [(0, 1), (1, 2)] and plan.decoders == 2
    with pytest.raises(ClusterError, match="no GPU"):
        cluster_module.Cluster(FakeRay({"CPU": 4}, [node("7", 4)]), "x", False, "cuda", False)._plan()


RAY_FREE = """
import sys
from typer.testing import CliRunner
from audiofind.cli import app
for args in (["--help"], ["index", "--help"], ["watch", "--help"], ["index", sys.argv[1], "--db", sys.argv[2], "-w", "tiny"]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
"""


def test_ray_is_imported_only_with_ray(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    audiogen.write_audio(tmp_path / "lib" / "a.wav", audiogen.sine(440, 0.5))
    done = subprocess.run([sys.executable, "-c", RAY_FREE, str(tmp_path / "lib"), str(tmp_path / "i.db")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_bench_compares_a_local_run_with_a_cluster_run(ray_cluster: str) -> None:
    from audiofind.bench.cluster import ray_figures
    from audiofind.model.config import TINY

    figures = {f.key: f for f in ray_figures(None, "local", synthetic=True, cfg=TINY, libraries=[(3, 4.0)], repeat=1)}
    assert set(figures) == {
        "ray_here_s",
        "ray_cluster_s",
        "ray_overhead",
        "ray_start_s",
        "ray_load_s",
        "ray_overhead_with_start",
    }
    assert figures["ray_cluster_s"].label == "index on the cluster (--ray local, 1 actor)"
    assert figures["ray_overhead"].value == figures["ray_cluster_s"].value / figures["ray_here_s"].value - 1


def test_a_window_or_a_file_said_twice_is_committed_once(tmp_path: Path) -> None:
    """What a cluster tells the pipeline may come twice (a retried task): each window and each file counts once."""
    from audiofind.audio import decode
    from audiofind.library.decoding import Work
    from audiofind.library.pipeline import Pipeline

    path = audiogen.write_audio(tmp_path / "long.wav", audiogen.sine(440, 70.0))
    st = path.stat()
    work = Work(str(path), str(tmp_path), st.st_size, st.st_mtime_ns, hash="h" * 64)
    done: list = []
    with SqliteStore.open(tmp_path / "i.db") as store:
        encoder = load_checked(tmp_path / "i.db", "tiny", "cpu")
        prepare(store, encoder)
        committing = Committing(store)
        pipeline = Pipeline(committing, encoder, lambda *args: done.append(args))  # type: ignore[arg-type]
        windows = list(decode.iter_windows(path))
        vectors = encoder.embed_audio([w.samples for w in windows])
        for _ in range(2):  # every message twice, and the first windows a third time after the first chunk
            pipeline.start(work, decode.probe(path), 0)
            for k, (w, v) in enumerate(zip(windows, vectors)):
                pipeline.take_window(work, w, v, k)
                pipeline.take_window(work, w, v, k)
                if k == 12:
                    pipeline.take_window(work, windows[0], vectors[0], 0)
            pipeline.end(work)
        assert committing.files == {str(path): 1} and list(committing.chunks.values()) == [1]
        assert [d[0] for d in done] == ["embedded"] and done[0][2] == len(windows) == 13
        assert len(store.segment_vectors(work.hash)[0]) == 13
        # A window that never comes fails its file rather than leave a hole in it.
        copy = tmp_path / "copy.wav"
        copy.write_bytes(path.read_bytes())
        other = Work(str(copy), str(tmp_path), copy.stat().st_size, copy.stat().st_mtime_ns, hash="g" * 64)
        pipeline.start(other, decode.probe(path), 0)
        pipeline.take_window(other, windows[0], vectors[0], 0)
        pipeline.take_window(other, windows[2], vectors[2], 2)
        assert done[1][0] == "failed" and done[1][4] == "window 2 of the file was lost before window 3"
        assert other.path not in committing.files and not store.partial_segments(other.hash)


def test_a_sync_stopped_on_the_cluster_leaves_the_rest_to_the_next(
    ray_cluster: str, indexed: Indexed, tmp_path: Path
) -> None:
    """watch's Ctrl-C or SIGTERM in the middle of a sync: decoding tasks are cancelled, the actors stay for the next."""
    stop = threading.Event()
    with connect("local") as cluster, SqliteStore.open(tmp_path / "ray.db") as store:
        encoder = cluster.start(None, "tiny", None)
        prepare(store, encoder)
        first = sync(store, encoder, [indexed.root], cluster=cluster, stop=stop, on_event=lambda e: stop.set())
        assert first.stopped and 1 <= first.embedded + first.failed + first.reused < 11
        assert not any(cluster.busy.values())  # what the stopped run sent is not counted against the next
        again = sync(store, encoder, [indexed.root], cluster=cluster)
    assert again.skipped == first.embedded + first.failed + first.reused and not again.stopped
    assert snapshot(tmp_path / "ray.db") == snapshot(indexed.db)
