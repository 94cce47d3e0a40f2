"""nova-core's own hook implementations (registered like any plugin's)."""

from __future__ import annotations

import os
import sys

from nova_core.drivers.base import Driver
from nova_core.drivers.models import RenderedDetail
from nova_core.engine.plan import PlanStep
from nova_core.hookspecs import hookimpl
from nova_core.hooktypes import CheckResult


@hookimpl
def nova_plan_render(step: PlanStep, driver: Driver | None) -> list[RenderedDetail]:
    """Ask the step's own driver what it will do; say so when the driver is absent."""
    if step.spec is None:
        return []
    if driver is None:
        return [RenderedDetail(title="driver", body=f"driver '{step.driver}' is not installed: "
                               "nova up will stop here until it is")]
    return driver.render(step.spec)


@hookimpl
def nova_doctor_checks() -> list[CheckResult]:
    """Host checks that need no plugin: Python, NOVA_HOME, cgroups, the KVM device."""
    from nova_core.hostinfo.cgroups import read_cgroup_layout
    from nova_core.state.store import default_nova_home

    results = [CheckResult("host", "python", "ok", sys.version.split()[0])]
    home = default_nova_home()
    parent = home if home.exists() else home.parent
    writable = os.access(parent, os.W_OK)
    results.append(CheckResult(
        "host", "NOVA_HOME", "ok" if writable else "fail", f"{home}" + ("" if writable else
                                                                         " (not writable)"),
        None if writable else "run as root, or set NOVA_HOME to a folder you can write"))
    layout = read_cgroup_layout()
    hints = {
        "hybrid": "works: capsules drop the cgroup2 mount in their own mount namespace; "
                  "systemd.unified_cgroup_hierarchy=1 on the kernel command line gives pure v2",
        "none": "mount cgroups (cgroup2 at /sys/fs/cgroup) to run capsules",
    }
    detail = f"{layout.mode}"
    if layout.v1_controllers:
        detail += f"; v1 controllers: {', '.join(layout.v1_controllers)}"
    if layout.v2_mount:
        detail += (f"; cgroup2 at {layout.v2_mount} "
                   f"({', '.join(layout.v2_controllers) or 'no controllers'})")
    status = {"v2": "ok", "v1": "ok", "hybrid": "warn", "none": "fail"}[layout.mode]
    results.append(CheckResult("host", "cgroup mode", status, detail,  # type: ignore[arg-type]
                               hints.get(layout.mode)))
    results.append(_kvm_device())
    return results


def _kvm_device() -> CheckResult:
    """Whether /dev/kvm opens and creates a VM: necessary, not sufficient (see nova-qemu)."""
    import fcntl

    kvm_create_vm = 0xAE01
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        return CheckResult("host", "kvm device", "warn", f"/dev/kvm: {error.strerror}",
                           "VMs will run under TCG (slower); enable virtualisation in firmware "
                           "and load kvm_intel or kvm_amd")
    try:
        vm_fd = fcntl.ioctl(fd, kvm_create_vm, 0)
        os.close(vm_fd)
    except OSError as error:
        return CheckResult("host", "kvm device", "warn", f"KVM_CREATE_VM failed: {error.strerror}",
                           "VMs will run under TCG")
    finally:
        os.close(fd)
    return CheckResult("host", "kvm device", "info", "/dev/kvm creates VMs; whether guests "
                       "actually run is the 'kvm usable' boot probe of nova-qemu")
