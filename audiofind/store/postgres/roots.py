"""Named roots and where this machine has them: the translation between the protocol's local absolute paths and
the rows' (root, path below it).

A root is named once for every machine (`HOST:/absolute/path` unless `index --root-name` chose another) and each
file is stored below it, '/'-separated. Each machine maps names to its own mount points: the `mounts` table, written
when it indexes, then the data folder's `roots.json` (`audiofind roots map NAME PATH`, for a machine that only
reads), which wins. A root that is not mounted here shows as `NAME:` and its files as `NAME:relative/path`.
Roots never nest: a folder inside a root belongs to it, and a new root around others takes their files in.
A root that moved on this machine (`roots move`: a renamed folder, a share mounted elsewhere) keeps its name, known
to every machine, and its files; only this machine's mount of it changes.
"""

import os
import socket
from dataclasses import dataclass
from pathlib import PurePath

from audiofind.errors import UsageError
from audiofind.store import rootmap
from audiofind.store.postgres.connection import Db, key
from audiofind.store.records import RootRow, norm_path
from audiofind.store.scope import check_move, not_a_root, within


def host() -> str:
    """This machine's name in the mounts table (AUDIOFIND_HOST, else the host name)."""
    return os.environ.get("AUDIOFIND_HOST") or socket.gethostname()


def check_name(name: str) -> str:
    """name, if it can name a root: not empty, one line, not looking like a path."""
    if not name.strip() or "\n" in name or name.startswith(("/", "~", "\\")) or (len(name) == 1 and name.isalpha()):
        raise UsageError(f"{name!r} cannot name a root: use a word such as 'sfx' or 'studio-a:/mnt/sfx'.")
    return name


def to_relpath(path: str, mount: str) -> str:
    """path below mount, '/'-separated ('' for the mount itself)."""
    return "" if path == mount else PurePath(os.path.relpath(path, mount)).as_posix()


@dataclass(frozen=True)
class Root:
    """One named root as this machine sees it."""

    id: int
    name: str
    mount: str | None  # where this machine has it; None when it does not
    last_indexed_at: float | None

    @property
    def label(self) -> str:
        """Its path here, or `NAME:` when it is not mounted here."""
        return self.mount if self.mount is not None else f"{self.name}:"

    def path(self, relpath: str) -> str:
        """The protocol's path of a file below it: absolute and local, or `NAME:relpath`."""
        if self.mount is None:
            return f"{self.name}:{relpath}"
        return os.path.join(self.mount, *relpath.split("/")) if relpath else self.mount


class Places:
    """The roots of one index as this machine sees them, read again whenever something unknown is asked."""

    def __init__(self, db: Db) -> None:
        self.db = db
        self.host = host()
        self.by_id: dict[int, Root] = {}
        self.reload()

    def reload(self) -> None:
        """Read the roots and this machine's mounts again."""
        mapped = rootmap.read()
        sql = (
            "SELECT r.id, r.name, m.path, r.last_indexed_at FROM roots r "
            "LEFT JOIN mounts m ON m.root_id = r.id AND m.host = %s ORDER BY r.id"
        )
        rows = self.db.execute(sql, (self.host,)).fetchall()
        self.by_id = {i: Root(i, name, mapped.get(name, mount), at) for i, name, mount, at in rows}

    def root(self, root_id: int) -> Root:
        """The root with this id."""
        if root_id not in self.by_id:
            self.reload()
        return self.by_id[root_id]

    def path(self, root_id: int, relpath: str) -> str:
        """The protocol's path of a stored file."""
        return self.root(root_id).path(relpath)

    def local(self) -> list[Root]:
        """The roots mounted here."""
        return [r for r in self.by_id.values() if r.mount is not None]

    def named(self, path: str) -> tuple[Root, str] | None:
        """(root, relpath) of a path written `NAME:relpath`, or None."""
        if os.path.isabs(path):
            return None
        for r in sorted(self.by_id.values(), key=lambda r: -len(r.name)):
            if path.startswith(f"{r.name}:"):
                return r, path[len(r.name) + 1 :]
        return None

    def locate(self, path: str, again: bool = True) -> tuple[Root, str] | None:
        """(root, relpath) of a protocol path: `NAME:relpath`, or a local path inside a root mounted here."""
        path = str(path)
        named = self.named(path)
        if named is not None:
            return named
        p = norm_path(path)
        inside = [r for r in self.local() if within(p, r.mount or "")]
        if inside:
            r = max(inside, key=lambda r: len(r.mount or ""))
            return r, to_relpath(p, r.mount or "")
        if again:
            self.reload()
            return self.locate(path, again=False)
        return None

    def prefixes(self, folder: str) -> list[tuple[int, str]]:
        """(root id, relpath prefix) of every stored place at or below folder ('' prefix: the whole root)."""
        found = self.locate(folder)
        out = [(found[0].id, found[1])] if found else []
        p = norm_path(folder)
        out += [(r.id, "") for r in self.local() if r.mount != p and within(r.mount or "", p)]
        return out

    def mount(self, folder: str, name: str | None) -> Root:
        """Map folder on this machine to the root called name (see Store.mount_root), inside the caller's
        transaction; the root."""
        path = norm_path(folder)
        self.db.execute("SELECT pg_advisory_xact_lock(%s)", (key("roots", self.db.schema),))
        self.reload()
        here = next((r for r in self.local() if r.mount == path), None)
        outer = next((r for r in self.local() if r.mount != path and within(path, r.mount or "")), None)
        if outer is not None:  # a folder inside a root is part of it
            if name is not None and name != outer.name:
                raise UsageError(
                    f"{path} is inside the root {outer.name!r} ({outer.mount}); it cannot be a root of its own."
                )
            return outer
        if name is None:
            name = here.name if here else f"{self.host}:{path}"
        name = check_name(name)
        named = next((r for r in self.by_id.values() if r.name == name), None)
        if here is not None and here.name != name:
            if named is not None:
                raise UsageError(f"{path} is the root {here.name!r} here; {name!r} is another root, mounted elsewhere.")
            self.db.execute("UPDATE roots SET name = %s WHERE id = %s", (name, here.id))
        elif here is None:
            root_id = named.id if named else self.db.value("INSERT INTO roots (name) VALUES (%s) RETURNING id", (name,))
            sql = (
                "INSERT INTO mounts (root_id, host, path) VALUES (%s, %s, %s) "
                "ON CONFLICT (root_id, host) DO UPDATE SET path = excluded.path"
            )
            self.db.execute(sql, (root_id, self.host, path))
            self._take_in(root_id, path)
        self.reload()
        return next(r for r in self.by_id.values() if r.name == name)

    def _take_in(self, root_id: int, path: str) -> None:
        """Move the files of roots mounted inside path (on this machine only) into the root at path."""
        for inner in [r for r in self.local() if r.mount != path and within(r.mount or "", path)]:
            others = self.db.value(
                "SELECT count(*) FROM mounts WHERE root_id = %s AND host <> %s", (inner.id, self.host)
            )
            if others:
                raise UsageError(
                    f"The root {inner.name!r} ({inner.mount}) inside {path} is mounted by other machines too; "
                    "index it on its own, or remove it first."
                )
            prefix = to_relpath(inner.mount or "", path)
            for table in ("files", "partial"):
                sql = (
                    f"UPDATE {table} SET root_id = %s, relpath = %s || CASE WHEN relpath = '' THEN '' "
                    "ELSE '/' || relpath END WHERE root_id = %s"
                )
                self.db.execute(sql, (root_id, prefix, inner.id))
            self.db.execute("DELETE FROM roots WHERE id = %s", (inner.id,))

    def move(self, old: str, new: str) -> Root:
        """Re-point this machine's mount of the root at old to new (both as stored), inside the caller's transaction;
        the root. Files are stored below their root, so no file row changes, and other machines keep their mounts."""
        self.db.execute("SELECT pg_advisory_xact_lock(%s)", (key("roots", self.db.schema),))
        self.reload()
        here = next((r for r in self.local() if r.mount == old), None)
        if here is None:
            raise not_a_root(old)
        check_move(old, new, [r.mount for r in self.local() if r.mount is not None and r.id != here.id])
        sql = (
            "INSERT INTO mounts (root_id, host, path) VALUES (%s, %s, %s) "
            "ON CONFLICT (root_id, host) DO UPDATE SET path = excluded.path"
        )
        self.db.execute(sql, (here.id, self.host, new))
        return here

    def forget(self, folder: str) -> None:
        """Stop mapping folder on this machine, inside the caller's transaction; its root goes once no file and no
        other machine uses it."""
        here = next((r for r in self.local() if r.mount == folder), None)
        if here is None:
            return
        self.db.execute("DELETE FROM mounts WHERE root_id = %s AND host = %s", (here.id, self.host))
        self.db.execute(
            "DELETE FROM roots r WHERE r.id = %s AND NOT EXISTS (SELECT 1 FROM files WHERE root_id = r.id) "
            "AND NOT EXISTS (SELECT 1 FROM partial WHERE root_id = r.id) "
            "AND NOT EXISTS (SELECT 1 FROM mounts WHERE root_id = r.id)",
            (here.id,),
        )

    def rows(self) -> list[RootRow]:
        """Every root as the protocol lists it (by path), with its file count and whether it is there now."""
        counts: dict[int, int] = dict(
            self.db.execute("SELECT root_id, count(*) FROM files GROUP BY root_id").fetchall()
        )
        found = [
            RootRow(r.label, r.last_indexed_at, r.name, r.mount is not None, counts.get(r.id, 0),
                    r.mount is not None and os.path.isdir(r.mount))
            for r in self.by_id.values()
        ]  # fmt: skip
        return sorted(found, key=lambda r: r.path)

    def ensure(self, folder: str) -> Root:
        """The root holding folder here, mounting folder under its default name if no root holds it yet."""
        found = self.locate(folder)
        if found is not None and found[0].mount is not None:
            return found[0]
        with self.db.transaction():
            return self.mount(folder, None)


def copy_roots(db: Db, source: str) -> None:
    """Give this schema the roots of another (by name) and every machine's mount of them: a rebuild keeps both."""
    db.execute(f"INSERT INTO roots (name) SELECT name FROM {source}.roots ON CONFLICT (name) DO NOTHING")
    db.execute(
        f"INSERT INTO mounts (root_id, host, path) SELECT s.id, m.host, m.path FROM {source}.mounts m "
        f"JOIN {source}.roots r ON r.id = m.root_id JOIN roots s ON s.name = r.name ON CONFLICT DO NOTHING"
    )
