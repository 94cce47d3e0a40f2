"""The qemu driver against real QEMU under TCG, with a real guest: Debian's cloud kernel
(unpacked by plugins/nova-qemu/scripts/setup-hook.sh, which scripts/setup.sh runs) and
a busybox initramfs whose /init prints a marker and then a counter on the serial console.

The guest has no ACPI daemon, so a graceful stop always ends with QMP ``quit`` after
the timeout; the tests keep timeouts short.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from nova_qemu.driver import QemuDriver
from nova_qemu.testing import MARKER, guest_kernel
from nova_qemu.testing import guest_spec as vm
from nova_qemu.testing import wait_for_serial as wait_for
from nova_qemu.vm import run_root

from nova_core.drivers.base import DriverContext
from nova_core.drivers.models import Lifecycle, LogRequest, VmSpec
from nova_core.errors import NovaError
from nova_core.testing.contracts import ComputeDriverContract


class TestQemuContract(ComputeDriverContract):
    @pytest.fixture
    def instance_spec(self, tmp_path: Path, initrd: Path) -> VmSpec:
        return vm(tmp_path, initrd, "contract")


def test_the_guest_boots_and_a_later_nova_adopts_it(driver: QemuDriver, tmp_path: Path,
                                                     initrd: Path, nova_home: Path) -> None:
    spec = vm(tmp_path, initrd)
    driver.create(spec)
    try:
        assert driver.start(spec).state is Lifecycle.RUNNING
        wait_for(driver, spec, MARKER)
        later = QemuDriver("qemu", DriverContext(nova_home=nova_home))  # a new nova process
        status = later.status(spec)
        assert status.state is Lifecycle.RUNNING and status.data["pid"]
        assert later.pause(spec).state is Lifecycle.PAUSED
        assert later.resume(spec).state is Lifecycle.RUNNING
        os.kill(int(status.data["pid"]), signal.SIGKILL)  # QEMU dies behind Nova's back
        deadline = time.monotonic() + 5
        while later.status(spec).state is not Lifecycle.STOPPED and time.monotonic() < deadline:
            time.sleep(0.05)
        assert later.status(spec).state is Lifecycle.STOPPED
        assert driver.start(spec).state is Lifecycle.RUNNING  # and it starts again
    finally:
        driver.delete(spec)
    assert (tmp_path / "g1-data.qcow2").is_file()  # a disk outside Nova's folder is data: kept


def test_a_memory_snapshot_brings_the_guest_back(driver: QemuDriver, tmp_path: Path,
                                                 initrd: Path) -> None:
    spec = vm(tmp_path, initrd, "snap")
    driver.create(spec)
    try:
        driver.start(spec)
        wait_for(driver, spec, r"tick 3\b")
        info = driver.snapshot(spec, "s1")
        assert info.memory
        text = wait_for(driver, spec, r"tick 1[2-9]\b")
        saved_at = max(int(n) for n in re.findall(r"tick (\d+)", text.split("tick 12")[0]))
        driver.restore_snapshot(spec, "s1")
        before = len(list(driver.logs(spec, LogRequest())))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = [line.text for line in driver.logs(spec, LogRequest())][before:]
            ticks = [int(n) for n in re.findall(r"tick (\d+)", "\n".join(after))]
            if ticks:
                break
            time.sleep(0.1)
        assert ticks and ticks[0] < 12, after  # the counter went back to where it was saved
        assert ticks[0] >= 3 and ticks[0] <= saved_at + 3
        driver.delete_snapshot(spec, "s1")
        with pytest.raises(NovaError, match="no snapshot s1"):
            driver.restore_snapshot(spec, "s1")
    finally:
        driver.delete(spec)


def test_bad_input_is_a_clear_error_and_leaves_nothing(driver: QemuDriver, tmp_path: Path,
                                                       initrd: Path) -> None:
    missing = vm(tmp_path, initrd, "nokernel").model_copy(update={"kernel": str(tmp_path / "nope")})
    with pytest.raises(NovaError, match="kernel .*nope does not exist"):
        driver.create(missing)
    assert driver.status(missing).state is Lifecycle.MISSING
    huge = vm(tmp_path, initrd, "huge", memory=64 * 2**40)  # more than any host here has
    driver.create(huge)
    try:
        with pytest.raises(NovaError, match="QEMU did not start"):
            driver.start(huge)
        assert driver.status(huge).state is Lifecycle.STOPPED
    finally:
        driver.delete(huge)
    assert not list(run_root(driver.context.nova_home).glob("huge-*"))


def test_nova_up_logs_and_console_through_the_cli(run_nova, tmp_path: Path,
                                                  initrd: Path) -> None:
    import subprocess
    import sys

    project_dir = tmp_path / "proj"
    project_dir.mkdir()
    (project_dir / "NovaFile").write_text(f"""
project = "qemucli"

[vm.cli]
kernel = "{guest_kernel()}"
initrd = "{initrd}"
cmdline = "console=ttyS0 panic=-1 quiet"
memory = "128Mi"
accel = "tcg"
stop_timeout = 1
""")
    try:
        up = run_nova("up", cwd=project_dir)
        assert up.returncode == 0, up.stderr
        deadline = time.monotonic() + 60
        while MARKER not in run_nova("logs", "vm", "cli", cwd=project_dir).stdout:
            assert time.monotonic() < deadline, "the guest never printed its marker"
            time.sleep(0.2)
        plan = run_nova("plan", cwd=project_dir).stdout
        assert "unchanged" in plan
        console = subprocess.Popen([sys.executable, "-m", "nova_core.cli.main", "console", "vm",
                                    "cli"], cwd=project_dir, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen = b""
        while b"tick" not in seen:
            chunk = console.stdout.read1(4096)
            assert chunk, console.stderr.read()
            seen += chunk
        console.stdin.write(b"\x1d")
        console.stdin.flush()
        assert console.wait(timeout=10) == 0
        assert b"detached from vm.cli (it keeps running)" in console.stderr.read()
        listing = json.loads(run_nova("ls", "--json", cwd=project_dir).stdout)
        assert [(i["name"], i["state"]) for i in listing] == [("cli", "running")]
        assert run_nova("pause", "vm", "cli", cwd=project_dir).stdout == "vm.cli: paused\n"
        listing = json.loads(run_nova("ls", "--json", cwd=project_dir).stdout)
        assert [(i["name"], i["state"]) for i in listing] == [("cli", "paused")]
        assert run_nova("resume", "vm", "cli", cwd=project_dir).stdout == "vm.cli: running\n"
        # logs -f: new serial output as it comes, and it ends by itself when the VM stops
        ticks = run_nova("logs", "vm", "cli", cwd=project_dir).stdout.count("tick")
        follower = subprocess.Popen([sys.executable, "-m", "nova_core.cli.main", "logs", "vm",
                                     "cli", "-f"], cwd=project_dir, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        try:
            seen = 0
            while seen < ticks + 2:  # two ticks the guest printed after the follower started
                line = follower.stdout.readline()
                assert line, follower.stderr.read()
                seen += line.count("tick")
            assert follower.poll() is None
            assert run_nova("stop", "vm", "cli", "-t", "1", cwd=project_dir).returncode == 0
            assert follower.wait(timeout=30) == 0
        finally:
            follower.kill()
        gone = run_nova("console", "vm", "nosuch", cwd=project_dir)
        assert gone.returncode == 1 and "Traceback" not in gone.stderr
    finally:
        down = run_nova("down", cwd=project_dir)
    assert down.returncode == 0, down.stderr


def iso_file(iso: Path, name: str) -> str:
    import subprocess

    return subprocess.run(["isoinfo", "-R", "-i", str(iso), "-x", f"/{name}"],
                          capture_output=True, text=True, check=True).stdout


def test_cloud_init_seed_is_a_cidata_iso_the_guest_sees(driver: QemuDriver, tmp_path: Path,
                                                        initrd: Path) -> None:
    import subprocess

    (tmp_path / "user-data.yaml").write_text("#cloud-config\npackages: [htop]\n")
    spec = vm(tmp_path, initrd, "cloudy", user_data="user-data.yaml",
              ssh_authorized_keys=["ssh-ed25519 AAAAexample me@laptop"], disks=[])
    driver.create(spec)
    try:
        seed = driver.files(spec).root / "seed.iso"
        label = subprocess.run(["isoinfo", "-d", "-i", str(seed)], capture_output=True,
                               text=True, check=True).stdout
        assert "Volume id: cidata" in label
        assert iso_file(seed, "user-data") == ("#cloud-config\npackages: [htop]\n"
                                               "ssh_authorized_keys:\n"
                                               '  - "ssh-ed25519 AAAAexample me@laptop"\n')
        assert iso_file(seed, "meta-data") == ("instance-id: nova-qemut-cloudy\n"
                                               "local-hostname: cloudy\n")
        driver.start(spec)
        wait_for(driver, spec, r"NOVA-SEED /dev/vda")  # the guest reads a cidata ISO disk
    finally:
        driver.delete(spec)
    script = vm(tmp_path, initrd, "scripted", user_data="#!/bin/sh\necho hi\n",
                ssh_authorized_keys=["ssh-ed25519 AAAA k"], disks=[])
    with pytest.raises(NovaError, match="ssh_authorized_keys goes into a #cloud-config"):
        driver.create(script)
    assert driver.status(script).state is Lifecycle.MISSING
