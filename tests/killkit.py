"""`audiofind finetune` killed at a chosen file operation: the child process SIGKILLs itself, never on a timer.

The child counts the operations that change files under its root (os.replace, os.unlink of a file that is
there, os.truncate, and the first write to a file opened there for writing or appending) and at the n-th kills
itself with SIGKILL: just "before" the operation or, for a rename, "torn": with the file about to be renamed cut
to half its length, which is what a kill in the middle of writing it leaves. A run without a kill writes down every
operation, so a test can kill a run at each of them in turn. Children fork from a server that has imported torch
and audiofind once, so each kill costs a fraction of a second.
"""

import builtins
import hashlib
import io
import json
import multiprocessing
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

import audiofind.train.finetune  # noqa: F401  (imported by the fork server, so no child pays for it)
from audiofind.cli import app
from audiofind.model.config import TINY
from audiofind.model.load import build
from audiofind.model.tokenizer import get_tokenizer

TORN = "torn"
BEFORE = "before"

# What each child would otherwise do for itself, done once in the fork server: build the tokenizer (pure Python)
# and a model on the meta device (no arithmetic, no threads), which imports much of torch lazily (~2 s).
get_tokenizer()
with torch.device("meta"):
    build(TINY)


def command(root: Path, clotho: Path) -> list[str]:
    """The seconds-long run the kills interrupt: two epochs of three steps, the best epoch kept (so one is pruned)."""
    return [
        "finetune",
        "--clotho",
        str(clotho),
        "--init",
        "tiny-init",
        "--name",
        "tuned",
        "--out",
        str(root / "run"),
        "--epochs",
        "2",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "1",
        "--crop-seconds",
        "0.3",
        "--workers",
        "0",
        "--average-top",
        "1",
        "--seed",
        "1",
        "--json",
    ]  # seed 1: epoch 2 beats epoch 1, whose snapshot goes


def ways_to_kill(operation: str) -> list[str]:
    """Every operation just before it; a rename also with its file half written (a log line is one short write)."""
    return [BEFORE, TORN] if operation.startswith("replace") else [BEFORE]


def outcome(root: Path) -> dict:
    """What a finished run leaves under root, in a form two runs can be compared by: files, weights, log, card."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    state = load_file(root / "home" / "weights" / "tuned.safetensors")
    weights = hashlib.sha256(b"".join(k.encode() + state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    records = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("clips_per_s", None)  # a timing
    card = json.loads((root / "run" / "card.json").read_text())
    for name in ("out", "resume"):  # where this run is, and how its last invocation began
        card["recipe"].pop(name)
    return {"files": files, "weights": weights, "log": records, "card": card}


def run(root: Path, clotho: Path, kill: tuple[int, str] | None = None, trace: Path | None = None) -> int | None:
    """Run `command` in a child process, killed as `kill` = (operation number, way) says; its exit code.

    AUDIOFIND_HOME is root/home; each operation is appended to `trace` as it comes, as "replace run/checkpoint.pt"
    (paths relative to root; a log line also names its record's kind: "write run/metrics.jsonl epoch").
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # the server imports torch and audiofind before it forks a child
    child = context.Process(target=_child, args=(root, clotho, kill, trace))
    child.start()
    child.join(timeout=300)
    return child.exitcode


def _child(root: Path, clotho: Path, kill: tuple[int, str] | None, trace: Path | None) -> None:
    os.environ["AUDIOFIND_HOME"] = str(root / "home")
    for name in ("AUDIOFIND_DB", "AUDIOFIND_WEIGHTS"):
        os.environ.pop(name, None)
    torch.set_num_threads(1)  # as in the test process, which resumes the run: the same arithmetic, bit for bit
    _Watch(root.resolve(), kill, trace).install()
    app(command(root, clotho))  # exits


class _Watch:
    """Counts the operations under root, writes them to the trace and kills the process at the chosen one."""

    def __init__(self, root: Path, kill: tuple[int, str] | None, trace: Path | None) -> None:
        self.root, self.kill, self.trace, self.count = root, kill, trace, 0
        self.real: dict[str, Callable[..., Any]] = {
            "open": io.open,
            "replace": os.replace,
            "unlink": os.unlink,
            "truncate": os.truncate,
        }

    def install(self) -> None:
        real = self.real

        def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            self.operation("replace", dst, torn=lambda: _halve(Path(src)))
            return real["replace"](src, dst, *args, **kwargs)

        def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
            if os.path.lexists(path):
                self.operation("unlink", path)
            return real["unlink"](path, *args, **kwargs)

        def truncate(path: Any, length: int) -> None:
            self.operation("truncate", path)
            return real["truncate"](path, length)

        def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            f = real["open"](file, mode, *args, **kwargs)
            return _Written(f, self, file) if isinstance(file, (str, Path)) and set(mode) & set("wax+") else f

        os.replace, os.unlink, os.remove, os.truncate = replace, unlink, unlink, truncate
        io.open = builtins.open = open_

    def operation(self, kind: str, path: Any, torn: Callable[[], None] | None = None, label: str = "") -> None:
        """Count an operation under root; kill the process if it is the chosen one."""
        try:
            where = Path(os.fspath(path)).resolve().relative_to(self.root)
        except ValueError:
            return  # outside root: not the run's
        self.count += 1
        if self.trace:
            with self.real["open"](self.trace, "a") as f:
                f.write(f"{kind} {where.as_posix()}{' ' + label if label else ''}\n")
        if self.kill and self.kill[0] == self.count:
            if self.kill[1] == TORN and torn:
                torn()
            os.kill(os.getpid(), signal.SIGKILL)


class _Written:
    """A file opened for writing under root: its first write is an operation."""

    def __init__(self, f: Any, watch: _Watch, path: Any) -> None:
        self.f, self.watch, self.path, self.first = f, watch, path, True

    def write(self, data: Any) -> Any:
        if self.first:
            self.first = False
            label = _record_kind(data) if str(self.path).endswith(".jsonl") and data else ""
            self.watch.operation("write", self.path, label=label)
        return self.f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)

    def __enter__(self) -> "_Written":
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def _record_kind(line: Any) -> str:
    try:
        return json.loads(line)["kind"]
    except (ValueError, KeyError, TypeError):
        return "?"


def _halve(path: Path) -> None:
    """Cut a file to half its length, as a kill part-way through writing it leaves it."""
    size = path.stat().st_size
    with io.FileIO(path, "r+") as f:
        f.truncate(size // 2)
