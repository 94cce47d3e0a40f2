"""Idmapped bind mounts (Linux >= 5.12), so root-owned shared image layers appear
owned by a capsule's own uid range without copying or chowning them.

``open_tree(OPEN_TREE_CLONE)`` detaches a copy of the source mount,
``mount_setattr(MOUNT_ATTR_IDMAP)`` attaches the mapping of a user namespace
made for the purpose, and ``move_mount`` puts it in place.
"""

from __future__ import annotations

import ctypes
import os
import re
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from nova_core.errors import NovaError

_libc = ctypes.CDLL(None, use_errno=True)
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
MOVE_MOUNT_F_EMPTY_PATH = 4
MOUNT_ATTR_IDMAP = 0x00100000
CLONE_NEWUSER = 0x10000000
MNT_DETACH = 2


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384


def _error(what: str, hint: str | None = None) -> NovaError:
    number = ctypes.get_errno()
    return NovaError(f"{what}: {os.strerror(number)}", hint=hint)


IDMAP_HINT = "capsules need Linux 5.12+ with idmapped mounts on this filesystem"


def user_namespace_fd(host_base: int, count: int) -> int:
    """An fd of a new user namespace mapping ids 0..count-1 to host_base.. (caller closes it).

    A process only holds the namespace while it is mapped and opened. Forking this
    (large) Python process for that costs milliseconds per capsule start; instead the
    holder is cloned into the new namespace *sharing* this process's memory
    (``CLONE_VM``, as glibc's posix_spawn does), on a stack of its own, running
    nothing but libc's ``pause()`` until it is killed: no page tables are copied and
    no Python runs in it. If that clone fails, a plain fork does the same.
    """
    stack = ctypes.create_string_buffer(_HOLDER_STACK)
    top = ctypes.c_void_p(ctypes.addressof(stack) + _HOLDER_STACK - 64)
    pid = _clone(_PAUSE, top, CLONE_VM | CLONE_NEWUSER | SIGCHLD, None)
    if pid <= 0:
        return _user_namespace_fd_forked(host_base, count)
    try:
        return _map_and_open(pid, host_base, count)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        del stack  # only once the holder is gone


_HOLDER_STACK = 64 * 1024
CLONE_VM = 0x100
SIGCHLD = 17
_clone = _libc.clone
_clone.restype = ctypes.c_int
_clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
_PAUSE = ctypes.cast(_libc.pause, ctypes.c_void_p)


def _map_and_open(pid: int, host_base: int, count: int) -> int:
    Path(f"/proc/{pid}/uid_map").write_text(f"0 {host_base} {count}\n")
    Path(f"/proc/{pid}/setgroups").write_text("deny")
    Path(f"/proc/{pid}/gid_map").write_text(f"0 {host_base} {count}\n")
    return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)


def _user_namespace_fd_forked(host_base: int, count: int) -> int:
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child only holds the namespace while the parent maps it
        try:
            os.close(ready_r)
            if _libc.unshare(CLONE_NEWUSER) != 0:
                os._exit(1)
            os.write(ready_w, b"1")
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        if os.read(ready_r, 1) != b"1":
            raise NovaError("could not create a user namespace for an idmapped mount")
        return _map_and_open(pid, host_base, count)
    finally:
        os.close(ready_r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


CLONE_NEWNET = 0x40000000


def pin_namespaces(host_base: int, count: int, userns_path: Path, netns_path: Path) -> None:
    """Make a user namespace (ids 0..count-1 -> host_base..) and a network namespace it
    owns, and pin both at the given paths (bind mounts of their nsfs files).

    A capsule on Nova networks joins both: its root then holds CAP_NET_ADMIN and
    CAP_NET_RAW over its own network namespace (ping, low ports, its own firewall),
    while the network driver (host root) plugs interfaces into that namespace.
    """
    unshare = _libc.unshare  # looked up before the fork: the child only makes system calls
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
        raise
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(go_w)
            if unshare(CLONE_NEWUSER) != 0:
                os._exit(1)
            os.write(ready_w, b"1")
            if os.read(go_r, 1) != b"1" or unshare(CLONE_NEWNET) != 0:
                os._exit(1)
            os.write(ready_w, b"2")
            os.read(go_r, 1)  # held until the parent has pinned both (or has gone)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    made: list[Path] = []

    def step(expected: bytes, what: str) -> None:
        ready, _, _ = select.select([ready_r], [], [], 10)
        if not ready or os.read(ready_r, 1) != expected:
            raise NovaError(f"could not create the capsule's {what} namespace")

    try:
        step(b"1", "user")
        Path(f"/proc/{pid}/uid_map").write_text(f"0 {host_base} {count}\n")
        Path(f"/proc/{pid}/setgroups").write_text("deny")
        Path(f"/proc/{pid}/gid_map").write_text(f"0 {host_base} {count}\n")
        os.write(go_w, b"1")
        step(b"2", "network")
        for kind, target in (("user", userns_path), ("net", netns_path)):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
            made.append(target)
            if _libc.mount(os.fsencode(f"/proc/{pid}/ns/{kind}"), os.fsencode(target), None,
                           MS_BIND, None) != 0:
                raise _error(f"pinning the capsule's {kind} namespace at {target}")
    except BaseException:
        for target in made:
            unpin(target)
        raise
    finally:
        os.close(ready_r)
        os.close(go_w)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def is_pinned(path: Path) -> bool:
    """True if ``path`` holds a namespace (an nsfs bind mount, not the bare file)."""
    from nova_core.hostinfo.netns import exists

    return exists(path)


def unpin(path: Path) -> None:
    """Release a pinned namespace; fine if it is not there."""
    unmount(path)
    path.unlink(missing_ok=True)


def idmapped_bind(source: Path, target: Path, userns_fd: int) -> None:
    """Bind ``source`` at ``target`` with the id mapping of ``userns_fd``."""
    tree = _libc.syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(source),
                         OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
    if tree < 0:
        raise _error(f"open_tree {source}", IDMAP_HINT)
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        if _libc.syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH, ctypes.byref(attr),
                         ctypes.sizeof(attr)) != 0:
            raise _error(f"idmapping {source}", IDMAP_HINT)
        if _libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, os.fsencode(target),
                         MOVE_MOUNT_F_EMPTY_PATH) != 0:
            raise _error(f"mounting {source} at {target}")
    finally:
        os.close(tree)


def mount_overlay(lowers: list[Path], upper: Path, work: Path, target: Path,
                  volatile: bool = False) -> None:
    """Mount overlayfs at ``target`` (nodev); ``lowers`` top-most first.

    ``volatile``: the upper layer is never synced, not even by the unmount, which
    otherwise syncs the whole filesystem under it (about 1 ms here on a quiet disk,
    any amount on a busy one). For a layer that is thrown away after the run: the
    kernel marks ``work`` so that it cannot be mounted again (:func:`forget_volatile`
    lifts that).
    """
    options = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
    if volatile:
        options += ",volatile"
    if _libc.mount(b"overlay", os.fsencode(target), b"overlay", MS_NODEV,
                   options.encode()) != 0:
        raise _error(f"mounting the overlay at {target}")


def forget_volatile(work: Path) -> None:
    """Let the overlay of ``work`` be mounted again after a volatile mount: the mark the
    kernel left is removed. Whatever the volatile run wrote may be lost if the host
    crashed since; that run's layer was meant to be thrown away."""
    import shutil

    shutil.rmtree(work / "work" / "incompat", ignore_errors=True)


def bind_mount(source: Path, target: Path, read_only: bool) -> None:
    """A plain recursive bind, then made nosuid and nodev (and read-only if asked)."""
    if _libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND | MS_REC, None) != 0:
        raise _error(f"binding {source} at {target}", "check that the path exists")
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (MS_RDONLY if read_only else 0)
    if _libc.mount(None, os.fsencode(target), None, flags, None) != 0:
        error = _error(f"making {target} nosuid")
        unmount(target)
        raise error


def unmount(target: Path) -> None:
    """Unmount ``target`` (lazily); fine if nothing is mounted there."""
    if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        number = ctypes.get_errno()
        if number not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise NovaError(f"unmounting {target}: {os.strerror(number)}")


def is_mounted(target: Path) -> bool:
    """True if ``target`` is a mount point."""
    return bool(mounted_among([target]))


def mounted_among(targets: list[Path]) -> list[Path]:
    """Those of ``targets`` that are mount points (one pass over the mount table)."""
    wanted = {os.fsencode(os.path.realpath(target)): target for target in targets}
    return [wanted.pop(point) for point in _mount_points() if point in wanted]


def mounts_under(folders: list[Path], leave: tuple[Path, ...] = ()) -> list[Path]:
    """The mount points at or below any of ``folders``, except those in ``leave``, in the
    order they were mounted (one pass over the mount table)."""
    prefixes = tuple(os.fsencode(os.path.realpath(folder)) for folder in folders)
    below = tuple(prefix + b"/" for prefix in prefixes)
    skip = {os.fsencode(os.path.realpath(path)) for path in leave}
    return [Path(os.fsdecode(point)) for point in _mount_points()
            if (point in prefixes or point.startswith(below)) and point not in skip]


def _mount_points() -> Iterator[bytes]:
    """The mount point of each line of this process's mount table, unescaped."""
    with open("/proc/self/mountinfo", "rb") as handle:
        for line in handle:
            fields = line.split(b" ", 5)
            if len(fields) > 4:
                point = fields[4]
                yield _OCTAL.sub(_unescape, point) if b"\\" in point else point


_OCTAL = re.compile(rb"\\([0-7]{3})")  # the kernel writes space, tab, newline and \ so


def _unescape(match: re.Match[bytes]) -> bytes:
    return bytes([int(match[1], 8)])
