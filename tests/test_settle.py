"""Watch's settling on its own: when changed paths are ready, driven with a fake clock through public methods."""

import os
from pathlib import Path

from audiofind.library.settle import Settler
from audiofind.library.sync import Event

S, BURST = 1.0, 10.0


def touch(path: Path, size: int = 10) -> str:
    path.write_bytes(b"x" * size)
    return str(path)


def test_a_path_is_ready_once_quiet_and_unchanged_for_settle(tmp_path: Path) -> None:
    a = touch(tmp_path / "a.wav")
    s = Settler(S, BURST)
    s.changed(a, 0.0)
    assert s.ready(S - 0.01) == set()
    touch(tmp_path / "a.wav", 20)  # grew meanwhile, with no event: its clock restarts when looked at
    assert s.ready(S + 0.01) == set()
    assert s.ready(2 * S + 0.02) == {a}


def test_a_burst_waits_for_its_last_path_but_not_forever(tmp_path: Path) -> None:
    a, b = touch(tmp_path / "a.wav"), touch(tmp_path / "b.wav")
    s = Settler(S, BURST)
    s.changed(a, 0.0)
    s.changed(b, 0.5)
    assert s.ready(S + 0.1) == set()  # a waits for b
    assert s.ready(S + 0.5) == {a, b}
    s.forget(a)
    s.forget(b)
    s.changed(a, 20.0)
    for t in range(21, 21 + int(S + BURST)):
        s.changed(b, float(t))  # b never settles
    assert s.ready(20 + S + BURST) == {a}  # a goes alone once it has waited S + BURST


def test_a_move_end_is_held_back_while_the_other_changes(tmp_path: Path) -> None:
    old, new = str(tmp_path / "old.wav"), touch(tmp_path / "new.wav")
    s = Settler(S, BURST)
    s.changed(old, 0.0)
    s.changed(new, 0.0)
    s.moved(old, new)
    t = 0.5
    while t < S + BURST + 2:
        s.changed(new, t)
        assert s.ready(t) == set(), t  # old settled long ago, but never goes without new
        t += 0.5
    assert s.ready(t + S) == {old, new}
    s.forget(new)
    assert s.moves == {}  # forgetting one end forgets the pairing


def test_failures_wait_for_their_file_to_stay_as_read(tmp_path: Path) -> None:
    f = touch(tmp_path / "rec.wav")
    s = Settler(S, BURST)
    s.hold(Event("failed", f, reason="truncated"), 0.0)
    assert s.settled_failures(S / 2) == []
    touch(tmp_path / "rec.wav", 99)  # the recorder goes on: not reported, tried again instead
    assert s.settled_failures(S + 0.1) == [] and f in s.pending
    s.forget(f)
    s.hold(Event("failed", f, reason="truncated"), 5.0)
    assert [e.path for e in s.settled_failures(5.0 + S)] == [f] and not s.held
    s.hold(Event("failed", f, reason="truncated"), 9.0)
    assert [e.path for e in s.settled_failures(9.0, final=True)] == [f]  # watch stopping reports what it holds
    os.remove(f)
