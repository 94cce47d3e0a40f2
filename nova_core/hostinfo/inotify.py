"""Linux inotify through libc (ctypes): know that files changed without looking at them.

Used where a question would otherwise be asked by looking at many files: whether any
of the files a warm helper imported changed since (:mod:`nova_core.warm`). A
:class:`Watch` is a non-blocking inotify descriptor; its events are read in batches and
parsed here. (Not for waiting on a file that is about to appear while another program
works: on this machine a process that sleeps until then slowed crun's create by 11 ms;
see ``launch_attached`` in nova-capsule.)
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: every change to a file's content, metadata or name, and to the folder itself
CHANGES = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
           | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)
#: a folder's entries added, removed or renamed (what changes the folder's own mtime)
ENTRIES = IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)


@dataclass(frozen=True)
class Event:
    """One inotify event: the folder it was watched as, the entry's name ("" for the
    folder itself) and the mask."""

    folder: str
    name: str
    mask: int


class Watch:
    """A non-blocking inotify descriptor watching folders (closed with :meth:`close`).

    Raises OSError where inotify cannot be had (no libc symbol, the per-user limit
    reached): callers fall back to looking.
    """

    def __init__(self) -> None:
        try:
            self._libc = ctypes.CDLL(None, use_errno=True)
            init = self._libc.inotify_init1
        except (OSError, AttributeError) as error:
            raise OSError(f"no inotify here: {error}") from None
        fd = init(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number))
        self.fd: int = fd
        self._folders: dict[int, str] = {}

    def fileno(self) -> int:
        return self.fd

    def add(self, folder: str | Path, mask: int = CHANGES) -> None:
        """Watch ``folder`` for ``mask`` (its entries' changes and its own)."""
        path = os.fsencode(str(folder))
        wd = self._libc.inotify_add_watch(self.fd, path, mask | IN_ONLYDIR)
        if wd < 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number), str(folder))
        self._folders[wd] = str(folder)

    def add_all(self, folders: Iterable[str | Path], mask: int = CHANGES) -> None:
        for folder in folders:
            self.add(folder, mask)

    def read(self) -> list[Event]:
        """The events waiting now (none: an empty list; never blocks). A queue that
        overflowed gives one event with IN_Q_OVERFLOW, folder and name empty."""
        events: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return events
            offset = 0
            while offset + _HEADER.size <= len(data):
                wd, mask, _, size = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                name = data[offset:offset + size].split(b"\0", 1)[0]
                offset += size
                events.append(Event(self._folders.get(wd, ""), os.fsdecode(name), mask))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
