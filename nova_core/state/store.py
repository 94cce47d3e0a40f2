"""The SQLite state store.

Standard library only (this module is on the path of ``nova ls``, which must
stay fast). WAL mode, versioned migrations (``PRAGMA user_version``), and one
transaction per step through :meth:`Store.transaction`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova_core.errors import StateError

#: Schema migrations, applied in order; the index + 1 is the schema version.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE resources (
        project    TEXT NOT NULL,
        kind       TEXT NOT NULL,
        name       TEXT NOT NULL,
        driver     TEXT NOT NULL,
        spec       TEXT NOT NULL,
        spec_hash  TEXT NOT NULL,
        state      TEXT NOT NULL,
        detail     TEXT NOT NULL DEFAULT '',
        data       TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (project, kind, name)
    );
    CREATE TABLE attachments (
        project TEXT NOT NULL,
        kind    TEXT NOT NULL,
        name    TEXT NOT NULL,
        network TEXT NOT NULL,
        info    TEXT NOT NULL,
        PRIMARY KEY (project, kind, name, network)
    );
    CREATE TABLE snapshots (
        project    TEXT NOT NULL,
        kind       TEXT NOT NULL,
        name       TEXT NOT NULL,
        snapshot   TEXT NOT NULL,
        created_at REAL NOT NULL,
        info       TEXT NOT NULL,
        PRIMARY KEY (project, kind, name, snapshot)
    );
    CREATE TABLE operations (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        project     TEXT NOT NULL,
        kind        TEXT NOT NULL,
        name        TEXT NOT NULL,
        action      TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        error       TEXT,
        started_at  REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX operations_by_resource ON operations (project, kind, name);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def default_nova_home() -> Path:
    """``$NOVA_HOME``, else /var/lib/nova for root, else ``~/.local/share/nova``."""
    env = os.environ.get("NOVA_HOME")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/nova")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "nova"


@dataclass(frozen=True)
class ResourceRow:
    """One recorded resource. ``spec`` and ``data`` are JSON text (decoded on demand)."""

    project: str
    kind: str
    name: str
    driver: str
    spec: str
    spec_hash: str
    state: str
    detail: str
    data: str
    created_at: float
    updated_at: float

    @property
    def key(self) -> str:
        """``kind.name``."""
        return f"{self.kind}.{self.name}"

    def spec_dict(self) -> dict[str, Any]:
        """The recorded spec as a dict."""
        return json.loads(self.spec)

    def data_dict(self) -> dict[str, str]:
        """The driver's recorded data."""
        return json.loads(self.data)


_ROW_COLUMNS = ", ".join(ResourceRow.__dataclass_fields__)


class Store:
    """The state database of one NOVA_HOME.

    :param nova_home: folder of ``state.db`` (made if missing, mode 0700).
    :param readonly: open without creating or migrating (``nova ls`` on a fresh host).
    """

    def __init__(self, nova_home: Path, readonly: bool = False) -> None:
        self.nova_home = Path(nova_home)
        self.path = self.nova_home / "state.db"
        self._readonly = readonly
        if readonly and not self.path.exists():
            self._conn: sqlite3.Connection | None = None
            return
        try:
            if not readonly:
                self.nova_home.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            if not readonly:
                os.chmod(self.path, 0o600)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (sqlite3.DatabaseError, OSError) as error:
            raise StateError(
                f"cannot use the state database {self.path}: {error}",
                hint="check the file and its permissions; NOVA_HOME selects another folder",
            ) from error

    def close(self) -> None:
        """Close the connection. The last connection to the database that closes folds the
        write-ahead log into it and deletes it (SQLite does this when it can without
        waiting). A connection that opens a database nobody has open reads back the whole
        log first, to rebuild its index: up to 1000 pages, about 1.3 ms here at 600 pages,
        so each ``nova`` command closes its stores when it is done (``App.store``)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _migrate(self) -> None:
        assert self._conn is not None
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"the state in {self.path} has schema version {version}, newer than this "
                f"nova-core understands ({SCHEMA_VERSION})",
                hint="upgrade nova-core",
            )
        if version == SCHEMA_VERSION:
            return
        if self._readonly:
            raise StateError(f"the state in {self.path} needs a migration; run a nova command "
                             "that changes state (e.g. nova up) first")
        with self.transaction() as conn:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            for index in range(current, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[index]):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic step: ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error)."""
        if self._conn is None:
            raise StateError("the state database is not open")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise StateError(f"the state database {self.path} is busy or unusable: {error}",
                             hint="another nova process may be holding it; try again") from error
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- resources ---------------------------------------------------------------
    def resources(self, project: str | None = None, kinds: tuple[str, ...] = ()) -> list[ResourceRow]:
        """Recorded resources, optionally of one project and some kinds."""
        if self._conn is None:
            return []
        query = f"SELECT {_ROW_COLUMNS} FROM resources"
        clauses, params = [], []
        if project is not None:
            clauses.append("project = ?")
            params.append(project)
        if kinds:
            clauses.append(f"kind IN ({', '.join('?' for _ in kinds)})")
            params.extend(kinds)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY project, kind, name"
        return [ResourceRow(*row) for row in self._conn.execute(query, params)]

    def resource(self, project: str, kind: str, name: str) -> ResourceRow | None:
        """One recorded resource, or None."""
        if self._conn is None:
            return None
        row = self._conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM resources WHERE project=? AND kind=? AND name=?",
            (project, kind, name),
        ).fetchone()
        return ResourceRow(*row) if row else None

    def projects_with(self, kind: str, name: str) -> list[str]:
        """Projects that have a resource ``kind.name``."""
        if self._conn is None:
            return []
        rows = self._conn.execute(
            "SELECT project FROM resources WHERE kind=? AND name=? ORDER BY project", (kind, name)
        )
        return [row[0] for row in rows]

    def put_resource(
        self,
        conn: sqlite3.Connection,
        project: str,
        kind: str,
        name: str,
        driver: str,
        spec: str,
        spec_hash: str,
        state: str,
        detail: str = "",
        data: dict[str, str] | None = None,
    ) -> None:
        """Insert or replace a resource row inside a transaction."""
        now = time.time()
        conn.execute(
            """INSERT INTO resources (project, kind, name, driver, spec, spec_hash, state, detail,
                                      data, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (project, kind, name) DO UPDATE SET
                 driver=excluded.driver, spec=excluded.spec, spec_hash=excluded.spec_hash,
                 state=excluded.state, detail=excluded.detail, data=excluded.data,
                 updated_at=excluded.updated_at""",
            (project, kind, name, driver, spec, spec_hash, state, detail,
             json.dumps(data or {}, sort_keys=True), now, now),
        )

    def set_state(
        self,
        conn: sqlite3.Connection,
        project: str,
        kind: str,
        name: str,
        state: str,
        detail: str = "",
        data: dict[str, str] | None = None,
    ) -> None:
        """Update a resource's observed state inside a transaction."""
        if data is None:
            conn.execute(
                "UPDATE resources SET state=?, detail=?, updated_at=? "
                "WHERE project=? AND kind=? AND name=?",
                (state, detail, time.time(), project, kind, name),
            )
        else:
            conn.execute(
                "UPDATE resources SET state=?, detail=?, data=?, updated_at=? "
                "WHERE project=? AND kind=? AND name=?",
                (state, detail, json.dumps(data, sort_keys=True), time.time(), project, kind, name),
            )

    def delete_resource(self, conn: sqlite3.Connection, project: str, kind: str, name: str) -> None:
        """Forget a resource, its attachments and snapshots, inside a transaction."""
        for table in ("resources", "attachments", "snapshots"):
            conn.execute(f"DELETE FROM {table} WHERE project=? AND kind=? AND name=?",
                         (project, kind, name))

    def instances_using_volume(self, project: str, volume: str) -> list[str]:
        """Instances (``kind.name``) whose recorded spec mounts named volume ``volume``."""
        users = []
        for row in self.resources(project, kinds=("vm", "container")):
            mounts = row.spec_dict().get("volumes", [])
            if any(m.get("type") == "volume" and m.get("source") == volume for m in mounts):
                users.append(row.key)
        return users

    # -- attachments -------------------------------------------------------------
    def attachments(self, project: str, kind: str, name: str) -> dict[str, str]:
        """Recorded network attachments of an instance: network -> JSON info."""
        if self._conn is None:
            return {}
        rows = self._conn.execute(
            "SELECT network, info FROM attachments WHERE project=? AND kind=? AND name=?",
            (project, kind, name),
        )
        return dict(rows.fetchall())

    def attached_to(self, project: str, network: str) -> list[str]:
        """Instances (``kind.name``) attached to ``network``."""
        if self._conn is None:
            return []
        rows = self._conn.execute(
            "SELECT kind, name FROM attachments WHERE project=? AND network=? ORDER BY kind, name",
            (project, network),
        )
        return [f"{kind}.{name}" for kind, name in rows]

    def put_attachment(self, conn: sqlite3.Connection, project: str, kind: str, name: str,
                       network: str, info: str) -> None:
        """Record an attachment inside a transaction."""
        conn.execute(
            "INSERT OR REPLACE INTO attachments (project, kind, name, network, info) "
            "VALUES (?, ?, ?, ?, ?)", (project, kind, name, network, info))

    def delete_attachment(self, conn: sqlite3.Connection, project: str, kind: str, name: str,
                          network: str) -> None:
        """Forget an attachment inside a transaction."""
        conn.execute("DELETE FROM attachments WHERE project=? AND kind=? AND name=? AND network=?",
                     (project, kind, name, network))

    # -- snapshots ---------------------------------------------------------------
    def put_snapshot(self, project: str, kind: str, name: str, snapshot: str, info: str) -> None:
        """Record a snapshot (its own transaction)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO snapshots (project, kind, name, snapshot, created_at, info) "
                "VALUES (?, ?, ?, ?, ?, ?)", (project, kind, name, snapshot, time.time(), info))

    def delete_snapshot(self, project: str, kind: str, name: str, snapshot: str) -> None:
        """Forget a snapshot (its own transaction)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM snapshots WHERE project=? AND kind=? AND name=? AND snapshot=?",
                         (project, kind, name, snapshot))

    def snapshots(self, project: str, kind: str, name: str) -> list[tuple[str, float, str]]:
        """Recorded snapshots of an instance: (name, created_at, info JSON)."""
        if self._conn is None:
            return []
        rows = self._conn.execute(
            "SELECT snapshot, created_at, info FROM snapshots WHERE project=? AND kind=? AND name=? "
            "ORDER BY created_at", (project, kind, name))
        return rows.fetchall()

    # -- operations log ----------------------------------------------------------
    def begin_operation(self, project: str, kind: str, name: str, action: str) -> int:
        """Log the start of a driver call (its own transaction); returns its id."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO operations (project, kind, name, action, outcome, started_at) "
                "VALUES (?, ?, ?, ?, 'running', ?)", (project, kind, name, action, time.time()))
            return int(cursor.lastrowid or 0)

    def end_operation(self, conn: sqlite3.Connection, op_id: int, outcome: str,
                      error: str | None = None) -> None:
        """Log the end of a driver call inside the transaction that records its result."""
        conn.execute("UPDATE operations SET outcome=?, error=?, finished_at=? WHERE id=?",
                     (outcome, error, time.time(), op_id))

    def operations(self, project: str) -> list[tuple[str, str, str, str, str | None]]:
        """The operations log of a project: (kind, name, action, outcome, error), oldest first."""
        if self._conn is None:
            return []
        rows = self._conn.execute(
            "SELECT kind, name, action, outcome, error FROM operations WHERE project=? ORDER BY id",
            (project,))
        return rows.fetchall()


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]
