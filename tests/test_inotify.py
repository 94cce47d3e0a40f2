"""nova_core.hostinfo.inotify against the real kernel: the events a warm helper and its
module-change check (nova_core.warm._Changes) rely on."""

from __future__ import annotations

import os
from pathlib import Path

from nova_core.hostinfo.inotify import IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_TO, Watch
from nova_core.warm import _Changes


def test_a_watch_reports_writes_renames_and_utime_by_name(tmp_path: Path) -> None:
    target = tmp_path / "module.py"
    target.write_text("x = 1\n")
    with Watch() as watch:
        watch.add(tmp_path)
        assert watch.read() == []  # nothing happened yet: no event, and no blocking
        target.write_text("x = 2\n")
        written = watch.read()
        assert any(e.name == "module.py" and e.mask & IN_CLOSE_WRITE for e in written), written
        stat = target.stat()
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
        assert any(e.name == "module.py" and e.mask & IN_ATTRIB for e in watch.read())
        (tmp_path / ".new.tmp").write_text("y")
        os.replace(tmp_path / ".new.tmp", target)
        moved = watch.read()
        assert any(e.name == "module.py" and e.mask & IN_MOVED_TO for e in moved), moved
        assert all(e.folder == str(tmp_path) for e in moved)
        target.read_text()  # reading changes nothing a helper cares about
        assert watch.read() == []


def test_changes_follow_only_the_files_the_helper_imported(tmp_path: Path) -> None:
    imported = tmp_path / "imported.py"
    other = tmp_path / "other.py"
    for file in (imported, other):
        file.write_text("pass\n")
    changes = _Changes({str(imported): imported.stat().st_mtime_ns})
    try:
        assert changes.available
        other.write_text("changed\n")  # a file it never imported, in the same folder
        (tmp_path / "__pycache__").mkdir()
        assert not changes.seen()
        stat = imported.stat()
        os.utime(imported, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
        assert changes.seen()
        assert changes.seen()  # stays seen: the helper steps down for good
    finally:
        changes.close()
    assert not changes.available
