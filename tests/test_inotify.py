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
    changes = _Changes({str(imported): imported.stat().st_mtime_ns}, {})
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


def test_changes_count_entries_added_to_a_sys_path_folder_but_not_writes(tmp_path: Path) -> None:
    """A sys.path folder (here also the folder of an imported module): a package installed
    there (a new entry) is a change; a file written there that the helper never imported is
    not (the repository's folder is on sys.path in an editable install)."""
    site = tmp_path / "site"
    site.mkdir()
    imported, notes = site / "mod.py", site / "notes.txt"
    for file in (imported, notes):
        file.write_text("pass\n")
    changes = _Changes({str(imported): imported.stat().st_mtime_ns},
                       {str(site): site.stat().st_mtime_ns, str(tmp_path / "absent"): 0})
    try:
        assert changes.available
        notes.write_text("written, not added\n")
        assert not changes.seen()
        (site / "late_plugin-1.0.dist-info").mkdir()
        assert changes.seen()
    finally:
        changes.close()
