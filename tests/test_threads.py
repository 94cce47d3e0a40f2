"""Namespace changes confined to a thread (nova_core.hostinfo.threads), against the real
kernel: a private mount namespace with a mount removed, seen from inside the thread, from
a process it starts and from the host."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nova_core.errors import NovaError
from nova_core.hostinfo.threads import in_private_mounts, in_thread


def mount_points(mountinfo: str) -> set[str]:
    return {line.split()[4] for line in mountinfo.splitlines() if len(line.split()) > 4}


@pytest.fixture
def shared_mounts(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A tmpfs with shared propagation and another tmpfs mounted inside it: an unmount in a
    namespace that is still a peer of the host's would reach the host. Both unmounted at
    the end, also when the test fails."""
    outer = tmp_path / f"shared-{uuid.uuid4().hex[:8]}"
    inner = outer / "inner"
    outer.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "nova-test", str(outer)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(outer)], check=True)
        inner.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "nova-test", str(inner)], check=True)
        yield outer, inner
    finally:
        subprocess.run(["umount", "-R", str(outer)], check=False)


def test_private_mounts_drop_a_mount_for_the_thread_and_its_children_only(
        shared_mounts: tuple[Path, Path]) -> None:
    outer, inner = shared_mounts

    def inside() -> tuple[str, str]:
        own = Path("/proc/thread-self/mountinfo").read_text()
        child = subprocess.run(["cat", "/proc/self/mountinfo"], capture_output=True, text=True,
                               check=True).stdout
        return own, child

    own, child = in_private_mounts(inside, unmount=[str(inner), str(outer / "not-mounted")])
    assert str(outer) in mount_points(own) and str(inner) not in mount_points(own)
    assert str(inner) not in mount_points(child)  # a process started there keeps it
    host = Path("/proc/self/mountinfo").read_text()
    assert str(inner) in mount_points(host)  # not propagated to the shared peer


def test_a_failure_in_the_thread_is_raised_in_the_caller() -> None:
    def fail() -> None:
        raise NovaError("from the thread")

    with pytest.raises(NovaError, match="from the thread"):
        in_thread(fail)
    assert in_thread(lambda: 42) == 42
