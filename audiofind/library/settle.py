"""When a changed path is ready to index: settled, with the rest of its burst, and both ends of a move together.

A path has settled once no event came for it and its size and mtime stayed the same for `settle` seconds (a
recorder still writing changes them). A burst of changes goes to one sync once all of it has settled, but a settled
path waits for the rest of its burst at most `burst_wait` seconds. The old and the new path of a move always go
together: synced alone, the old path's row would be removed and the new file embedded again.

A failure is reported only once the file has stayed as it was when read for `settle` seconds: a file that fails
while a recorder is still writing it is tried again instead. Time comes from the caller (`now`), so tests drive it.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

from audiofind.library.sync import Event
from audiofind.library.walk import signature

Signature = tuple[int, int] | None  # (size, mtime_ns); None when the path does not exist


@dataclass
class Changed:
    """A path waiting to settle: when it last changed, and its size and mtime then."""

    since: float
    sig: Signature


@dataclass
class Held:
    """A failure waiting for its file to stay as it was when read."""

    event: Event
    sig: Signature
    since: float


@dataclass
class Settler:
    """The changed paths of a watch, and the failures it holds back, until they are ready."""

    settle: float
    burst_wait: float
    pending: dict[str, Changed] = field(default_factory=dict)
    moves: dict[str, set[str]] = field(default_factory=dict)  # the other end of each pending move
    held: dict[str, Held] = field(default_factory=dict)

    def changed(self, path: str, now: float, sig: Signature | None = None) -> None:
        """A change was seen at path: it waits `settle` seconds from now (its signature taken now unless given)."""
        self.pending[path] = Changed(now, signature(path) if sig is None else sig)

    def moved(self, old: str, new: str) -> None:
        """old and new are the two ends of one move: they go to the same sync."""
        self.moves.setdefault(old, set()).add(new)
        self.moves.setdefault(new, set()).add(old)

    def forget(self, path: str) -> None:
        """Stop waiting for path (synced, or under a root that went away)."""
        self.pending.pop(path, None)
        for other in self.moves.pop(path, set()):
            self.moves.get(other, set()).discard(path)
            if not self.moves.get(other):
                self.moves.pop(other, None)

    def ready(self, now: float) -> set[str]:
        """The paths to sync now, together (empty while the burst is still settling); each one's clock restarts if
        its size or mtime changed since it was last looked at."""
        for path, entry in self.pending.items():
            sig = signature(path)
            if sig != entry.sig:
                entry.sig, entry.since = sig, now
        ready = {p for p, e in self.pending.items() if now - e.since >= self.settle}
        changed = True
        while changed:  # both ends of a move go together, or neither does
            changed = False
            for p in list(ready):
                if any(o in self.pending and o not in ready for o in self.moves.get(p, ())):
                    ready.discard(p)
                    changed = True
        if not ready:
            return set()
        oldest = min(self.pending[p].since for p in ready)
        if len(ready) < len(self.pending) and now - oldest < self.settle + self.burst_wait:
            return set()
        return ready

    def hold(self, event: Event, now: float) -> None:
        """Hold back a failure until its file has stayed as it was for `settle` seconds."""
        self.held[event.path] = Held(event, signature(event.path), now)

    def release(self, path: str) -> None:
        """Drop a held failure: the file was indexed (or removed, or moved) after all."""
        self.held.pop(path, None)

    def settled_failures(self, now: float, final: bool = False) -> list[Event]:
        """The held failures whose file stayed unchanged for `settle` (all of them when final); a file that changed
        meanwhile becomes pending again instead of being reported."""
        out = []
        for path, held in list(self.held.items()):
            sig = signature(path)
            if path in self.pending or sig != held.sig:
                self.pending.setdefault(path, Changed(now, sig))
            elif not final and now - held.since < self.settle:
                continue
            else:
                out.append(held.event)
            del self.held[path]
        return out

    def again(self, paths: Iterable[str], now: float) -> None:
        """Paths sync gave back (they changed while being read): they wait to settle again, from now."""
        for path in sorted(paths):
            self.changed(path, now)
