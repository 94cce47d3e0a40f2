"""Namespace changes confined to one short-lived thread.

unshare(2) and setns(2) change the namespaces of the calling thread only. Done in a
thread of its own, such a change dies with the thread, and whatever the thread
starts meanwhile (a socket, a child process) keeps it: the rest of the process never
leaves the host's namespaces. No fork and no helper program is needed.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

from nova_core.errors import NovaError

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def check(ret: int, what: str) -> None:
    """Raise a NovaError saying ``what`` failed, with errno's text, if ``ret`` is not 0."""
    if ret != 0:
        number = ctypes.get_errno()
        raise NovaError(f"{what}: {os.strerror(number)}")


def in_thread(work: Callable[[], T], name: str = "nova-ns") -> T:
    """Run ``work`` in a fresh thread (namespace changes then die with the thread); its
    result, or its exception raised here."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller
            failure.append(error)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def in_private_mounts(work: Callable[[], T], unmount: Iterable[str] = ()) -> T:
    """Run ``work`` in a thread with a private copy of the host's mount namespace, from
    which the mounts ``unmount`` were removed (those not mounted are skipped), as
    ``unshare --mount --propagation private`` followed by ``umount`` would; a process
    ``work`` starts stays in that namespace. Needs CAP_SYS_ADMIN."""
    targets = [os.fsencode(path) for path in unmount]

    def inside() -> T:
        check(libc.unshare(CLONE_NEWNS), "making a private mount namespace")
        # nothing unmounted here may reach the host's namespace through shared propagation
        check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None),
              "making the mount namespace private")
        for target in targets:
            libc.umount2(target, 0)  # not mounted (any more): nothing to drop
        return work()

    return in_thread(inside, name="nova-mnt")
