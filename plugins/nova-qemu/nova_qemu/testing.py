"""Test guests for nova-qemu: Debian's cloud kernel (unpacked by the plugin's setup hook)
and a busybox initramfs built here, whose /init prints a marker and then a counter
on the serial console, so tests can see a guest boot, run, and come back from a snapshot.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
from pathlib import Path

from nova_core.errors import NovaError

GUEST_CACHE = Path(os.environ.get("NOVA_GUEST_CACHE", "/var/cache/nova/guest"))
MARKER = "NOVA-GUEST-UP"
MODULES = ("failover", "net_failover", "virtio_net", "virtio_blk")  # in load order
INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in {' '.join(MODULES)}; do [ -f /lib/$m.ko ] && /bin/busybox insmod /lib/$m.ko; done
echo {MARKER}
for disk in /dev/vd?; do  # a cloud-init seed: ISO 9660, volume id at sector 16
    [ -b $disk ] && /bin/busybox dd if=$disk bs=2048 skip=16 count=1 2>/dev/null \
        | /bin/busybox strings | /bin/busybox grep -q '^CD001' \
        && /bin/busybox dd if=$disk bs=2048 skip=16 count=1 2>/dev/null \
        | /bin/busybox strings | /bin/busybox grep -q cidata && echo "NOVA-SEED $disk"
done
if [ -d /sys/class/net/eth0 ]; then
    /bin/busybox ip link set lo up
    /bin/busybox ip link set eth0 up
    /bin/busybox udhcpc -i eth0 -n -q -t 20 -T 1 -s /bin/lease || echo "NOVA-NO-LEASE"
fi
i=0
while true; do i=$((i+1)); echo "tick $i"; /bin/busybox sleep 0.5; done
"""
LEASE_SCRIPT = """#!/bin/busybox sh
if [ "$1" = bound ]; then
    /bin/busybox ip addr add $ip/$mask dev $interface
    [ -n "$router" ] && /bin/busybox ip route add default via $router
    echo "NOVA-LEASE $ip"
fi
"""


def guest_kernel() -> Path:
    """The cached guest kernel, or a clear error saying how to get it."""
    kernel = GUEST_CACHE / "vmlinuz"
    if not kernel.is_file():
        raise NovaError(f"no guest kernel at {kernel}",
                        hint="run bash plugins/nova-qemu/scripts/setup-hook.sh (scripts/setup.sh does)")
    return kernel


def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 1) -> bytes:
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
    header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
    body = header + name.encode() + b"\0"
    body += b"\0" * (-len(body) % 4) + data
    return body + b"\0" * (-len(body) % 4)


def busybox_initramfs(target: Path, init: str = INIT) -> Path:
    """Write a gzip'd newc cpio: busybox-static, ``init`` at /init, the virtio-net modules."""
    busybox = Path("/bin/busybox").read_bytes()
    archive = io.BytesIO()
    entries = [("bin", stat.S_IFDIR | 0o755, b""), ("proc", stat.S_IFDIR | 0o755, b""),
               ("sys", stat.S_IFDIR | 0o755, b""), ("dev", stat.S_IFDIR | 0o755, b""),
               ("lib", stat.S_IFDIR | 0o755, b""),
               ("bin/busybox", stat.S_IFREG | 0o755, busybox),
               ("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
               ("bin/lease", stat.S_IFREG | 0o755, LEASE_SCRIPT.encode()),
               ("init", stat.S_IFREG | 0o755, init.encode())]
    for module in MODULES:  # from the setup hook; without them the guest has no network
        path = GUEST_CACHE / "modules" / f"{module}.ko"
        if path.is_file():
            entries.append((f"lib/{module}.ko", stat.S_IFREG | 0o644, path.read_bytes()))
    for ino, (name, mode, data) in enumerate(entries, start=2):
        archive.write(_cpio_entry(name, mode, data, ino))
    archive.write(_cpio_entry("TRAILER!!!", 0, b"", 0))
    target.write_bytes(gzip.compress(archive.getvalue(), compresslevel=1))
    return target
