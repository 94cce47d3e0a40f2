"""nova_core.files.replace_file on a real filesystem."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nova_core.files import replace_file


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_file_is_replaced_whole_and_no_temporary_file_stays(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    path.write_text("old")
    replace_file(path, '{"new": 1}')
    assert path.read_text() == '{"new": 1}'
    replace_file(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_a_mode_holds_from_the_first_byte_also_over_a_leftover(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "host.key"
    leftover = tmp_path / ".host.key.tmp"  # a crash left one, readable by all
    leftover.write_text("stale")
    leftover.chmod(0o644)
    modes: list[int] = []
    real_fdopen = os.fdopen

    def watched_fdopen(fd: int, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        handle = real_fdopen(fd, *args, **kwargs)
        write = handle.write

        def spy(data: bytes) -> int:
            modes.append(_mode(leftover))  # what others could read while the key goes in
            return write(data)

        handle.write = spy
        return handle

    monkeypatch.setattr(os, "fdopen", watched_fdopen)
    old_umask = os.umask(0)
    try:
        replace_file(path, b"PRIVATE", mode=0o600)
    finally:
        os.umask(old_umask)
    assert modes == [0o600]
    assert _mode(path) == 0o600 and path.read_bytes() == b"PRIVATE"
    replace_file(path, b"script", mode=0o755)
    assert _mode(path) == 0o755


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    path = tmp_path / "index.json"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):  # raised once the temporary file is open
        replace_file(path, '{"x": "\udc80"}')
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]
    busy = tmp_path / "busy"  # a folder with something in it cannot be replaced by a file
    (busy / "inside").mkdir(parents=True)
    with pytest.raises(OSError):
        replace_file(busy, "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "index.json"]


def test_the_temporary_file_can_live_outside_a_watched_folder(tmp_path: Path) -> None:
    watched = tmp_path / "hosts"
    watched.mkdir()
    replace_file(watched / "peer.beta", "10.0.0.2 beta\n", mode=0o644,
                 tmp=tmp_path / ".peer.beta.tmp")
    assert (watched / "peer.beta").read_text() == "10.0.0.2 beta\n"
    assert [p.name for p in watched.iterdir()] == ["peer.beta"]
    assert not (tmp_path / ".peer.beta.tmp").exists()
