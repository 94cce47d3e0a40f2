"""The capsule driver against the real crun, conmon, overlayfs and registry.

Each test uses its own NOVA_HOME and project name; an autouse fixture (conftest)
checks that no mount, cgroup, conmon or runtime process of that NOVA_HOME outlives
the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nova_capsule import idmap
from nova_capsule.cgroups import cgroup_dirs
from nova_capsule.driver import CapsuleDriver, capsule_id
from nova_capsule.runtime import run_root
from nova_capsule.testing import capsule_leftovers

from nova_core.drivers.base import DriverContext
from nova_core.drivers.models import ContainerSpec, ResourceKind, ResourceRef
from nova_core.errors import NovaError
from nova_core.testing.contracts import ComputeDriverContract

LOOP = "trap 'exit 0' TERM; echo started; while true; do sleep 0.1; done"


@pytest.fixture
def driver(capsule_home: Path) -> CapsuleDriver:
    return CapsuleDriver("capsule", DriverContext(nova_home=capsule_home))


def container(tmp_path: Path, name: str = "c1", **fields: object) -> ContainerSpec:
    fields.setdefault("command", ["sh", "-c", LOOP])
    fields.setdefault("stop_timeout", 3.0)
    fields.setdefault("image", "test/busybox:1")
    return ContainerSpec(ref=ResourceRef(project="capt", kind=ResourceKind.CONTAINER, name=name),
                         driver="capsule", base_dir=tmp_path, **fields)


def wait_until_exited(driver: CapsuleDriver, spec: ContainerSpec, timeout: float = 10) -> None:
    """Wait (bounded) until the capsule's main process has exited."""
    deadline = time.monotonic() + timeout
    while driver.status(spec).state.value == "running" and time.monotonic() < deadline:
        time.sleep(0.01)


class TestCapsuleContract(ComputeDriverContract):
    @pytest.fixture
    def instance_spec(self, tmp_path: Path) -> ContainerSpec:
        return container(tmp_path)


def exec_out(driver: CapsuleDriver, spec: ContainerSpec, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(driver.exec_argv(spec, ["sh", "-c", script]), capture_output=True,
                          text=True, timeout=30)


@pytest.fixture
def running(driver: CapsuleDriver, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ContainerSpec]:
    fields = getattr(request, "param", {})
    spec = container(tmp_path, **fields)
    driver.create(spec)
    try:
        driver.start(spec)
        yield spec
    finally:
        driver.delete(spec)


def test_isolation_from_host_processes_and_ids(driver: CapsuleDriver, running: ContainerSpec) -> None:
    done = exec_out(driver, running, "ps -o pid | tail -n +2; cat /proc/self/uid_map")
    lines = done.stdout.split()
    pids = [int(p) for p in lines[:-3]]
    assert pids[0] == 1 and max(pids) < 20  # its own PID namespace: only its few processes
    assert len(pids) <= 6  # pid 1, its sleep, the exec'd sh, ps and tail
    assert lines[-3:] == ["0", lines[-2], "65536"] and int(lines[-2]) >= 200000
    state = driver.status(running)
    host_pid = int(state.data["pid"])
    assert Path(f"/proc/{host_pid}/status").read_text().count("Uid:\t" + lines[-2]) == 1


def test_capabilities_no_new_privileges_and_seccomp(driver: CapsuleDriver, running: ContainerSpec) -> None:
    status = exec_out(driver, running, "cat /proc/1/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    effective = int(fields["CapEff"], 16)
    cap_chown, cap_sys_admin, cap_sys_module, cap_net_admin = 0, 21, 16, 12
    assert effective & (1 << cap_chown)
    assert not effective & (1 << cap_sys_admin)
    assert not effective & (1 << cap_sys_module) and not effective & (1 << cap_net_admin)
    assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2"
    chown = exec_out(driver, running, "touch /tmp/f && chown 1000:1000 /tmp/f && stat -c %u /tmp/f")
    assert chown.stdout.strip() == "1000"
    for attempt in ("mount -t tmpfs x /mnt", "swapoff -a",
                    "echo 1 > /proc/sys/kernel/sysrq", "mknod /tmp/sda b 8 0"):
        denied = exec_out(driver, running, attempt)
        assert denied.returncode != 0, f"{attempt!r} was allowed"


def test_namespaces_masked_and_read_only_paths(driver: CapsuleDriver, running: ContainerSpec) -> None:
    """Each namespace the issue names differs from the host's; /proc and /sys paths are
    masked or read-only as in the runtime-spec defaults (bundle.MASKED_PATHS, READONLY_PATHS)."""
    kinds = ("mnt", "uts", "ipc", "pid", "net", "user", "cgroup")
    inside = exec_out(driver, running, "; ".join(f"readlink /proc/1/ns/{k}" for k in kinds))
    assert len(inside.stdout.split()) == len(kinds), inside
    for kind, theirs in zip(kinds, inside.stdout.split(), strict=True):
        assert theirs != os.readlink(f"/proc/self/ns/{kind}"), f"the host's {kind} namespace"
    assert Path("/proc/keys").read_text() and any(Path("/sys/firmware").iterdir())
    masked = exec_out(driver, running, "cat /proc/keys | wc -c; ls -A /sys/firmware | wc -l")
    assert masked.stdout.split() == ["0", "0"], masked  # /dev/null over a file, tmpfs over a dir
    for path in ("/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches"):
        written = exec_out(driver, running, f"echo x > {path}")
        assert written.returncode != 0 and "Read-only file system" in written.stderr, written


def test_a_layered_image_runs_with_its_whiteouts_and_its_user(driver: CapsuleDriver,
                                                               tmp_path: Path) -> None:
    """Pulled and run: the upper layer's whiteout hides /etc/secret, its opaque /root hides
    the lower layer's files there, its /etc/motd wins; the config's "nobody:nogroup" is the
    process's user unless the NovaFile gives one (and then ``args`` follow ``command``)."""
    spec = container(tmp_path, image="test/layered:1")
    driver.create(spec)
    try:
        driver.start(spec)
        seen = exec_out(driver, spec, "cat /etc/motd; echo; ls -A /root; ls /etc/secret; "
                                      "grep -E '^(Uid|Gid):' /proc/1/status")
        lines = seen.stdout.split("\n")
        assert lines[:2] == ["upper", "new"], seen
        assert "/etc/secret: No such file or directory" in seen.stderr
        assert lines[2].split()[1:3] == ["65534", "65534"] and lines[3].split()[1] == "65534"
    finally:
        driver.delete(spec)
    spec = container(tmp_path, name="c2", image="test/layered:1", user="root",
                     command=["sh", "-c", 'echo "$0 $1" > /tmp/args; ' + LOOP],
                     args=["zero", "one"])  # args follow the command
    driver.create(spec)
    try:
        driver.start(spec)
        seen = exec_out(driver, spec, "grep -E '^Uid:' /proc/1/status; cat /tmp/args")
        assert seen.stdout.split()[1] == "0" and seen.stdout.endswith("zero one\n"), seen
    finally:
        driver.delete(spec)


def test_cannot_write_host_files_outside_volumes(driver: CapsuleDriver, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # volumes are not idmapped: the capsule writes as its own host uid
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    (readonly / "keep").write_text("original")
    from nova_core.novafile.values import parse_volume

    spec = container(tmp_path, volumes=[parse_volume(f"{shared}:/srv/shared", tmp_path),
                                        parse_volume(f"{readonly}:/srv/ro:ro", tmp_path)])
    driver.create(spec)
    try:
        driver.start(spec)
        done = exec_out(driver, spec, "echo hi > /srv/shared/out")
        assert done.returncode == 0, done
        for attempt in ("echo x > /srv/ro/keep", "echo y > /proc/sys/kernel/hostname",
                        "echo z > /sys/kernel/x", "touch /sys/x"):
            refused = exec_out(driver, spec, attempt)
            assert refused.returncode != 0, f"{attempt!r} was allowed"
        assert (shared / "out").read_text() == "hi\n"
        # root inside writes as its unprivileged host uid, never as host root
        assert (shared / "out").stat().st_uid == driver.files(spec).read().uid_base
        assert (readonly / "keep").read_text() == "original"
    finally:
        driver.delete(spec)


@pytest.mark.parametrize("running", [{"memory": 16 * 2**20, "pids": 20}], indirect=True)
def test_memory_and_pids_limits_hold(driver: CapsuleDriver, running: ContainerSpec) -> None:
    oom = exec_out(driver, running, "dd if=/dev/zero of=/dev/null bs=48M count=1")
    assert oom.returncode == 137  # killed by the memory cgroup
    forks = exec_out(driver, running, "for i in $(seq 60); do sleep 3 & done; sleep 0.5")
    assert "can't fork" in forks.stderr, forks
    [pids_dir] = [d for d in cgroup_dirs(capsule_id("capt", "c1")) if (d / "pids.max").exists()]
    assert (pids_dir / "pids.max").read_text().strip() == "20"
    events = dict(line.split() for line in (pids_dir / "pids.events").read_text().splitlines())
    assert int(events["max"]) > 0  # forks were refused at the limit


def test_root_filesystem_persists_across_stop_and_start(driver: CapsuleDriver,
                                                        running: ContainerSpec) -> None:
    exec_out(driver, running, "echo kept > /root/marker && rm /bin/cat.gone 2>/dev/null; true")
    assert driver.stop(running, 3).state.value == "stopped"
    assert not Path(driver.files(running).rootfs / "root").exists()  # unmounted
    driver.start(running)
    assert exec_out(driver, running, "cat /root/marker").stdout == "kept\n"


def test_logs_have_streams_and_timestamps_after_exit(driver: CapsuleDriver, tmp_path: Path) -> None:
    from nova_core.drivers.models import LogRequest

    spec = container(tmp_path, command=["sh", "-c", "echo out; echo err >&2; exit 3"])
    driver.create(spec)
    try:
        driver.start(spec)
        wait_until_exited(driver, spec)
        status = driver.status(spec)
        assert status.state.value == "stopped" and status.detail == "exited with code 3"
        lines = list(driver.logs(spec, LogRequest()))
        assert [(line.stream, line.text) for line in lines] == [("stdout", "out"), ("stderr", "err")]
        assert all(line.timestamp is not None for line in lines)
        assert [line.text for line in driver.logs(spec, LogRequest(tail=1))] == ["err"]
    finally:
        driver.delete(spec)


@pytest.mark.parametrize(("restart", "code"), [("on-failure", 4), ("always", 0)])
def test_restart_policies_are_done_by_the_exit_hook(driver: CapsuleDriver, tmp_path: Path,
                                                    restart: str, code: int) -> None:
    """on-failure runs a capsule again after it fails; always also after a clean exit."""
    spec = container(tmp_path, restart=restart,
                     command=["sh", "-c", f"echo run; sleep 0.2; exit {code}"])
    driver.create(spec)
    try:
        driver.start(spec)
        deadline = time.monotonic() + 20
        log = driver.files(spec).log
        while (not log.exists() or log.read_text().count(" stdout F run") < 3) and \
                time.monotonic() < deadline:
            time.sleep(0.1)
        assert log.read_text().count(" stdout F run") >= 3  # the first run and two restarts
        assert driver.files(spec).read().restarts >= 2
    finally:
        driver.delete(spec)


def test_failed_create_leaves_nothing(driver: CapsuleDriver, tmp_path: Path, capsule_home: Path) -> None:
    from nova_core.errors import NovaError
    from nova_core.novafile.values import parse_volume

    cases = [
        (container(tmp_path, name="u1", image="test/nothing:1"), "not found in registry"),
        (container(tmp_path, name="u2", volumes=[parse_volume("./missing:/x", tmp_path)]),
         "does not exist"),
        (container(tmp_path, name="u3", memory=2**20), "too small"),
        (container(tmp_path, name="u4", image="127.0.0.1:9/test/busybox:1"), "cannot reach registry"),
    ]
    for spec, message in cases:
        with pytest.raises(NovaError, match=message):
            driver.create(spec)
        assert not driver.files(spec).root.exists()
        assert capsule_leftovers(capsule_home) == []
    uids = capsule_home / "drivers" / "capsule" / "uids.json"
    assert not uids.exists() or json.loads(uids.read_text()) == {}


def test_a_failed_write_of_the_id_ranges_keeps_the_previous_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The id ranges' record is replaced whole: a write that fails part way (here a
    character the file's encoding cannot take, raised after the file was opened) leaves
    the previous record readable, where an in-place rewrite would have emptied it."""
    from nova_capsule import capsules

    path = tmp_path / "uids.json"
    ranges = capsules.UidAllocator(path)
    first = ranges.allocate("nova-a-1")
    monkeypatch.setattr(capsules.json, "dumps", lambda *args, **kwargs: '{"x": "\udc80"}')
    with pytest.raises(UnicodeEncodeError):
        ranges.allocate("nova-b-2")
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"nova-a-1": first}
    assert ranges.allocate("nova-b-2") != first


def test_failed_start_leaves_nothing_running(driver: CapsuleDriver, tmp_path: Path,
                                             capsule_home: Path) -> None:
    from nova_core.errors import NovaError

    spec = container(tmp_path, command=["/no/such/program"])
    driver.create(spec)
    try:
        with pytest.raises(NovaError):
            driver.start(spec)
        assert capsule_leftovers(capsule_home) == []
    finally:
        driver.delete(spec)


def test_runtime_state_lives_under_run(capsule_home: Path) -> None:
    assert str(run_root(capsule_home)).startswith("/run/nova-")


def test_snapshot_restores_the_filesystem(driver: CapsuleDriver, running: ContainerSpec) -> None:
    exec_out(driver, running, "echo before > /root/state")
    info = driver.snapshot(running, "s1")
    assert info.size and info.size > 0
    assert driver.status(running).state.value == "running"  # thawed again
    exec_out(driver, running, "echo after > /root/state; rm /bin/sh.nothing; touch /root/new")
    assert driver.restore_snapshot(running, "s1").state.value == "running"
    done = exec_out(driver, running, "cat /root/state; ls /root")
    assert done.stdout.split() == ["before", "state"]
    driver.delete_snapshot(running, "s1")
    assert not (driver.files(running).snapshots / "s1").exists()


def test_a_snapshot_is_copied_while_the_capsule_is_frozen(driver: CapsuleDriver,
                                                          running: ContainerSpec,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy of the writable layer runs while the kernel's cgroup freezer holds every
    process of the capsule (read from the capsule's own cgroup files during the copy),
    and the capsule runs on afterwards. The copy function is wrapped only to look."""
    import nova_capsule.driver as drivermod

    capsule = driver.files(running).read().id
    seen: list[str] = []
    copy = drivermod._copy_tree  # noqa: SLF001

    def looking(source: Path, target: Path) -> None:
        for folder in cgroup_dirs(capsule):
            for name in ("freezer.state", "cgroup.freeze"):  # v1 freezer, v2
                if (folder / name).exists():
                    seen.append((folder / name).read_text().strip())
        copy(source, target)

    monkeypatch.setattr(drivermod, "_copy_tree", looking)
    driver.snapshot(running, "frozen")
    assert seen and set(seen) <= {"FROZEN", "1"}, seen
    assert driver.status(running).state.value == "running"
    for folder in cgroup_dirs(capsule):
        if (folder / "freezer.state").exists():
            assert (folder / "freezer.state").read_text().strip() == "THAWED"


def test_quick_reincarnation_is_not_undone_by_an_old_exit_hook(driver: CapsuleDriver,
                                                                tmp_path: Path) -> None:
    """A capsule that exits, is removed and made again at once: the first run's exit hook
    (still running) must not touch the new run's mounts."""
    spec = container(tmp_path, command=["sh", "-c", "echo run"])
    for _ in range(4):
        driver.create(spec)
        try:
            driver.start(spec)
            wait_until_exited(driver, spec)
            assert driver.status(spec).exit_code == 0
        finally:
            driver.delete(spec)


def test_status_of_a_just_exited_capsule_waits_for_conmon_to_record_the_code(
        driver: CapsuleDriver, tmp_path: Path) -> None:
    """The runtime reports "stopped" as soon as the main process is gone; conmon writes the
    exit code a moment later. ``status`` in that window must give the code, not None.

    The window is widened on purpose: conmon is frozen (SIGSTOP) while the workload is
    killed, and thawed 0.3 s later from a timer thread.
    """
    import contextlib
    import signal
    import threading

    spec = container(tmp_path, name="win")
    driver.create(spec)
    try:
        driver.start(spec)
        files = driver.files(spec)
        monitor = files.monitor_pid()
        assert monitor is not None
        workload = int(driver.status(spec).data["pid"])
        os.kill(monitor, signal.SIGSTOP)
        thaw = threading.Timer(0.3, os.kill, (monitor, signal.SIGCONT))
        try:
            os.kill(workload, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while Path(f"/proc/{workload}/stat").read_text().split()[2] != "Z":
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert files.exit_code(capsule_id("capt", "win")) is None  # the window is open
            thaw.start()
            status = driver.status(spec)
        finally:
            thaw.cancel()
            with contextlib.suppress(ProcessLookupError):  # it may have exited by now
                os.kill(monitor, signal.SIGCONT)
        assert status.state.value == "stopped"
        assert status.exit_code == 137
    finally:
        driver.delete(spec)


def test_missing_runtime_is_a_clear_error(driver: CapsuleDriver, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from nova_core.errors import NovaError

    monkeypatch.setenv("PATH", str(tmp_path))  # a host without crun, runc or conmon
    with pytest.raises(NovaError, match="no OCI runtime found") as caught:
        driver.create(container(tmp_path, name="nort"))
    assert caught.value.hint == "apt-get install crun (or runc)"
    assert not driver.files(container(tmp_path, name="nort")).root.exists()


def test_init_passes_sigterm_on_to_a_program_that_ignores_it_as_pid_1(
        driver: CapsuleDriver, tmp_path: Path) -> None:
    """busybox sleep as PID 1 ignores SIGTERM (no handler), so its stop ends with SIGKILL
    (137); with init = true catatonit is PID 1, sleep gets the SIGTERM and dies of it
    (143), and the capsule's root filesystem gets no trace of the init's mount point."""
    plain = container(tmp_path, name="plain", command=["sleep", "600"])
    wrapped = container(tmp_path, name="wrapped", command=["sleep", "600"], init=True,
                        stop_timeout=10.0)
    for spec in (plain, wrapped):
        driver.create(spec)
    try:
        for spec in (plain, wrapped):
            driver.start(spec)
        first = exec_out(driver, wrapped, "tr '\\0' ' ' < /proc/1/cmdline").stdout
        assert first.split() == ["/dev/init", "--", "sleep", "600"]
        assert exec_out(driver, plain, "tr '\\0' ' ' < /proc/1/cmdline").stdout.split() == \
            ["sleep", "600"]
        driver.stop(plain, 1.0)
        driver.stop(wrapped, 10.0)
        assert driver.status(plain).exit_code == 137
        assert driver.status(wrapped).exit_code == 143
        upper = driver.files(wrapped).upper
        assert upper.is_dir() and not [p for p in upper.rglob("*") if p.name == "init"]
    finally:
        for spec in (plain, wrapped):
            driver.delete(spec)


def test_init_without_an_init_program_is_a_clear_error(driver: CapsuleDriver, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from nova_capsule import bundle

    monkeypatch.setattr(bundle, "INIT_PROGRAMS", (str(tmp_path / "no-catatonit"),))
    spec = container(tmp_path, name="noinit", init=True)
    with pytest.raises(NovaError, match="init = true needs an init program") as caught:
        driver.create(spec)
    assert caught.value.hint == "apt-get install catatonit"
    assert not driver.files(spec).root.exists()


def test_image_rm_keeps_layers_capsules_use(driver: CapsuleDriver, running: ContainerSpec,
                                            run_nova, capsule_home: Path) -> None:
    from nova_capsule.images import find_local, image_store

    record = find_local(capsule_home, "test/busybox:1")
    assert record is not None
    assert run_nova("image", "rm", "test/busybox:1").returncode == 0
    assert image_store(capsule_home).layer_path(record.layers[0]).is_dir()
    assert driver.stop(running, 3).state.value == "stopped"
    assert driver.start(running).state.value == "running"  # still startable


def test_runc_runs_capsules_too(driver: CapsuleDriver, tmp_path: Path) -> None:
    from nova_capsule.driver import CapsuleOptions

    spec = container(tmp_path, name="r1", options=CapsuleOptions(runtime="runc"))
    driver.create(spec)
    try:
        assert driver.start(spec).state.value == "running"
        assert driver.files(spec).read().runtime == "runc"
        assert exec_out(driver, spec, "cat /proc/self/uid_map").stdout.split()[0] == "0"
        assert driver.stop(spec, 3).state.value == "stopped"
    finally:
        driver.delete(spec)


@pytest.mark.parametrize("running", [{"cpu": 0.5, "hostname": "box1", "workdir": "/tmp",
                                      "uid": 65534, "gid": 65534}], indirect=True)
def test_seed_fields_cpu_quota_and_private_network(driver: CapsuleDriver,
                                                   running: ContainerSpec) -> None:
    done = exec_out(driver, running, "hostname; pwd; ip -o link | cut -d: -f2")
    assert done.stdout.split() == ["box1", "/tmp", "lo"]  # only loopback until a network attaches
    status = Path(f"/proc/{driver.status(running).data['pid']}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    base = driver.files(running).read().uid_base
    assert uid_line.split()[1] == str(base + 65534)  # uid 65534 inside, inside the range outside
    quota = [d for d in cgroup_dirs(capsule_id("capt", "c1"))
             if (d / "cpu.cfs_quota_us").exists() or (d / "cpu.max").exists()]
    text = (quota[0] / "cpu.cfs_quota_us").read_text().strip() if \
        (quota[0] / "cpu.cfs_quota_us").exists() else (quota[0] / "cpu.max").read_text().split()[0]
    assert text == "50000"


def test_exec_with_a_terminal(driver: CapsuleDriver, running: ContainerSpec) -> None:
    """`nova exec -it` gives the command a terminal (script(1) plays the user's terminal)."""
    import shlex
    import shutil

    script = shutil.which("script")
    assert script, "util-linux script is needed"
    argv = shlex.join(driver.exec_argv(running, ["sh", "-c", "tty; test -t 0 && echo is-a-tty"],
                                       tty=True))
    # script's stdin stays open (we hold the pipe's write end): at an end of input script
    # passes a byte to the terminal, whose echo (^@) could land in the command's output
    quiet, held = os.pipe()
    try:
        done = subprocess.run([script, "-qec", argv, "/dev/null"], capture_output=True,
                              text=True, timeout=30, stdin=quiet)
    finally:
        os.close(quiet)
        os.close(held)
    lines = done.stdout.replace("\r", "").split("\n")
    assert "/dev/pts/" in lines[0] and "is-a-tty" in lines


def test_capsule_root_cannot_leave_host_root_files(driver: CapsuleDriver, tmp_path: Path) -> None:
    from nova_core.novafile.values import parse_volume

    vol = tmp_path / "vol"
    vol.mkdir()
    vol.chmod(0o777)
    spec = container(tmp_path, name="suid", volumes=[parse_volume(f"{vol}:/vol", tmp_path)])
    driver.create(spec)
    try:
        driver.start(spec)
        done = exec_out(driver, spec, "cp /bin/busybox /vol/pwn && chmod 4755 /vol/pwn; "
                                      "grep ' /vol ' /proc/self/mountinfo")
        assert "nosuid" in done.stdout and "nodev" in done.stdout
        info = (vol / "pwn").stat()
        assert info.st_uid == driver.files(spec).read().uid_base != 0  # setuid to nobody useful
        run_dir = driver.files(spec).run_dir
        assert run_dir.stat().st_uid == info.st_uid and (run_dir.stat().st_mode & 0o777) == 0o700
        rootfs = str(driver.files(spec).rootfs)
        overlay = next(line for line in open("/proc/self/mountinfo") if f" {rootfs} " in line)
        assert "nodev" in overlay.split(" - ")[0]
    finally:
        driver.delete(spec)


def test_capsule_ids_do_not_collide() -> None:
    assert capsule_id("x-y", "z") != capsule_id("x", "y-z")
    assert capsule_id("p", "web").startswith("nova-web-")


def test_restore_of_a_paused_capsule(driver: CapsuleDriver, running: ContainerSpec) -> None:
    exec_out(driver, running, "echo one > /root/f")
    driver.snapshot(running, "s")
    exec_out(driver, running, "echo two > /root/f")
    runtime = driver._runtime(running)
    runtime.call("pause", driver.files(running).read().id)
    driver.restore_snapshot(running, "s")
    driver.start(running)
    assert exec_out(driver, running, "cat /root/f; echo ok > /root/g && cat /root/g").stdout == \
        "one\nok\n"


def test_user_lookup_never_follows_links_out_of_the_capsule(driver: CapsuleDriver,
                                                             tmp_path: Path) -> None:
    from nova_core.errors import NovaError

    spec = container(tmp_path, name="pw", user="nobody")
    driver.create(spec)
    try:
        assert driver.start(spec).state.value == "running"  # a real /etc/passwd works
        assert exec_out(driver, spec, "id -u").stdout.strip() == "65534"
        driver.stop(spec, 3)
        upper_etc = driver.files(spec).upper / "etc"
        upper_etc.mkdir(exist_ok=True)
        (upper_etc / "passwd").unlink(missing_ok=True)
        (upper_etc / "passwd").symlink_to("/etc/passwd")
        with pytest.raises(NovaError, match="must be a regular file"):
            driver.start(spec)
        (upper_etc / "passwd").unlink()
        os.mkfifo(upper_etc / "passwd")
        with pytest.raises(NovaError, match="not a regular file"):
            driver.start(spec)  # and no hang on the FIFO
    finally:
        driver.delete(spec)


def test_image_rm_does_not_break_a_capsule(driver: CapsuleDriver, running: ContainerSpec,
                                           run_nova, capsule_home: Path) -> None:
    assert run_nova("image", "rm", "test/busybox:1").returncode == 0
    driver.stop(running, 3)
    assert driver.start(running).state.value == "running"


def test_a_failing_automatic_restart_is_recorded_and_cleaned(driver: CapsuleDriver,
                                                             tmp_path: Path, run_nova,
                                                             capsule_home: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "NovaFile").write_text(
        'project = "selfharm"\n[container.c]\ncapsule = "test/busybox:1"\nrestart = "always"\n'
        'command = ["/bin/sh", "-c", "rm /bin/sh; exit 1"]\nstop_timeout = 2\n')
    assert run_nova("up", cwd=project).returncode == 0
    try:
        deadline = time.monotonic() + 20
        listing: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            listing = json.loads(run_nova("ls", "--json").stdout)
            if listing and "failed" in listing[0]["detail"]:
                break
            time.sleep(0.2)
        assert listing[0]["state"] == "stopped" and "restart 1 failed" in listing[0]["detail"]
        files = CapsuleDriver("capsule", DriverContext(nova_home=capsule_home)).files(
            ContainerSpec(ref=ResourceRef(project="selfharm", kind=ResourceKind.CONTAINER,
                                          name="c"), driver="capsule", base_dir=project))
        assert not any(str(files.rootfs) in line for line in open("/proc/self/mountinfo"))
    finally:
        assert run_nova("down", cwd=project).returncode == 0


def loop_devices_backing(image: Path) -> list[str]:
    """Loop devices whose backing file is ``image``."""
    found = []
    for entry in Path("/sys/block").glob("loop*/loop/backing_file"):
        if entry.read_text().strip().removesuffix(" (deleted)") == str(image):
            found.append(entry.parent.parent.name)
    return found


@pytest.mark.parametrize("running", [{"storage_size": 24 * 2**20}], indirect=True)
def test_storage_size_is_a_hard_limit_that_survives_restarts(driver: CapsuleDriver,
                                                             running: ContainerSpec) -> None:
    files = driver.files(running)
    image = files.rw_image.resolve()
    assert files.sized and files.upper.is_relative_to(files.rw)
    assert exec_out(driver, running, "dd if=/dev/zero of=/root/small bs=1M count=4").returncode == 0
    full = exec_out(driver, running, "dd if=/dev/zero of=/root/big bs=1M count=64")
    assert full.returncode != 0 and "No space left" in full.stderr, full
    exec_out(driver, running, "rm /root/big; echo kept > /root/marker")
    driver.snapshot(running, "s1")
    driver.stop(running, 3)
    assert not idmap.is_mounted(files.rw) and loop_devices_backing(image) == []
    driver.start(running)
    assert exec_out(driver, running, "cat /root/marker").stdout == "kept\n"
    driver.delete(running)
    assert not image.exists() and loop_devices_backing(image) == []


def test_too_small_a_storage_size_is_a_clear_error(driver: CapsuleDriver, tmp_path: Path,
                                                   capsule_home: Path) -> None:
    spec = container(tmp_path, storage_size=4096)
    with pytest.raises(NovaError, match="writable layer"):
        driver.create(spec)
    assert not driver.files(spec).root.exists()


def test_device_nodes_and_a_cdi_gpu(driver: CapsuleDriver, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A real host node (/dev/net/tun) by path, and a GPU from a CDI spec. This host has no
    GPU, so the CDI spec here (a JSON file in a folder NOVA_CDI_SPEC_DIRS names) maps a
    "GPU" to /dev/net/tun: what is tested is Nova's handling of a vendor's spec."""
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "example.json").write_text(json.dumps({
        "cdiVersion": "0.5.0", "kind": "example.com/gpu",
        "devices": [{"name": "0", "containerEdits": {
            "deviceNodes": [{"path": "/dev/examplegpu0", "hostPath": "/dev/net/tun"}]}}],
        "containerEdits": {"env": ["EXAMPLE_VISIBLE_DEVICES=all"]}}))
    monkeypatch.setenv("NOVA_CDI_SPEC_DIRS", str(cdi))
    spec = container(tmp_path, "dev1", devices=["/dev/net/tun"], gpu=True)
    driver.create(spec)
    try:
        driver.start(spec)
        done = exec_out(driver, spec, "ls -l /dev/net/tun /dev/examplegpu0; "
                                      "echo $EXAMPLE_VISIBLE_DEVICES; ls -l /dev/null")
        lines = done.stdout.splitlines()
        assert lines[0].startswith("crw") and "10, 200" in lines[0], done.stdout + done.stderr
        assert lines[1].startswith("crw") and "10, 200" in lines[1]
        assert lines[2] == "all"
    finally:
        driver.delete(spec)
    for fields, message in (({"devices": ["/etc/passwd"]}, "not a device node under /dev"),
                            ({"devices": ["/dev/nosuchdev"]}, "does not exist on this host"),
                            ({"devices": ["/dev/shm"]}, "is not a device node")):
        bad = container(tmp_path, "dev2", **fields)
        with pytest.raises(NovaError, match=message):
            driver.create(bad)
        assert driver.status(bad).state.value == "missing"
    monkeypatch.setenv("NOVA_CDI_SPEC_DIRS", str(tmp_path / "none"))
    nogpu = container(tmp_path, "dev3", gpu=True)
    with pytest.raises(NovaError, match="gpu = true but this host has no GPU"):
        driver.create(nogpu)
    assert driver.status(nogpu).state.value == "missing"


@pytest.mark.parametrize("make_namespace", [idmap.user_namespace_fd,
                                            idmap._user_namespace_fd_forked],
                         ids=["cloned-holder", "forked-holder"])
def test_idmapped_bind_maps_root_to_the_range(tmp_path: Path, make_namespace) -> None:  # noqa: ANN001
    """Both ways of making the mapping's user namespace (the CLONE_VM holder and the fork
    it falls back to) give a mount where host root's files belong to the range's base."""
    source, target = tmp_path / "src", tmp_path / "dst"
    source.mkdir()
    target.mkdir()
    (source / "file").write_text("x")
    os.chown(source / "file", 0, 0)
    os.chown(source, 1000, 1000)
    fd = make_namespace(300_000, 65_536)
    try:
        idmap.idmapped_bind(source, target, fd)
    finally:
        os.close(fd)
    try:
        assert (target / "file").stat().st_uid == 300_000
        assert (target / "file").stat().st_gid == 300_000
        assert target.stat().st_uid == 301_000  # uid 1000 is mapped too, not only root
        assert idmap.mounted_among([source, target]) == [target]
    finally:
        idmap.unmount(target)
    assert not idmap.is_mounted(target)


def test_mounts_under_finds_nested_mounts_in_order_and_unescapes_their_paths(
        tmp_path: Path) -> None:
    """One pass over the real mount table: mounts at or below the folders, in the order
    they were made, with a space in the path (written as \\040 by the kernel) decoded,
    and the ones to leave left out; a folder beside them with the same prefix is not
    below them."""
    source = tmp_path / "source"
    (source / "inner").mkdir(parents=True)  # outer/inner once source is bound at outer
    folder = tmp_path / "capsule dir"
    outer, inner, kept = folder / "outer", folder / "outer" / "inner", folder / "kept"
    beside = tmp_path / "capsule dir2"
    for path in (outer, kept, beside):
        path.mkdir(parents=True)
    made: list[Path] = []
    try:
        for target in (outer, inner, kept, beside):
            idmap.bind_mount(source, target, read_only=True)
            made.append(target)
        assert idmap.mounts_under([folder], leave=(kept,)) == [outer, inner]
        assert idmap.mounts_under([folder, beside]) == [outer, inner, kept, beside]
    finally:
        for target in reversed(made):
            idmap.unmount(target)
    assert idmap.mounts_under([folder, beside]) == []


def root_is_volatile(mountinfo: str) -> bool:
    """Whether the root mount in a /proc/self/mountinfo text is a volatile overlay (the
    kernel shows the option as ``volatile``, newer ones as ``fsync=volatile``)."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/":
            options = fields[-1].split(",")
            return "volatile" in options or "fsync=volatile" in options
    raise AssertionError(f"no root mount in {mountinfo!r}")


def test_a_throwaway_run_is_volatile_and_the_capsule_starts_normally_after(
        driver: CapsuleDriver, tmp_path: Path) -> None:
    """start_attached (``nova run --rm``) mounts the writable layer volatile: never synced,
    not even when unmounted. The kernel then marks the layer against any further mount;
    a later ordinary start of the same capsule (if it was not removed after all) lifts
    the mark and mounts it durable again, keeping what the run wrote."""
    spec = container(tmp_path)
    driver.create(spec)
    try:
        once = spec.model_copy(update={"command": ["sh", "-c",
                                                   "echo kept > /kept; cat /proc/self/mountinfo"]})
        run = driver.start_attached(once)
        assert run is not None
        lines = [line.text for line in run.output()]
        assert run.wait() == 0
        assert root_is_volatile("\n".join(lines))
        work = driver.files(spec).work
        assert (work / "work" / "incompat" / "volatile").is_dir()  # the kernel's mark
        driver.start(spec)
        done = exec_out(driver, spec, "cat /kept; cat /proc/self/mountinfo")
        assert done.stdout.startswith("kept\n"), done
        assert not root_is_volatile(done.stdout)
    finally:
        driver.delete(spec)


def test_delete_removes_the_capsules_cgroups(driver: CapsuleDriver, tmp_path: Path) -> None:
    """The leak check after each test sees only the cgroups of capsules that still have
    folders; this one looks for a deleted capsule's, in every hierarchy it had."""
    spec = container(tmp_path, name="cg")
    driver.create(spec)
    try:
        driver.start(spec)
        made = cgroup_dirs(capsule_id("capt", "cg"))
        assert made and all(path.parent.name == "nova" for path in made), made
        assert str(driver.status(spec).data["pid"]) in (made[0] / "cgroup.procs").read_text().split()
    finally:
        driver.delete(spec)
    assert [path for path in made if path.exists()] == []


SYSCALL_PROBE = r"""
#include <errno.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
/* calls that succeed for any process unless a seccomp filter refuses them */
int main(void)
{
    long calls[][4] = {{SYS_personality, 0xffffffff, 0, 0},      /* query the persona */
                       {SYS_keyctl, 0, -3, 0},                      /* session keyring's id */
                       {SYS_get_mempolicy, 0, 0, 0}};
    const char *names[] = {"personality", "keyctl", "get_mempolicy"};
    for (int i = 0; i < 3; i++) {
        long result = syscall(calls[i][0], calls[i][1], calls[i][2], calls[i][3], 0, 0);
        printf("%s %d\n", names[i], result < 0 ? errno : 0);
    }
    return 0;
}
"""


def test_the_seccomp_profile_refuses_what_capabilities_would_allow(driver: CapsuleDriver,
                                                                   tmp_path: Path) -> None:
    """System calls that need no capability and succeed on the host (a static probe built
    here with gcc) fail with EPERM in a capsule: only its seccomp profile refuses them."""
    from nova_core.novafile.values import parse_volume

    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "probe.c").write_text(SYSCALL_PROBE)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(probe / "probe"), str(probe / "probe.c")],
                   check=True, capture_output=True, timeout=120)
    host = subprocess.run([str(probe / "probe")], capture_output=True, text=True, check=True)
    assert host.stdout.split("\n")[:3] == ["personality 0", "keyctl 0", "get_mempolicy 0"]
    spec = container(tmp_path, name="sc", volumes=[parse_volume(f"{probe}:/probe:ro", tmp_path)])
    driver.create(spec)
    try:
        driver.start(spec)
        inside = exec_out(driver, spec, "/probe/probe")
        assert inside.returncode == 0, inside
        assert inside.stdout.split("\n")[:3] == ["personality 1", "keyctl 1", "get_mempolicy 1"]
    finally:
        driver.delete(spec)


def test_root_filesystem_persists_across_a_reboot(driver: CapsuleDriver, running: ContainerSpec,
                                                 capsule_home: Path) -> None:
    """What a reboot clears, cleared by hand: every process and mount of the capsule and
    Nova's folder on /run (a tmpfs on a real host); after it a new process (here a new
    driver) starts the capsule. The upper dir under NOVA_HOME keeps the capsule's
    changes, and it starts again from its records."""
    from nova_core.hostinfo.processes import find_processes
    from nova_core.testing.cleanup import remove_run_folders

    assert exec_out(driver, running, "echo kept > /root/marker").returncode == 0
    assert driver.stop(running, 3).state.value == "stopped"
    files = driver.files(running)
    files.unmount()
    for pid, _program in find_processes(("conmon", "crun"), str(run_root(capsule_home))):
        os.kill(pid, 9)
    remove_run_folders(capsule_home)
    assert not run_root(capsule_home).exists()
    booted = CapsuleDriver("capsule", DriverContext(nova_home=capsule_home))
    booted.start(running)
    assert booted.status(running).state.value == "running"
    assert exec_out(booted, running, "cat /root/marker").stdout == "kept\n"

