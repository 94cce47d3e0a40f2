"""Named network namespaces (``/run/netns/NAME``, as ``ip netns`` keeps them).

Network drivers put an instance's interfaces in a namespace named after the
instance, so several networks (and several drivers) can plug one capsule in; the
capsule's runtime then joins it by path. Made with unshare(2) in a short-lived
thread (:mod:`nova_core.hostinfo.threads`) and a bind mount, without forking ``ip``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from nova_core.hostinfo.threads import CLONE_NEWNET, check, in_thread, libc

NETNS_DIR = Path("/run/netns")
MS_BIND = 4096
MNT_DETACH = 2
T = TypeVar("T")


def instance_netns(nova_home: Path, project: str, kind: str, name: str) -> Path:
    """The namespace path of one instance (unique per NOVA_HOME, project and name)."""
    digest = hashlib.sha256(f"{nova_home.resolve()}\0{project}\0{kind}\0{name}".encode())
    return NETNS_DIR / f"nova-{name[:24]}-{digest.hexdigest()[:8]}"


def exists(path: Path) -> bool:
    """True if ``path`` holds a pinned namespace of any kind (a bind mount from nsfs, not
    the bare file)."""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except OSError:
        return False


def create(path: Path) -> Path:
    """Make the namespace at ``path`` (fine if it already exists)."""
    if exists(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=True)

    def make() -> None:
        check(libc.unshare(CLONE_NEWNET), "making a network namespace")
        source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        check(libc.mount(source, os.fsencode(path), None, MS_BIND, None),
               f"pinning the network namespace at {path}")

    try:
        in_thread(make, name="nova-netns")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def delete(path: Path) -> None:
    """Remove the namespace (its interfaces go with it); fine if it is gone."""
    if libc.umount2(os.fsencode(path), MNT_DETACH) != 0 and ctypes.get_errno() not in (2, 22):
        check(-1, f"unmounting {path}")
    path.unlink(missing_ok=True)


def run_inside(path: Path, work: Callable[[], T]) -> T:
    """Run ``work`` with the calling thread in the namespace at ``path``.

    Sockets ``work`` opens (netlink, say) stay bound to that namespace.
    """

    def enter_and_work() -> T:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            check(libc.setns(fd, CLONE_NEWNET), f"entering {path}")
        finally:
            os.close(fd)
        return work()

    return in_thread(enter_and_work, name="nova-netns")
