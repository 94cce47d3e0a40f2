"""``nova doctor`` and the host facts it reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from nova_core.hooktypes import program_check
from nova_core.hostinfo.cgroups import read_cgroup_layout

HYBRID = """\
25 30 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 - cgroup cgroup rw,cpu,cpuacct
29 25 0:26 / /sys/fs/cgroup/systemd rw,nosuid shared:13 - cgroup cgroup rw,xattr,name=systemd
"""
PURE_V2 = "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1 = "27 25 0:24 / /sys/fs/cgroup/pids rw shared:11 - cgroup cgroup rw,pids\n"


def test_cgroup_layouts(tmp_path: Path) -> None:
    cases = {"hybrid": HYBRID, "v2": PURE_V2, "v1": V1, "none": ""}
    for mode, text in cases.items():
        path = tmp_path / f"{mode}.mountinfo"
        path.write_text(text)
        layout = read_cgroup_layout(path)
        assert layout.mode == mode
    hybrid = read_cgroup_layout(tmp_path / "hybrid.mountinfo")
    assert hybrid.v1_controllers == ("cpu", "cpuacct", "memory", "xattr")
    assert hybrid.v2_mount == "/sys/fs/cgroup/unified"


def test_this_hosts_cgroup_mode_matches_the_kernel() -> None:
    layout = read_cgroup_layout()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert (" - cgroup2 " in mounts) == (layout.v2_mount is not None)
    assert (" - cgroup " in mounts) == bool(layout.v1_controllers)


def test_program_check(tmp_path: Path, monkeypatch) -> None:
    assert program_check("x", "sh", "runs scripts", "apt-get install dash").status == "ok"
    monkeypatch.setenv("PATH", str(tmp_path))
    missing = program_check("x", "sh", "runs scripts", "apt-get install dash")
    assert missing.status == "fail" and missing.hint == "apt-get install dash"


def test_doctor_reports_core_and_plugin_checks(run_nova) -> None:
    done = run_nova("doctor", "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    checks = {(c["category"], c["name"]): c for c in json.loads(done.stdout)}
    assert checks[("host", "cgroup mode")]["summary"].split(";")[0] == read_cgroup_layout().mode
    assert ("nova-capsule", "OCI runtime") in checks and ("nova-bridge", "nft") not in checks
    nft = checks[("nova-bridge", "program nft")]
    assert (nft["status"] == "ok") == (shutil.which("nft") is not None)
    kvm = checks[("nova-qemu", "kvm usable")]
    assert kvm["status"] in ("ok", "warn") and kvm["summary"]
    text = run_nova("doctor", timeout=120)
    assert "checks:" in text.stdout and "CATEGORY" in text.stdout
