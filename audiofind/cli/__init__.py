"""The audiofind command line: parse, call the library, print."""

# Each module registers its commands on `app` when imported.
from audiofind.cli import bench as _bench  # noqa: F401
from audiofind.cli import data as _data  # noqa: F401
from audiofind.cli import db as _db  # noqa: F401
from audiofind.cli import duplicates as _duplicates  # noqa: F401
from audiofind.cli import embed as _embed  # noqa: F401
from audiofind.cli import export as _export  # noqa: F401
from audiofind.cli import finetune as _finetune  # noqa: F401
from audiofind.cli import index as _index  # noqa: F401
from audiofind.cli import roots as _roots  # noqa: F401
from audiofind.cli import search as _search  # noqa: F401
from audiofind.cli import serve as _serve  # noqa: F401
from audiofind.cli import watch as _watch  # noqa: F401
from audiofind.cli import weights as _weights  # noqa: F401
from audiofind.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
