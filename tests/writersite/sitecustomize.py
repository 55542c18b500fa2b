"""Started in the `audiofind index` processes of tests/test_writers.py (which put this folder on their PYTHONPATH):
hooks that let a test count what a writer asks of the model, meet another writer, and die mid-file, all at chosen
points of the code, never by timing.

AUDIOFIND_TEST_WINDOWS=FILE      one line per model call of the indexer: how many windows it embedded
AUDIOFIND_TEST_BARRIER=DIR:N     before embedding anything, wait until N writers have come this far
AUDIOFIND_TEST_CHUNK_SECONDS=S   a long file commits its windows about S seconds at a time (not a minute)
AUDIOFIND_TEST_KILL_AT_CHUNK=N   SIGKILL this process as soon as the N-th chunk of a long file is committed
"""

import os
import signal
import time
from pathlib import Path

_WANTED = ("AUDIOFIND_TEST_WINDOWS", "AUDIOFIND_TEST_BARRIER", "AUDIOFIND_TEST_CHUNK_SECONDS",
           "AUDIOFIND_TEST_KILL_AT_CHUNK")  # fmt: skip


def _install() -> None:
    from audiofind.library import pipeline, sync

    windows = os.environ.get("AUDIOFIND_TEST_WINDOWS")
    if windows:
        embed_windows = pipeline.embed_windows

        def counted(encoder, clips):  # type: ignore[no-untyped-def]
            with open(windows, "a") as f:
                f.write(f"{len(clips)}\n")
            return embed_windows(encoder, clips)

        pipeline.embed_windows = counted
    barrier = os.environ.get("AUDIOFIND_TEST_BARRIER")
    if barrier:
        folder, n = barrier.rsplit(":", 1)
        embed = sync.embed

        def met(*args, **kwargs):  # type: ignore[no-untyped-def]
            Path(folder, str(os.getpid())).touch()
            deadline = time.monotonic() + 120
            while len(os.listdir(folder)) < int(n):
                if time.monotonic() > deadline:
                    raise RuntimeError("the other writers never came")
                time.sleep(0.01)
            return embed(*args, **kwargs)

        sync.embed = met
    if os.environ.get("AUDIOFIND_TEST_CHUNK_SECONDS"):
        pipeline.CHUNK_SECONDS = float(os.environ["AUDIOFIND_TEST_CHUNK_SECONDS"])
    kill_at = int(os.environ.get("AUDIOFIND_TEST_KILL_AT_CHUNK") or 0)
    if kill_at:
        commit_chunk = pipeline.Pipeline._commit_chunk
        chunks = []

        def then_die(self, pending, n):  # type: ignore[no-untyped-def]
            commit_chunk(self, pending, n)
            chunks.append(n)
            if len(chunks) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        pipeline.Pipeline._commit_chunk = then_die


if any(os.environ.get(name) for name in _WANTED):
    _install()
