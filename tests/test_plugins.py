"""The plugin failure policy, branch by branch, with test-only distributions on the path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from nova_test_helpers import write_novafile

from nova_core.drivers.models import DriverKind
from nova_core.errors import DriverConflict, DriverLoadError, DriverNotFound
from nova_core.plugins import PluginRegistry

BROKEN_DRIVER = "import libvirt_that_is_not_installed\n"
HOOK_PLUGIN = '''
import json, os
from nova_core.hookspecs import hookimpl
from nova_core.drivers.models import RenderedDetail

@hookimpl
def nova_lifecycle_event(event):
    with open(os.environ["EVENTS_FILE"], "a") as handle:
        handle.write(json.dumps([event.phase, event.action, event.kind, event.name]) + "\\n")

@hookimpl
def nova_plan_render(step, driver):
    return [RenderedDetail(title="audit", body=f"audited {step.ref.key}")]

@hookimpl
def nova_doctor_checks():
    from nova_core.hooktypes import CheckResult
    return [CheckResult("audit", "audit log", "ok", "writable")]

@hookimpl
def nova_cli_commands():
    import click
    @click.command("hello", help="Say hello.")
    def hello():
        click.echo("hello from audit")
    return [hello]
'''


def registry(**kwargs) -> PluginRegistry:
    warnings: list[str] = []
    reg = PluginRegistry(warn=warnings.append, **kwargs)
    reg.test_warnings = warnings  # type: ignore[attr-defined]
    return reg


def test_absent_driver_names_the_package_and_the_alternatives(nova_fake_drivers: Path,
                                                              monkeypatch) -> None:
    reg = registry()
    monkeypatch.setattr(reg, "installed_version", lambda dist: None)  # as on a host without it
    with pytest.raises(DriverNotFound) as caught:
        reg.driver_class(DriverKind.COMPUTE, "cloud-hypervisor")
    assert caught.value.message == ("no compute driver 'cloud-hypervisor'; install nova-qemu "
                                    "(available: capsule, fake, libvirt, qemu)")
    with pytest.raises(DriverNotFound,
                       match=r"no network driver 'warp' \(available: bridge, fake, quic, sriov, vxlan\)"):
        reg.driver_class(DriverKind.NETWORK, "warp")


def test_absent_driver_of_an_installed_older_plugin(nova_fake_drivers: Path) -> None:
    with pytest.raises(DriverNotFound) as caught:
        registry().driver_class(DriverKind.COMPUTE, "cloud-hypervisor")
    assert "nova-qemu 0.1.0 is installed but does not provide it" in caught.value.message


def test_import_failure_names_distribution_and_cause(fake_distribution) -> None:
    fake_distribution("nova-broken", {"nova_core.compute": {"broken": "broken_mod:Driver"}},
                      modules={"broken_mod": BROKEN_DRIVER}, version="2.3")
    with pytest.raises(DriverLoadError) as caught:
        registry().driver_class(DriverKind.COMPUTE, "broken")
    message = caught.value.message
    assert message.startswith("compute driver 'broken' from nova-broken 2.3 failed to load:")
    assert "ModuleNotFoundError" in message and "libvirt_that_is_not_installed" in message


WARMING_DRIVERS = """
from nova_core.testing.fakes import FakeComputeDriver

WARMED = []


class Warmed(FakeComputeDriver):
    @classmethod
    def warm_up(cls):
        WARMED.append(cls.__name__)


class Failing(FakeComputeDriver):
    @classmethod
    def warm_up(cls):
        raise RuntimeError("no host facts here")
"""


def test_preload_warms_up_the_loaded_drivers_and_ignores_their_failures(
        fake_distribution) -> None:
    """What the warm helper's children inherit: each driver class whose module is loaded
    has run its warm_up once (a failing one is skipped: the child computes it itself);
    a driver whose module nobody imported stays unloaded."""
    fake_distribution("nova-warmed", {"nova_core.compute": {
        "warmed": "warming_mod:Warmed", "failing": "warming_mod:Failing",
        "lazy": "lazy_warming_mod:Warmed"}},
        modules={"warming_mod": WARMING_DRIVERS, "lazy_warming_mod": WARMING_DRIVERS})
    import warming_mod  # noqa: F401 - loaded, as the helper's preload leaves it

    try:
        reg = registry()
        assert reg.preload() is True
        assert sys.modules["warming_mod"].WARMED == ["Warmed"]
        assert "lazy_warming_mod" not in sys.modules
        assert reg.test_warnings == []  # type: ignore[attr-defined]
    finally:
        sys.modules.pop("warming_mod", None)


def test_import_failure_is_not_disguised_as_absence(fake_distribution) -> None:
    fake_distribution("nova-broken", {"nova_core.compute": {"broken": "broken_mod:Driver"}},
                      modules={"broken_mod": BROKEN_DRIVER})
    with pytest.raises(DriverLoadError):
        registry().try_driver_class(DriverKind.COMPUTE, "broken")


def test_wrong_base_class_is_a_load_error(fake_distribution) -> None:
    fake_distribution("nova-odd", {"nova_core.network": {"odd": "nova_core.testing.fakes:"
                                                         "FakeComputeDriver"}})
    with pytest.raises(DriverLoadError, match="is not a NetworkDriver"):
        registry().driver_class(DriverKind.NETWORK, "odd")


def test_duplicate_names_name_both_distributions(fake_distribution) -> None:
    target = "nova_core.testing.fakes:FakeComputeDriver"
    fake_distribution("nova-one", {"nova_core.compute": {"twin": target}})
    fake_distribution("nova-two", {"nova_core.compute": {"twin": target}}, version="3.0")
    with pytest.raises(DriverConflict) as caught:
        registry().driver_class(DriverKind.COMPUTE, "twin")
    assert "nova-one 1.0" in caught.value.message and "nova-two 3.0" in caught.value.message
    ok = registry(disabled=["nova-two"]).driver_class(DriverKind.COMPUTE, "twin")
    assert ok.__name__ == "FakeComputeDriver"


def test_disabled_plugin_is_reported_as_disabled(nova_fake_drivers: Path) -> None:
    reg = registry(disabled=["nova-fake-drivers"])
    with pytest.raises(DriverNotFound, match="disabled by NOVA_DISABLE_PLUGINS"):
        reg.driver_class(DriverKind.COMPUTE, "fake")
    assert "fake" not in reg.driver_names(DriverKind.COMPUTE)


def test_only_the_selected_driver_is_imported(fake_distribution, project_dir: Path,
                                              run_nova) -> None:
    """A broken unselected driver never matters: it is not imported."""
    fake_distribution("nova-broken", {"nova_core.compute": {"broken": "broken_mod:Driver"}},
                      modules={"broken_mod": BROKEN_DRIVER})
    fake_distribution("nova-fake-drivers", {"nova_core.compute": {
        "fake": "nova_core.testing.fakes:FakeComputeDriver"}})
    write_novafile(project_dir, '[vm.a]\ndriver = "fake"\n')
    done = run_nova("up", cwd=project_dir)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    selected = write_novafile(project_dir, '[vm.a]\ndriver = "broken"\n')
    failed = run_nova("up", "-f", str(selected), cwd=project_dir)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "from nova-broken 1.0 failed to load: ModuleNotFoundError" in failed.stderr
    debug = run_nova("--debug", "up", cwd=project_dir)
    assert "Traceback" in debug.stderr


def test_broken_hook_plugin_is_one_warning(fake_distribution, run_nova) -> None:
    fake_distribution("nova-badhooks", {"nova_core.plugins": {"badhooks": "badhooks_mod"}},
                      modules={"badhooks_mod": "raise RuntimeError('boom at import')\n"})
    done = run_nova("doctor", "--json")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: plugin 'badhooks' from nova-badhooks 1.0 failed to load "
                        "(RuntimeError: boom at import); its hooks are skipped"]
    checks = json.loads(done.stdout)
    assert any(c["name"] == "cgroup mode" for c in checks)
    schema = run_nova("schema")
    assert schema.returncode == 0 and json.loads(schema.stdout)["title"] == "NovaFile"


def test_broken_unselected_driver_warns_once_where_all_are_loaded(fake_distribution,
                                                                  run_nova) -> None:
    fake_distribution("nova-broken", {"nova_core.compute": {"broken": "broken_mod:Driver"}},
                      modules={"broken_mod": BROKEN_DRIVER})
    done = run_nova("schema")
    assert done.returncode == 0
    assert done.stderr.count("warning:") == 1 and "nova-broken" in done.stderr
    assert "vm" in json.loads(done.stdout)["properties"]


def test_plugins_ls_reports_every_distribution(fake_distribution, run_nova) -> None:
    fake_distribution("nova-broken", {"nova_core.compute": {"broken": "broken_mod:Driver"}},
                      modules={"broken_mod": BROKEN_DRIVER})
    done = run_nova("plugins", "ls", "--json")
    assert done.returncode == 0, done.stderr
    dists = {d["name"]: d for d in json.loads(done.stdout)}
    assert dists["nova-core"]["drivers"] == ["storage:local"] and dists["nova-core"]["loaded"]
    assert "nova_plan_render" in dists["nova-core"]["hooks"]
    for plugin in ("nova-qemu", "nova-capsule", "nova-bridge", "nova-quic", "nova-vfio"):
        assert dists[plugin]["loaded"] and "nova_doctor_checks" in dists[plugin]["hooks"]
    assert dists["nova-broken"]["loaded"] is False
    assert "ModuleNotFoundError" in dists["nova-broken"]["errors"][0]
    text = run_nova("plugins", "ls", env={"NOVA_DISABLE_PLUGINS": "nova-vfio"})
    assert any(line.startswith("nova-vfio") and "disabled" in line
               for line in text.stdout.splitlines())


def test_hooks_see_lifecycle_render_doctor_and_cli(fake_distribution, nova_fake_drivers,
                                                   project_dir: Path, run_nova,
                                                   tmp_path: Path) -> None:
    fake_distribution("nova-audit", {"nova_core.plugins": {"audit": "audit_hooks"}},
                      modules={"audit_hooks": HOOK_PLUGIN})
    events = tmp_path / "events.jsonl"
    env = {"EVENTS_FILE": str(events)}
    write_novafile(project_dir, '[container.c]\ndriver = "fake"\ncapsule = "busybox"\n')
    plan = run_nova("plan", cwd=project_dir, env=env)
    assert "audited container.c" in plan.stdout and "fake compute" in plan.stdout
    run_nova("up", cwd=project_dir, env=env, check=True)
    run_nova("down", cwd=project_dir, env=env, check=True)
    seen = [tuple(json.loads(line)) for line in events.read_text().splitlines()]
    assert seen == [
        ("before", "create", "container", "c"), ("after", "create", "container", "c"),
        ("before", "start", "container", "c"), ("after", "start", "container", "c"),
        ("before", "stop", "container", "c"), ("after", "stop", "container", "c"),
        ("before", "delete", "container", "c"), ("after", "delete", "container", "c"),
    ]
    doctor = run_nova("doctor", env=env)
    assert "audit log" in doctor.stdout
    hello = run_nova("hello", env=env)
    assert hello.returncode == 0 and hello.stdout == "hello from audit\n"
    assert "hello" in run_nova("--help", env=env).stdout


def test_fast_commands_import_no_driver_or_heavy_library(nova_home: Path) -> None:
    probe = (
        "import sys\n"
        "from nova_core.cli.main import main\n"
        "code = main(sys.argv[1:])\n"
        "heavy = [m for m in ('pydantic', 'stevedore', 'pluggy', 'libvirt', 'pyroute2', 'aioquic',"
        " 'nova_qemu', 'nova_capsule', 'nova_bridge', 'nova_quic', 'nova_vfio', 'rich')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(code)\n"
    )
    for args in (["--version"], ["ls"], ["ls", "--json"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                              text=True, check=True)
        assert done.stdout.strip().endswith("HEAVY []"), (args, done.stdout)
    helped = subprocess.run([sys.executable, "-c", probe, "--help"], capture_output=True,
                            text=True)
    assert "libvirt" not in helped.stdout.split("HEAVY")[1]
    assert "nova_qemu" in helped.stdout.split("HEAVY")[1]  # hook modules, not drivers
