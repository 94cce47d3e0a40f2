"""The OCI runtime config (config.json) of a capsule.

A capsule is unprivileged by default: root inside maps to the capsule's own host
id range; it gets the capability set a system container needs (Docker's default
set), ``noNewPrivileges``, a seccomp filter refusing the system calls no
container should make, the runtime-spec's masked and read-only /proc and /sys
paths, resource limits, and an absolute cgroup under ``/nova``.
"""

from __future__ import annotations

import os
import resource
from typing import Any

from nova_core.drivers.models import ContainerSpec
from nova_core.errors import NovaError

CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_CHROOT",
    "CAP_MKNOD", "CAP_AUDIT_WRITE", "CAP_SETFCAP",
]
MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/fs/selinux", "/sys/dev/block",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
#: System calls refused with EPERM: kernel modules, kexec, BPF, perf, keyrings,
#: raw I/O ports, swap, clocks, accounting, quotas, handles that escape mounts.
DENIED_SYSCALLS = [
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "finit_module", "get_kernel_syms", "get_mempolicy", "init_module",
    "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie",
    "mbind", "move_pages", "nfsservctl", "open_by_handle_at", "perf_event_open",
    "personality", "process_vm_readv", "process_vm_writev", "query_module", "quotactl",
    "request_key", "set_mempolicy", "settimeofday", "swapoff", "swapon", "_sysctl",
    "syslog", "uselib", "userfaultfd", "ustat", "vm86", "vm86old", "adjtimex",
]
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Static init programs (any image can run them), in order of preference: Debian's
#: catatonit (podman's --init) and tini-static (docker's --init is tini).
INIT_PROGRAMS = ("/usr/bin/catatonit", "/usr/libexec/podman/catatonit", "/usr/bin/tini-static")
#: Where a capsule with ``init = true`` sees it: /dev is the capsule's own tmpfs, so the
#: bind's mount point never lands in the capsule's persistent root filesystem.
INIT_PATH = "/dev/init"


def init_program() -> str:
    """The host's init program for capsules with ``init = true``."""
    for path in INIT_PROGRAMS:
        if os.access(path, os.X_OK):
            return path
    raise NovaError("init = true needs an init program on the host (catatonit or tini-static)",
                    hint="apt-get install catatonit")


def seccomp_profile() -> dict[str, Any]:
    """Allow by default, refuse :data:`DENIED_SYSCALLS` with EPERM."""
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }


def rlimits() -> list[dict[str, Any]]:
    """Limits no higher than the caller's hard limits (asking for more is refused here)."""
    result = []
    for name, number, want in (("RLIMIT_NOFILE", resource.RLIMIT_NOFILE, 1048576),
                               ("RLIMIT_NPROC", resource.RLIMIT_NPROC, 1048576)):
        _soft, hard = resource.getrlimit(number)
        limit = want if hard == resource.RLIM_INFINITY else min(want, hard)
        result.append({"type": name, "hard": limit, "soft": min(limit, 1024 * 1024)})
    return result


def oci_config(spec: ContainerSpec, *, rootfs: str, argv: list[str], env: dict[str, str],
               cwd: str, uid: int, gid: int, uid_base: int, uid_count: int, cgroups_path: str,
               mounts: list[dict[str, Any]], netns: str | None, host_network: bool,
               hostname: str, userns: str | None = None) -> dict[str, Any]:
    """The config.json for ``spec``; ``userns`` joins a pinned user namespace (same ids)."""
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount",
                                                               "cgroup")]
    namespaces.append({"type": "user", "path": userns} if userns else {"type": "user"})
    if not host_network:
        namespaces.append({"type": "network", "path": netns} if netns else {"type": "network"})
    from nova_capsule.devices import device_edits

    edits = device_edits(spec.devices, spec.gpu)
    env = {**env, **edits.env}
    mounts = [*mounts, *edits.mounts]
    if spec.init:  # PID 1 passes SIGTERM on (a program as PID 1 ignores it) and reaps orphans
        mounts.append({"destination": INIT_PATH, "type": "bind", "source": init_program(),
                       "options": ["bind", "ro", "nosuid", "nodev"]})
        argv = [INIT_PATH, "--", *argv]
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}, *edits.rules]}
    if spec.memory:
        resources["memory"] = {"limit": spec.memory}
    if spec.cpu:
        resources["cpu"] = {"quota": int(spec.cpu * 100000), "period": 100000}
    if spec.pids:
        resources["pids"] = {"limit": spec.pids}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": argv,
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": cwd,
            "capabilities": {key: list(CAPABILITIES) for key in
                             ("bounding", "effective", "permitted")},
            "rlimits": rlimits(),
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": False},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            *mounts,
        ],
        "linux": {
            # also when joining a pinned user namespace (the same mapping): runc needs them
            "uidMappings": [{"containerID": 0, "hostID": uid_base, "size": uid_count}],
            "gidMappings": [{"containerID": 0, "hostID": uid_base, "size": uid_count}],
            "namespaces": namespaces,
            "devices": edits.nodes,
            "cgroupsPath": cgroups_path,
            "resources": resources,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": seccomp_profile(),
        },
    }
