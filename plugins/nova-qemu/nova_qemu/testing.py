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
from typing import TYPE_CHECKING

from nova_core.drivers.models import DiskSpec, LogRequest, ResourceKind, ResourceRef, VmSpec
from nova_core.errors import NovaError

if TYPE_CHECKING:
    from nova_qemu.vm import VmDriver

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


LIBVIRT_DIRS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
                "log": "/var/log/libvirt"}
QEMU_CONF = """# written by nova_qemu.testing: QEMU runs as root (see HOST-FACTS: /dev/kvm is
# root 0600 here, and as libvirt-qemu every call re-probes capabilities)
user = "root"
group = "root"
"""


class PrivateLibvirtd:
    """A real libvirtd + virtlogd of its own, started without systemd.

    They run in a private mount namespace in which /etc/libvirt, /run/libvirt,
    /var/lib/libvirt and /var/log/libvirt are folders under ``base``, so they share
    nothing with a libvirt the host may run; QEMU's capability cache is kept in
    GUEST_CACHE/libvirt-cache (the first probe takes ~8 s). Connect with :attr:`uri`.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.uri = f"qemu:///system?socket={base / 'run' / 'libvirt-sock'}"

    def start(self) -> PrivateLibvirtd:
        """Start both daemons; wait until libvirtd answers."""
        import shutil
        import subprocess
        import time

        for name in LIBVIRT_DIRS:
            (self.base / name).mkdir(parents=True, exist_ok=True)
        shutil.copytree("/etc/libvirt", self.base / "etc", dirs_exist_ok=True)
        conf = self.base / "etc" / "qemu.conf"
        conf.write_text(conf.read_text() + QEMU_CONF)
        cache = GUEST_CACHE / "libvirt-cache"
        cache.mkdir(parents=True, exist_ok=True)
        binds = [(self.base / name, target) for name, target in LIBVIRT_DIRS.items()]
        binds.append((cache, "/var/cache/libvirt"))
        script = "set -e; mount --make-rprivate /\n" + "".join(
            f"mkdir -p {target}; mount --bind {source} {target}\n" for source, target in binds)
        script += (f"virtlogd -d -p {self.base / 'virtlogd.pid'}\n"
                   f"exec libvirtd -d -p {self.base / 'libvirtd.pid'}\n")
        done = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise NovaError(f"libvirtd did not start: {done.stderr.strip()}")
        deadline = time.monotonic() + 30
        while subprocess.run(["virsh", "-c", self.uri, "version"],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                self.stop()
                raise NovaError("libvirtd started but never answered")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        """Stop both daemons (and the QEMUs they still run)."""
        import os
        import signal
        import subprocess
        import time

        subprocess.run(["sh", "-c", f"for d in $(virsh -c '{self.uri}' list --name); do "
                                    f"virsh -c '{self.uri}' destroy $d; done"],
                       capture_output=True)
        for name in ("libvirtd", "virtlogd"):
            try:
                pid = int((self.base / f"{name}.pid").read_text())
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                continue
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)


def guest_spec(tmp_path: Path, initrd: Path, name: str = "g1", uri: str | None = None,
               **fields: object) -> VmSpec:
    """A test guest's spec: qemu driver, or libvirt when ``uri`` is given."""
    from nova_qemu.domain import LibvirtOptions
    from nova_qemu.driver import QemuOptions

    fields.setdefault("disks", [DiskSpec(path=str(tmp_path / f"{name}-data.qcow2"),
                                         size=64 * 2**20)])
    options = QemuOptions(accel="tcg") if uri is None else LibvirtOptions(accel="tcg", uri=uri)
    return VmSpec(ref=ResourceRef(project="qemut", kind=ResourceKind.VM, name=name),
                  driver="qemu" if uri is None else "libvirt", base_dir=tmp_path,
                  kernel=str(guest_kernel()), initrd=str(initrd),
                  cmdline="console=ttyS0 panic=-1 quiet", stop_timeout=1.0, options=options,
                  **{"memory": 128 * 2**20, **fields})


def wait_for_serial(driver: VmDriver, spec: VmSpec, pattern: str, timeout: float = 60) -> str:
    """Wait until the serial log matches ``pattern``; return the log."""
    import re
    import time

    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = "\n".join(line.text for line in driver.logs(spec, LogRequest()))
        if re.search(pattern, text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} on the serial console within {timeout}s:\n{text[-500:]}")


