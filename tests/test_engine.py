"""plan / up / down through the real CLI, with the fake drivers, and crash recovery."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from nova_test_helpers import write_novafile

LAB = """
project = "lab"

[network.lan]
driver = "fake"
subnet = "10.50.0.0/24"

[volume.data]
driver = "fake"

[container.db]
driver = "fake"
capsule = "postgres"
network = "lan"
volumes = ["data:/var/lib/postgresql"]
env.POSTGRES_PASSWORD = "s3cret-value"

[container.web]
driver = "fake"
capsule = "nginx"
network = "lan"
depends_on = ["db"]
memory = "256Mi"
"""


def fake_state(nova_home: Path, kind: str = "compute") -> dict:
    path = nova_home / "drivers" / "fake" / f"{kind}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def recorded(nova_home: Path) -> dict[str, str]:
    with sqlite3.connect(nova_home / "state.db") as conn:
        return {f"{k}.{n}": s for k, n, s in conn.execute("SELECT kind, name, state FROM resources")}


@pytest.fixture
def lab(project_dir: Path, nova_fake_drivers: Path) -> Path:
    write_novafile(project_dir, LAB)
    return project_dir


def test_plan_orders_by_dependency_and_touches_nothing(lab: Path, run_nova, nova_home: Path) -> None:
    done = run_nova("plan", "--json", cwd=lab)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    order = [s["resource"] for s in plan["steps"]]
    assert order == ["network.lan", "volume.data", "container.db", "container.web"]
    assert {s["action"] for s in plan["steps"]} == {"create"}
    assert plan["steps"][2]["details"][0]["title"] == "fake compute"
    assert fake_state(nova_home) == {}
    assert not (nova_home / "state.db").exists() or recorded(nova_home) == {}


def test_up_is_idempotent_and_down_reverses(lab: Path, run_nova, nova_home: Path) -> None:
    first = run_nova("up", cwd=lab)
    assert first.returncode == 0, first.stderr
    assert "[4/4] creating container.web: done" in first.stdout
    assert recorded(nova_home) == {"network.lan": "created", "volume.data": "created",
                                   "container.db": "running", "container.web": "running"}
    members = fake_state(nova_home, "network")["lab/network/lan"]["members"]
    assert sorted(members) == ["db", "web"] and len(set(members.values())) == 2

    second = run_nova("up", cwd=lab)
    assert second.returncode == 0 and "up to date (4 unchanged)" in second.stdout
    assert fake_state(nova_home)["lab/container/db"]["log"] == ["created", "started"]

    listing = json.loads(run_nova("ls", "--json", check=True).stdout)
    assert [(i["name"], i["state"]) for i in listing] == [("db", "running"), ("web", "running")]
    nets = json.loads(run_nova("net", "ls", "--json", check=True).stdout)
    assert nets[0]["name"] == "lan" and nets[0]["attached"] == ["container.db", "container.web"]

    down = run_nova("down", cwd=lab)
    assert down.returncode == 0, down.stderr
    lines = [line for line in down.stdout.splitlines() if "removing" in line]
    assert [line.split()[2].rstrip(":") for line in lines] == [
        "container.web", "container.db", "network.lan"]
    assert "kept volume.data" in down.stdout
    assert recorded(nova_home) == {"volume.data": "created"}
    assert fake_state(nova_home) == {}
    assert fake_state(nova_home, "network") == {}
    gone = run_nova("down", "--volumes", cwd=lab)
    assert gone.returncode == 0 and recorded(nova_home) == {}
    assert fake_state(nova_home, "storage") == {}


def test_changes_are_updated_replaced_or_deleted(lab: Path, run_nova, nova_home: Path) -> None:
    run_nova("up", cwd=lab, check=True)
    changed = LAB.replace('memory = "256Mi"', 'memory = "512Mi"').replace(
        'capsule = "postgres"', 'capsule = "postgres:16"')
    changed = changed.replace('[volume.data]\ndriver = "fake"\n', "").replace(
        'volumes = ["data:/var/lib/postgresql"]\n', "")
    write_novafile(lab, changed)
    plan = json.loads(run_nova("plan", "--json", cwd=lab, check=True).stdout)
    actions = {s["resource"]: (s["action"], s["reason"]) for s in plan["steps"]}
    assert actions["container.web"] == ("update", "changed: memory")
    assert actions["container.db"][0] == "replace"
    assert "image" in actions["container.db"][1] and "volumes" in actions["container.db"][1]
    assert "volume.data" not in actions and plan["kept"] == ["volume.data"]
    assert actions["network.lan"][0] == "unchanged"
    run_nova("up", cwd=lab, check=True)
    web_log = fake_state(nova_home)["lab/container/web"]["log"]
    assert web_log == ["created", "started", "updated memory"]
    assert run_nova("up", cwd=lab, check=True).stdout.strip().endswith("(3 unchanged)")
    assert fake_state(nova_home, "storage") != {}  # the volume and its data were kept


def test_a_spec_recorded_before_a_field_existed_is_not_replaced(lab: Path, run_nova,
                                                                 nova_home: Path) -> None:
    """An upgrade adds a field (``init`` came this way): the spec an older Nova
    recorded lacks it and has another digest, yet nothing the user wrote changed."""
    run_nova("up", cwd=lab, check=True)
    with sqlite3.connect(nova_home / "state.db") as conn:
        (text,) = conn.execute("SELECT spec FROM resources WHERE name = 'web'").fetchone()
        old = json.loads(text)
        del old["init"]
        conn.execute("UPDATE resources SET spec = ?, spec_hash = ? WHERE name = 'web'",
                     (json.dumps(old), "0" * 64))
    plan = json.loads(run_nova("plan", "--json", cwd=lab, check=True).stdout)
    actions = {s["resource"]: s["action"] for s in plan["steps"]}
    assert actions["container.web"] == "unchanged"
    assert run_nova("up", cwd=lab, check=True).stdout.strip().endswith("(4 unchanged)")
    assert fake_state(nova_home)["lab/container/web"]["log"] == ["created", "started"]
    # a real change to the same resource is still seen
    write_novafile(lab, LAB.replace('memory = "256Mi"', 'memory = "512Mi"'))
    plan = json.loads(run_nova("plan", "--json", cwd=lab, check=True).stdout)
    assert {s["resource"]: (s["action"], s["reason"]) for s in plan["steps"]}[
        "container.web"] == ("update", "changed: memory")


def test_secrets_never_printed(lab: Path, run_nova) -> None:
    for args in (("plan",), ("plan", "--json"), ("validate", "--json"), ("up",)):
        done = run_nova(*args, cwd=lab)
        assert "s3cret-value" not in done.stdout + done.stderr, args


def test_observed_state_drives_the_plan(lab: Path, run_nova, nova_home: Path) -> None:
    run_nova("up", cwd=lab, check=True)
    stopped = run_nova("stop", "container", "web", cwd=lab)
    assert stopped.returncode == 0 and "container.web: stopped" in stopped.stdout
    # remove db behind Nova's back, as if someone deleted it by hand
    state_file = nova_home / "drivers" / "fake" / "compute.json"
    data = json.loads(state_file.read_text())
    del data["lab/container/db"]
    state_file.write_text(json.dumps(data))
    plan = json.loads(run_nova("plan", "--json", cwd=lab, check=True).stdout)
    actions = {s["resource"]: (s["action"], s["reason"]) for s in plan["steps"]}
    assert actions["container.db"][0] == "create" and "missing on the host" in actions[
        "container.db"][1]
    assert actions["container.web"] == ("update", "stopped on the host: it will be started")
    run_nova("up", cwd=lab, check=True)
    assert recorded(nova_home)["container.web"] == "running"
    assert fake_state(nova_home)["lab/container/db"]["state"] == "running"


def test_failure_stops_records_and_resumes(lab: Path, run_nova, nova_home: Path) -> None:
    write_novafile(lab, LAB.replace('depends_on = ["db"]', 'depends_on = ["db"]\nfail_on = "start"'))
    failed = run_nova("up", cwd=lab)
    assert failed.returncode == 1
    assert "container.web: create failed: fake driver: injected failure in start" in failed.stderr
    assert "3 of 4 steps were applied and recorded" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert recorded(nova_home)["container.web"] == "failed"
    write_novafile(lab, LAB)
    plan = json.loads(run_nova("plan", "--json", cwd=lab, check=True).stdout)
    web = next(s for s in plan["steps"] if s["resource"] == "container.web")
    assert web["action"] == "create" and "did not finish" in web["reason"]
    resumed = run_nova("up", cwd=lab)
    assert resumed.returncode == 0, resumed.stderr
    assert "[1/1] creating container.web: done" in resumed.stdout
    assert recorded(nova_home)["container.web"] == "running"
    members = fake_state(nova_home, "network")["lab/network/lan"]["members"]
    assert sorted(members) == ["db", "web"]


def test_crash_in_the_middle_then_up_converges(lab: Path, run_nova, nova_home: Path) -> None:
    write_novafile(lab, LAB.replace('depends_on = ["db"]', 'depends_on = ["db"]\ncrash_on = "create"'))
    crashed = run_nova("up", cwd=lab)
    assert crashed.returncode == 70  # the process died inside the driver call
    assert recorded(nova_home)["container.web"] == "creating"
    members = fake_state(nova_home, "network")["lab/network/lan"]["members"]
    assert "web" not in members  # networks are attached after create, before start
    write_novafile(lab, LAB)
    again = run_nova("up", cwd=lab)
    assert again.returncode == 0, again.stderr
    assert recorded(nova_home)["container.web"] == "running"
    compute = fake_state(nova_home)
    assert compute["lab/container/web"]["log"] == ["created", "started"]
    members = fake_state(nova_home, "network")["lab/network/lan"]["members"]
    assert sorted(members) == ["db", "web"]
    assert run_nova("up", cwd=lab, check=True).stdout.strip().endswith("(4 unchanged)")


def test_two_concurrent_ups_do_not_interleave(lab: Path, nova_home: Path) -> None:
    write_novafile(lab, LAB.replace('memory = "256Mi"', 'memory = "256Mi"\ndelay = 0.3'))
    command = [sys.executable, "-m", "nova_core.cli.main", "up"]
    first = subprocess.Popen(command, cwd=lab, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    second = subprocess.Popen(command, cwd=lab, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    out1, err1 = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert "waiting for another nova process" in err1 + err2
    assert "up to date" in out1 + out2  # the later one found the work done
    assert fake_state(nova_home)["lab/container/web"]["log"] == ["created", "started"]


def test_up_of_named_instance_brings_its_dependencies(lab: Path, run_nova, nova_home: Path) -> None:
    done = run_nova("up", "db", cwd=lab)
    assert done.returncode == 0, done.stderr
    assert set(recorded(nova_home)) == {"network.lan", "volume.data", "container.db"}
    unknown = run_nova("up", "nope", cwd=lab)
    assert unknown.returncode == 1 and "'nope' is not declared" in unknown.stderr


def test_instance_commands_dispatch_to_the_driver(lab: Path, run_nova, nova_home: Path,
                                                  tmp_path: Path) -> None:
    ran = run_nova("run", "container", "web", cwd=lab)
    assert ran.returncode == 0, ran.stderr
    assert "container.web: running" in ran.stdout
    assert set(recorded(nova_home)) == {"network.lan", "volume.data", "container.db",
                                        "container.web"}
    snap = run_nova("snapshot", "container", "web", "--name", "before", cwd=tmp_path)
    assert snap.returncode == 0, snap.stderr  # found through state, no NovaFile here
    assert fake_state(nova_home)["lab/container/web"]["snapshots"] == ["before"]
    logs = run_nova("logs", "container", "web", "--tail", "2", cwd=tmp_path)
    assert logs.stdout.splitlines() == ["started", "snapshot before"]
    stop = run_nova("stop", "container", "web", cwd=tmp_path)
    assert stop.returncode == 0 and recorded(nova_home)["container.web"] == "stopped"
    missing = run_nova("stop", "vm", "ghost", cwd=tmp_path)
    assert missing.returncode == 1 and "no vm named 'ghost' is recorded" in missing.stderr
    undeclared = run_nova("run", "vm", "web", cwd=lab)
    assert undeclared.returncode == 1 and "vm.web is not declared" in undeclared.stderr


def test_missing_driver_says_which_package(project_dir: Path, run_nova, nova_home: Path) -> None:
    write_novafile(project_dir, """
        [vm.a]
        cpu = 1
        driver = "cloud-hypervisor"
        [network.n]
        driver = "warp"
    """)
    done = run_nova("up", cwd=project_dir)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "vm.a: no compute driver 'cloud-hypervisor'" in done.stderr and "nova-qemu" in done.stderr
    assert "network.n: no network driver 'warp'" in done.stderr
    assert not (nova_home / "state.db").exists() or recorded(nova_home) == {}
    stop = run_nova("run", "vm", "a", cwd=project_dir)
    assert stop.returncode == 1 and "nova-qemu" in stop.stderr


def test_gpu_passthrough_reserves_and_releases(project_dir: Path, fake_distribution, run_nova,
                                                nova_home: Path, monkeypatch) -> None:
    monkeypatch.setenv("NOVA_DISABLE_PLUGINS", "nova-vfio")  # the fake stands in for it here
    fake_distribution("nova-fake-all", {
        "nova_core.compute": {"fake": "nova_core.testing.fakes:FakeComputeDriver"},
        "nova_core.device": {"vfio": "nova_core.testing.fakes:FakeDeviceDriver"},
    })
    write_novafile(project_dir, """
        [vm.g1]
        driver = "fake"
        gpu_passthrough = true
        [vm.g2]
        driver = "fake"
        devices = ["0000:01:00.0"]
    """)
    done = run_nova("up", cwd=project_dir)
    assert done.returncode == 1
    assert "vm.g2: create failed: fake: 0000:01:00.0 is held by proj/vm.g1" in done.stderr
    held = json.loads((nova_home / "drivers" / "vfio" / "device.json").read_text())["held"]
    assert held == {"0000:01:00.0": "proj/vm.g1"}
    run_nova("down", cwd=project_dir, check=True)
    held = json.loads((nova_home / "drivers" / "vfio" / "device.json").read_text())["held"]
    assert held == {}


def test_volume_data_is_never_deleted_implicitly(project_dir: Path, run_nova,
                                                 nova_home: Path, nova_fake_drivers) -> None:
    write_novafile(project_dir, '[volume.data]\nsize = "1Gi"\n')
    run_nova("up", cwd=project_dir, check=True)
    folder = nova_home / "drivers" / "local" / "proj" / "data" / "data"
    (folder / "keep.txt").write_text("precious")
    write_novafile(project_dir, '[volume.data]\nsize = "2Gi"\n')
    plan = json.loads(run_nova("plan", "--json", cwd=project_dir, check=True).stdout)
    assert [(s["action"], s["reason"]) for s in plan["steps"]] == [("update", "changed: size")]
    run_nova("up", cwd=project_dir, check=True)
    assert (folder / "keep.txt").read_text() == "precious"
    write_novafile(project_dir, '[volume.data]\ndriver = "fake"\n')
    refused = run_nova("up", cwd=project_dir)
    assert refused.returncode == 1 and "which deletes its data" in refused.stderr
    assert (folder / "keep.txt").read_text() == "precious"
    write_novafile(project_dir, 'project = "proj"\n')
    run_nova("up", cwd=project_dir, check=True)
    assert (folder / "keep.txt").read_text() == "precious"
    run_nova("down", "--volumes", cwd=project_dir, check=True)
    assert not folder.exists()


def test_a_failed_snapshot_does_not_condemn_the_instance(lab: Path, run_nova,
                                                         nova_home: Path) -> None:
    write_novafile(lab, LAB.replace('memory = "256Mi"', 'memory = "256Mi"\nfail_on = "snapshot"'))
    run_nova("up", cwd=lab, check=True)
    snap = run_nova("snapshot", "container", "web", cwd=lab)
    assert snap.returncode == 1 and "injected failure in snapshot" in snap.stderr
    assert recorded(nova_home)["container.web"] == "running"
    again = run_nova("up", cwd=lab, check=True)
    assert "up to date" in again.stdout
    assert fake_state(nova_home)["lab/container/web"]["log"] == ["created", "started"]


def test_removals_of_instances_come_before_creations(lab: Path, run_nova) -> None:
    run_nova("up", cwd=lab, check=True)
    write_novafile(lab, LAB.replace("[container.web]", "[container.web2]"))
    plan = json.loads(run_nova("plan", "--json", cwd=lab, check=True).stdout)
    changes = [(s["action"], s["resource"]) for s in plan["steps"] if s["action"] != "unchanged"]
    assert changes == [("delete", "container.web"), ("create", "container.web2")]


def test_network_replace_under_attached_instances_is_refused_up_front(lab: Path, run_nova,
                                                                      nova_home: Path) -> None:
    run_nova("up", cwd=lab, check=True)
    write_novafile(lab, LAB.replace("10.50.0.0/24", "10.60.0.0/24"))
    refused = run_nova("up", cwd=lab)
    assert refused.returncode == 1
    assert ("network.lan would be replaced (changed: subnet) but container.db, container.web "
            "are attached") in refused.stderr
    assert "nova down db web" in refused.stderr
    assert fake_state(nova_home, "network")["lab/network/lan"]["subnet"] == "10.50.0.0/24"
    run_nova("down", "db", "web", cwd=lab, check=True)
    run_nova("up", cwd=lab, check=True)
    assert fake_state(nova_home, "network")["lab/network/lan"]["subnet"] == "10.60.0.0/24"


def test_replace_checks_the_recorded_driver_before_anything(project_dir: Path, run_nova,
                                                            nova_home: Path, nova_fake_drivers,
                                                            fake_distribution) -> None:
    fake_distribution("nova-fake-two", {"nova_core.compute": {
        "fake2": "nova_core.testing.fakes:FakeComputeDriver"}})
    write_novafile(project_dir, '[container.a]\ndriver = "fake2"\n[vm.b]\ndriver = "fake"\n')
    run_nova("up", cwd=project_dir, check=True)
    write_novafile(project_dir, '[container.a]\ndriver = "fake2"\ncpu = 2\n'
                                '[vm.b]\ndriver = "fake2"\n')
    done = run_nova("up", cwd=project_dir, env={"NOVA_DISABLE_PLUGINS": "nova-fake-drivers"})
    assert done.returncode == 1
    assert "vm.b: compute driver 'fake' is provided by nova-fake-drivers, which is disabled" \
        in done.stderr
    log = json.loads((nova_home / "drivers/fake2/compute.json").read_text())["proj/container/a"]
    assert log["log"] == ["created", "started"]  # nothing was applied


def test_snapshot_group(lab: Path, run_nova, nova_home: Path, tmp_path: Path) -> None:
    run_nova("up", cwd=lab, check=True)
    assert run_nova("snapshot", "container", "web", "--name", "s1", cwd=tmp_path).returncode == 0
    again = run_nova("snapshot", "container", "web", "--name", "s1", cwd=tmp_path)
    assert again.returncode == 1 and "already has a snapshot named 's1'" in again.stderr
    bad = run_nova("snapshot", "container", "web", "--name", "no/slash", cwd=tmp_path)
    assert bad.returncode == 2
    listed = json.loads(run_nova("snapshot", "ls", "container", "web", "--json",
                                 cwd=tmp_path, check=True).stdout)
    assert [s["name"] for s in listed] == ["s1"]
    restored = run_nova("snapshot", "restore", "container", "web", "s1", cwd=tmp_path)
    assert restored.returncode == 0 and "restored to 's1' (running)" in restored.stdout
    assert fake_state(nova_home)["lab/container/web"]["log"][-1] == "restore s1"
    missing = run_nova("snapshot", "restore", "container", "web", "nope", cwd=tmp_path)
    assert missing.returncode == 1 and "has no snapshot named 'nope'" in missing.stderr
    assert run_nova("snapshot", "rm", "container", "web", "s1", cwd=tmp_path).returncode == 0
    assert run_nova("snapshot", "ls", "container", "web", cwd=tmp_path).stdout.strip() == \
        "container.web has no snapshots"
    assert "restore" in run_nova("snapshot", "--help").stdout


def test_volume_commands(lab: Path, run_nova, nova_home: Path, tmp_path: Path) -> None:
    created = run_nova("volume", "create", "scratch", "--size", "1Gi", cwd=tmp_path)
    assert created.returncode == 0 and "created in project 'default'" in created.stdout
    assert (nova_home / "drivers/local/default/scratch/data").is_dir()
    dup = run_nova("volume", "create", "scratch", cwd=tmp_path)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    assert run_nova("volume", "create", "bad/name", cwd=tmp_path).returncode == 2
    run_nova("up", cwd=lab, check=True)
    listing = {v["name"]: v for v in json.loads(run_nova("volume", "ls", "--json",
                                                         check=True).stdout)}
    assert listing["data"]["used_by"] == ["container.db"] and listing["scratch"]["used_by"] == []
    refused = run_nova("volume", "rm", "data", cwd=lab)
    assert refused.returncode == 1 and "in use by container.db" in refused.stderr
    run_nova("down", "db", "web", cwd=lab, check=True)
    assert run_nova("volume", "rm", "data", cwd=lab).returncode == 0
    assert run_nova("volume", "rm", "scratch", "-p", "default").returncode == 0
    assert not (nova_home / "drivers/local/default/scratch").exists()
    gone = run_nova("volume", "rm", "scratch", "-p", "default")
    assert gone.returncode == 1 and "no volume scratch" in gone.stderr


def test_kill_and_restart(lab: Path, run_nova, nova_home: Path, tmp_path: Path) -> None:
    run_nova("up", cwd=lab, check=True)
    killed = run_nova("kill", "container", "web", cwd=tmp_path)
    assert killed.returncode == 0 and "container.web: stopped" in killed.stdout
    restarted = run_nova("restart", "container", "web", cwd=tmp_path)
    assert restarted.returncode == 0 and "container.web: running" in restarted.stdout
    log = fake_state(nova_home)["lab/container/web"]["log"]
    assert log[-3:] == ["stopped", "stopped", "started"]
    assert recorded(nova_home)["container.web"] == "running"


def test_pause_on_a_driver_that_cannot_is_a_clear_error(project_dir: Path, run_nova,
                                                        nova_fake_drivers) -> None:
    write_novafile(project_dir, '[vm.a]\ndriver = "fake"\n')
    run_nova("up", cwd=project_dir, check=True)
    paused = run_nova("pause", "vm", "a", cwd=project_dir)
    assert paused.returncode == 1 and "Traceback" not in paused.stderr
    assert "vm.a: driver fake cannot pause instances" in paused.stderr
    listing = json.loads(run_nova("ls", "--json", cwd=project_dir, check=True).stdout)
    assert [(i["name"], i["state"]) for i in listing] == [("a", "running")]  # state untouched
    missing = run_nova("resume", "vm", "nosuch", cwd=project_dir)
    assert missing.returncode == 1 and "not recorded" in missing.stderr
    run_nova("down", cwd=project_dir, check=True)
