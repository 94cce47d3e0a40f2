"""The SQLite store: migrations, WAL, transactions, the project lock."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from nova_core.errors import StateError
from nova_core.state.lock import project_lock
from nova_core.state.store import SCHEMA_VERSION, Store


def test_new_store_is_migrated_in_wal_mode(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"resources", "attachments", "snapshots", "operations"} <= tables
    assert (store.path.stat().st_mode & 0o777) == 0o600
    store.close()
    Store(tmp_path / "home").close()  # opening again migrates nothing and works


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path).close()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="newer than this nova-core understands"):
        Store(tmp_path)


def test_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="cannot use the state database"):
        Store(tmp_path)


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(RuntimeError), store.transaction() as conn:
        store.put_resource(conn, "p", "vm", "a", "fake", "{}", "h", "creating")
        raise RuntimeError("driver died")
    assert store.resources("p") == []
    with store.transaction() as conn:
        store.put_resource(conn, "p", "vm", "a", "fake", "{}", "h", "creating")
    assert [r.state for r in store.resources("p")] == ["creating"]


def test_readonly_store_on_a_fresh_home_creates_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "absent", readonly=True)
    assert store.resources() == [] and not (tmp_path / "absent").exists()


def test_lock_waits_and_says_so(tmp_path: Path) -> None:
    said: list[str] = []
    order: list[str] = []
    with project_lock(tmp_path, "p"):
        def other() -> None:
            with project_lock(tmp_path, "p", say=said.append):
                order.append("second")
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.3)
        order.append("first")
    thread.join(5)
    assert order == ["first", "second"]
    assert said and "waiting for another nova process" in said[0]


def test_lock_names_its_holder_over_a_longer_earlier_record(tmp_path: Path) -> None:
    """The holder's pid is written over the last one without truncating the file: a
    longer leftover record must not show through in a waiting process's message."""
    import os

    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "p.lock").write_text("9999999999")
    said: list[str] = []
    with project_lock(tmp_path, "p"):
        thread = threading.Thread(
            target=lambda: project_lock(tmp_path, "p", say=said.append).__enter__())
        thread.start()
        time.sleep(0.3)
    thread.join(5)
    assert said and f"(pid {os.getpid()})" in said[0]


def test_lock_gives_up_after_the_timeout(tmp_path: Path) -> None:
    import fcntl
    import os

    (tmp_path / "locks").mkdir()
    fd = os.open(tmp_path / "locks" / "p.lock", os.O_RDWR | os.O_CREAT)
    pid = os.fork()
    if pid == 0:  # a child holds the lock like another nova process would
        fcntl.flock(fd, fcntl.LOCK_EX)
        time.sleep(3)
        os._exit(0)
    try:
        time.sleep(0.3)
        with pytest.raises(StateError, match="still locked"), project_lock(
                tmp_path, "p", timeout=0.3, say=lambda _: None):
            pass
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
