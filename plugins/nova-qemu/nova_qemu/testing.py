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
    if [ -x /sbin/dhclient ]; then  # DHCPv6 once eth0's link-local address passed DAD
        n=0  # (in /proc/net/if_inet6: scope 20 link, flags 80 permanent and not tentative)
        until /bin/busybox grep -qE '^fe80[0-9a-f]+ [0-9a-f]+ 40 20 80 +eth0$' /proc/net/if_inet6
        do n=$((n+1)); [ $n -gt 200 ] && break; /bin/busybox sleep 0.1; done
        /sbin/dhclient -6 -1 -v -cf /dev/null -lf /tmp/leases6 -pf /tmp/dhclient6.pid \
            -sf /bin/lease6 eth0 || echo "NOVA-NO-LEASE6"
    fi
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

LEASE6_SCRIPT = """#!/bin/busybox sh
case "$reason" in BOUND6|REBOOT6)
    /bin/busybox ip -6 addr add $new_ip6_address/128 dev $interface
    echo "NOVA-LEASE6 $new_ip6_address";;
esac
exit 0
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


def _with_libraries(program: str) -> list[str]:
    """``program`` and the shared libraries it loads (ldd's absolute paths)."""
    import subprocess

    listed = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    return [program, *(word for line in listed.splitlines() for word in line.split()
                       if word.startswith("/"))]


def busybox_initramfs(target: Path, init: str = INIT, dhcp6: bool = False) -> Path:
    """Write a gzip'd newc cpio: busybox-static, ``init`` at /init, the virtio-net modules.

    With ``dhcp6`` it also holds the host's ISC dhclient (isc-dhcp-client) and its
    libraries: busybox has no DHCPv6 client, and INIT then asks for an IPv6 lease too.
    """
    busybox = Path("/bin/busybox").read_bytes()
    archive = io.BytesIO()
    entries = [("bin", stat.S_IFDIR | 0o755, b""), ("proc", stat.S_IFDIR | 0o755, b""),
               ("sys", stat.S_IFDIR | 0o755, b""), ("dev", stat.S_IFDIR | 0o755, b""),
               ("lib", stat.S_IFDIR | 0o755, b""), ("tmp", stat.S_IFDIR | 0o1777, b""),
               ("bin/busybox", stat.S_IFREG | 0o755, busybox),
               ("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
               ("bin/lease", stat.S_IFREG | 0o755, LEASE_SCRIPT.encode()),
               ("init", stat.S_IFREG | 0o755, init.encode())]
    if dhcp6:
        entries.append(("bin/lease6", stat.S_IFREG | 0o755, LEASE6_SCRIPT.encode()))
        folders = {"bin", "lib"}
        for path in _with_libraries("/sbin/dhclient"):
            parts = Path(path).relative_to("/").parts
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder not in folders:
                    folders.add(folder)
                    entries.append((folder, stat.S_IFDIR | 0o755, b""))
            entries.append(("/".join(parts), stat.S_IFREG | 0o755, Path(path).read_bytes()))
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


