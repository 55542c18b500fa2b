"""Started in every process of the tests' Ray cluster (tests/conftest.py puts this folder on their PYTHONPATH):
files under a folder named `workers-cannot-read` cannot be opened there, as on a node that does not mount the
library. Python's own opens are refused by an audit hook, FFmpeg's (PyAV opens paths in C) by a wrapped av.open."""

import os
import sys

HIDDEN = f"{os.sep}workers-cannot-read{os.sep}"


def _hidden(path: object) -> bool:
    return isinstance(path, str | bytes | os.PathLike) and HIDDEN in os.fsdecode(path)


def _refuse(path: object) -> None:
    raise PermissionError(13, "Permission denied", os.fsdecode(path))  # type: ignore[arg-type]


def _audit(event: str, args: tuple) -> None:
    if event == "open" and args and _hidden(args[0]):
        _refuse(args[0])


sys.addaudithook(_audit)

try:
    import av
except ImportError:  # a process that never decodes
    pass
else:
    _open = av.open

    def _guarded_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if _hidden(file):
            _refuse(file)
        return _open(file, *args, **kwargs)

    av.open = _guarded_open
