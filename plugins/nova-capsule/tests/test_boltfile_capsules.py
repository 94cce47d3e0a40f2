"""A Boltfile brought up as capsules through the real CLI: order, health, env, volumes,
and the compose-style default network (needs nova-bridge, installed with the suite);
and a NovaFile capsule changed in place by a second ``nova up``."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from nova_capsule.cgroups import cgroup_dirs
from nova_capsule.driver import capsule_id

BOLTFILE = """
project = "shop"

[services.db]
image = "test/busybox:1"
command = ["sh", "-c", "trap 'exit 0' TERM; sleep 1; touch /tmp/ready; while true; do sleep 0.1; done"]
environment = ["DB_PASSWORD=hunter2-secret"]
stop_timeout = 2
[services.db.healthcheck]
test = ["CMD-SHELL", "test -f /tmp/ready"]
interval = "0.2s"
retries = 40

[services.web]
image = "test/busybox:1"
command = ["sh", "-c", "trap 'exit 0' TERM; echo web saw $GREETING; while true; do sleep 0.1; done"]
depends_on = { db = { condition = "service_healthy" } }
environment = { GREETING = "hello" }
volumes = ["./site:/srv/site:ro", "cache:/var/cache"]
restart = "always"
stop_timeout = 2

[volumes.cache]
"""


def assert_logs_follow(project: Path) -> None:
    """`nova logs -f` prints what is there, then what the capsule writes next, and keeps
    following (what PID 1 writes to its stdout is what the monitor logs)."""
    follow = subprocess.Popen([sys.executable, "-m", "nova_core.cli.main", "logs", "-f",
                               "container", "web"], cwd=project, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follow.stdout],  # type: ignore[union-attr]
                     daemon=True).start()
    try:
        assert lines.get(timeout=30).strip() == "web saw hello"
        subprocess.run([sys.executable, "-m", "nova_core.cli.main", "exec", "container", "web",
                        "--", "sh", "-c", "echo written-later > /proc/1/fd/1"], cwd=project,
                       check=True, timeout=60)
        assert lines.get(timeout=30).strip() == "written-later"
        assert follow.poll() is None  # still following
    finally:
        follow.kill()
        follow.wait()


def test_boltfile_up_waits_for_health_and_wires_things(run_nova, capsule_home: Path,
                                                         tmp_path: Path) -> None:
    project = tmp_path / "shop"
    (project / "site").mkdir(parents=True)
    (project / "site" / "index.html").write_text("hi")
    (project / "Boltfile.toml").write_text(textwrap.dedent(BOLTFILE))
    try:
        started = time.monotonic()
        up = run_nova("up", cwd=project, timeout=120)
        assert up.returncode == 0, up.stderr
        assert time.monotonic() - started >= 1.0  # web waited for db's health check
        assert "waiting for container.db to be healthy" in up.stderr
        assert "hunter2-secret" not in up.stdout + up.stderr
        order = [line.split()[2].rstrip(":") for line in up.stdout.splitlines() if "creating" in line]
        assert order[2:] == ["container.db", "container.web"]
        assert set(order[:2]) == {"volume.cache", "network.default"}  # compose's default network
        by_name = run_nova("exec", "container", "web", "--", "ping", "-c1", "-W2", "db.shop.nova",
                           cwd=project)
        assert by_name.returncode == 0, by_name.stdout + by_name.stderr
        listing = {i["name"]: i["state"] for i in json.loads(run_nova("ls", "--json").stdout)}
        assert listing == {"db": "running", "web": "running"}
        logs = run_nova("logs", "container", "web", cwd=project)
        assert logs.stdout.strip() == "web saw hello"
        stamped = run_nova("logs", "container", "web", "--timestamps", cwd=project).stdout
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S* web saw hello\n", stamped), stamped
        assert_logs_follow(project)
        status = run_nova("exec", "container", "web", "--", "sh", "-c", "exit 7", cwd=project)
        assert status.returncode == 7, status  # the command's own exit status
        site = run_nova("exec", "container", "web", "--", "cat", "/srv/site/index.html", cwd=project)
        assert site.returncode == 0 and site.stdout == "hi"
        readonly = run_nova("exec", "container", "web", "--", "touch", "/srv/site/x", cwd=project)
        assert readonly.returncode != 0
        cache = run_nova("exec", "container", "web", "--", "sh", "-c", "echo c > /var/cache/f",
                         cwd=project)
        assert cache.returncode == 0
        volume_path = json.loads(run_nova("volume", "ls", "--json").stdout)[0]["path"]
        assert (Path(volume_path) / "f").read_text() == "c\n"
    finally:
        down = run_nova("down", "--volumes", cwd=project, timeout=120)
    assert down.returncode == 0, down.stderr
    assert run_nova("ls", "--json").stdout.strip() == "[]"


def test_unhealthy_dependency_is_a_clear_error(run_nova, capsule_home: Path, tmp_path: Path) -> None:
    project = tmp_path / "sick"
    project.mkdir()
    (project / "Boltfile.toml").write_text(textwrap.dedent("""
        [services.db]
        image = "test/busybox:1"
        command = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
        stop_timeout = 2
        [services.db.healthcheck]
        test = ["CMD", "false"]
        interval = "0.1s"
        retries = 3
        timeout = "1s"
        [services.web]
        image = "test/busybox:1"
        depends_on = ["db"]
    """))
    try:
        up = run_nova("up", cwd=project, timeout=120)
        assert up.returncode == 1
        assert "container.web depends on container.db, whose health check still fails" in up.stderr
        assert "Traceback" not in up.stderr
    finally:
        assert run_nova("down", cwd=project, timeout=120).returncode == 0


def test_host_network_is_flagged_in_plan(run_nova, capsule_home: Path, tmp_path: Path) -> None:
    (tmp_path / "NovaFile").write_text('[container.h]\ncapsule = "test/busybox:1"\n'
                                       'network = "host"\n')
    plan = run_nova("plan", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "shares the host's network; it is not isolated" in plan.stdout
    (tmp_path / "NovaFile").unlink()
    (tmp_path / "Boltfile.toml").write_text('[services.h]\nimage = "test/busybox:1"\n'
                                            'network_mode = "host"\n')  # compose's spelling
    plan = run_nova("plan", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "shares the host's network; it is not isolated" in plan.stdout


UPDATED = """
project = "upd"

[container.svc]
capsule = "test/busybox:1"
command = ["sleep", "600"]
stop_timeout = 2
"""


def test_changing_init_env_or_memory_restarts_the_capsule_and_keeps_its_files(
        run_nova, capsule_home: Path, tmp_path: Path) -> None:
    """Fields written to the OCI config at each start are updated by a restart, not a
    replace: what the capsule wrote to its root filesystem is still there."""
    (tmp_path / "NovaFile").write_text(UPDATED)
    try:
        assert run_nova("up", cwd=tmp_path, timeout=120).returncode == 0
        wrote = run_nova("exec", "container", "svc", "--", "sh", "-c", "echo kept > /etc/mine",
                         cwd=tmp_path)
        assert wrote.returncode == 0, wrote.stderr
        (tmp_path / "NovaFile").write_text(UPDATED + 'init = true\nenv.MODE = "two"\n'
                                           'memory = "64Mi"\n')
        plan = json.loads(run_nova("plan", "--json", cwd=tmp_path).stdout)
        assert [(s["action"], s["reason"]) for s in plan["steps"]] == [
            ("update", "changed: env, init, memory")]
        up = run_nova("up", cwd=tmp_path, timeout=120)
        assert up.returncode == 0, up.stderr
        seen = run_nova("exec", "container", "svc", "--", "sh", "-c",
                        "tr '\\0' ' ' < /proc/1/cmdline; echo; echo $MODE; cat /etc/mine",
                        cwd=tmp_path)
        assert seen.stdout.split("\n")[:3] == ["/dev/init -- sleep 600 ", "two", "kept"]
        limits = [(d / name).read_text().strip() for d in cgroup_dirs(capsule_id("upd", "svc"))
                  for name in ("memory.max", "memory.limit_in_bytes") if (d / name).exists()]
        assert limits == [str(64 * 2**20)]
        # stop_timeout alone is Nova's own business: no restart
        listing = run_nova("ls", "--json").stdout  # started time and pid
        (tmp_path / "NovaFile").write_text(UPDATED.replace("stop_timeout = 2", "stop_timeout = 3")
                                           + 'init = true\nenv.MODE = "two"\nmemory = "64Mi"\n')
        assert run_nova("up", cwd=tmp_path, timeout=120).returncode == 0
        assert run_nova("ls", "--json").stdout == listing
    finally:
        down = run_nova("down", cwd=tmp_path, timeout=120)
    assert down.returncode == 0, down.stderr


def test_boltfile_restart_policies_are_the_capsules(run_nova, capsule_home: Path,
                                                   tmp_path: Path) -> None:
    """A service's ``restart`` becomes its capsule's policy, honoured by the monitor's exit
    hook without any nova process: on-failure runs a failing service again (with backoff),
    "no" leaves it exited."""
    project = tmp_path / "flaky"
    project.mkdir()
    (project / "Boltfile.toml").write_text(textwrap.dedent("""
        [services.flaky]
        image = "test/busybox:1"
        command = ["sh", "-c", "echo run; exit 3"]
        restart = "on-failure"
        [services.once]
        image = "test/busybox:1"
        command = ["sh", "-c", "echo run; exit 3"]
        restart = "no"
    """))

    def runs(name: str) -> int:
        return run_nova("logs", "container", name, cwd=project).stdout.split().count("run")

    try:
        up = run_nova("up", cwd=project, timeout=120)
        assert up.returncode == 0, up.stderr
        deadline = time.monotonic() + 30
        while runs("flaky") < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert runs("flaky") >= 3  # the first run and two restarts (0.2 s, then 0.4 s later)
        assert runs("once") == 1
        listing = {i["name"]: i for i in json.loads(run_nova("ls", "--json").stdout)}
        assert listing["once"]["state"] == "stopped", listing
    finally:
        down = run_nova("down", cwd=project, timeout=120)
    assert down.returncode == 0, down.stderr
