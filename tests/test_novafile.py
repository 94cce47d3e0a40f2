"""NovaFile parsing, validation and error reporting (no host, no state)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nova_test_helpers import REPO, write_novafile

from nova_core.drivers.models import ContainerSpec, NetworkSpec, VmSpec
from nova_core.errors import NovaError, NovaFileError
from nova_core.novafile.loader import find_novafile, load_novafile
from nova_core.plugins import PluginRegistry
from nova_core.units import format_size, parse_size


def load(path: Path):
    return load_novafile(path, PluginRegistry(disabled=()))


def problems(path: Path) -> list[str]:
    with pytest.raises(NovaFileError) as caught:
        load(path)
    return caught.value.problems


def test_dev_lab_example_validates_verbatim() -> None:
    loaded = load(REPO / "examples" / "dev-lab" / "NovaFile")
    assert loaded.project == "dev-lab"
    vm = loaded.specs["vm.win11"]
    assert isinstance(vm, VmSpec)
    assert vm.memory == 16 * 2**30 and vm.cpu == 8 and vm.gpu_passthrough
    assert vm.networks == ["bridge0"] and vm.driver == "qemu"
    api = loaded.specs["container.api"]
    assert isinstance(api, ContainerSpec)
    assert api.image == "ubuntu:22.04" and api.env == {"API_KEY": "secret"}
    assert api.volumes[0].type == "bind"
    assert api.volumes[0].source == str((REPO / "examples/dev-lab/api").resolve())
    overlay = loaded.specs["network.nova-net"]
    assert isinstance(overlay, NetworkSpec)
    assert overlay.driver == "quic" and overlay.dns and overlay.type == "overlay"
    assert loaded.specs["network.bridge0"].driver == "bridge"


@pytest.mark.parametrize(("text", "expected"), [
    ("512Mi", 512 * 2**20), ("16Gi", 16 * 2**30), ("1G", 10**9), ("1024", 1024),
    (2048, 2048), ("1.5Gi", int(1.5 * 2**30)), ("10k", 10_000),
])
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["16Gx", "lots", "-1", "", True, 1.5, [1]])
def test_bad_sizes_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_format_size() -> None:
    assert format_size(16 * 2**30) == "16Gi"
    assert format_size(1536 * 2**20) == "1536Mi"
    assert format_size(1536 * 2**20 + 1) == "1.5Gi"


def test_bad_size_names_file_line_and_table_path(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        project = "p"

        [vm.win11]
        cpu = 2
        memory = "16Gx"
    """)
    [message] = problems(path)
    assert message.startswith("NovaFile:5: vm.win11.memory:")
    assert "'16Gx' is not a size" in message


def test_unknown_key_suggests_the_right_one(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        [vm.a]
        memroy = "1Gi"
    """)
    [message] = problems(path)
    assert "vm.a.memroy: unknown key (did you mean 'memory'?)" in message
    assert message.startswith("NovaFile:2:")


def test_unknown_top_level_key(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        project = "p"
        [vms.a]
        cpu = 1
    """)
    [message] = problems(path)
    assert "vms: unknown top-level key (did you mean 'vm'?)" in message


def test_wrong_type_says_what_it_got(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        [vm.a]
        cpu = "lots"
        gpu_passthrough = "yes please"
    """)
    found = problems(path)
    assert any("vm.a.cpu: input should be a valid number" in p and "got a string" in p
               for p in found)
    assert any("vm.a.gpu_passthrough:" in p for p in found)


def test_broken_toml_reports_the_line(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        project = "p"
        [vm.a]
        cpu = = 2
    """)
    [message] = problems(path)
    assert message.startswith("NovaFile:3: invalid TOML:")


def test_missing_network_reference(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        [vm.a]
        network = "bridge1"
        [network.bridge0]
        type = "bridge"
    """)
    [message] = problems(path)
    assert "vm.a.network: network 'bridge1' is not declared (did you mean 'bridge0'?)" in message


def test_depends_on_cycle(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        [container.a]
        capsule = "busybox"
        depends_on = ["b"]
        [container.b]
        capsule = "busybox"
        depends_on = ["c"]
        [container.c]
        capsule = "busybox"
        depends_on = ["a"]
    """)
    [message] = problems(path)
    assert "depends_on forms a cycle: container.a -> container.b -> container.c -> container.a" \
        in message


def test_undeclared_dependency_and_volume(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        [container.a]
        capsule = "busybox"
        depends_on = ["db"]
        volumes = ["data:/var/lib/data", "./here:/srv:ro"]
    """)
    found = problems(path)
    assert any("'db' is not a declared vm or container" in p for p in found)
    assert any("volume 'data' is not declared" in p for p in found)
    assert len(found) == 2


def test_every_error_is_listed_in_file_order(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        [vm.a]
        memory = "x"
        [vm.b]
        cpu = -1
        [network.n]
        mtu = 10
    """)
    found = problems(path)
    assert [p.split(":")[1] for p in found] == ["2", "4", "6"]


def test_env_values_are_never_printed(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        [container.a]
        capsule = "busybox"
        env.TOKEN = ["hunter2-secret"]
        [container.a.auth]
        password = 1234567
    """)
    text = "\n".join(problems(path))
    assert "hunter2" not in text and "1234567" not in text
    assert "container.a.env" in text and "container.a.auth.password" in text


def test_duplicate_instance_names_and_ports(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        [vm.web]
        ports = ["8080:80"]
        [container.web]
        capsule = "nginx"
        ports = ["8080:80"]
    """)
    found = problems(path)
    assert any("same name" in p for p in found)
    assert any("host port 8080/tcp is published also by vm.web" in p for p in found)


def test_ports_and_volumes_are_parsed(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        [container.web]
        capsule = "nginx"
        ports = ["8080:80", "127.0.0.1:5353:53/udp", "443"]
        volumes = ["./site:/usr/share/nginx/html:ro", "cache:/var/cache/nginx"]
        [volume.cache]
        size = "1Gi"
    """)
    web = load(path).specs["container.web"]
    assert [(p.host_ip, p.host_port, p.target_port, p.protocol) for p in web.ports] == [
        (None, 8080, 80, "tcp"), ("127.0.0.1", 5353, 53, "udp"), (None, 443, 443, "tcp")]
    site, cache = web.volumes
    assert site.type == "bind" and site.read_only and site.source == str(project_dir / "site")
    assert cache.type == "volume" and cache.source == "cache" and not cache.read_only


def test_bad_port_and_mount(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        [container.web]
        capsule = "nginx"
        ports = ["80:99999"]
        volumes = ["./x:relative"]
    """)
    found = problems(path)
    assert any("container.web.ports.0:" in p for p in found)
    assert any("must be an absolute path" in p for p in found)


def test_boltfile_services_become_capsules(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        project = "shop"

        [services.db]
        image = "postgres:16"
        environment = ["POSTGRES_PASSWORD=pw"]
        restart = "always"
        [services.db.healthcheck]
        test = ["CMD-SHELL", "pg_isready"]
        interval = "2s"
        [services.db.storage]
        size = "10Gi"

        [services.web]
        build = "./web"
        init = true
        ports = ["8080:80"]
        depends_on = { db = { condition = "service_healthy" } }
        networks = ["front"]
        [services.web.auth]
        username = "me"
        password = "pw"

        [networks.front]
        dns = true
    """, name="Boltfile.toml")
    loaded = load(path)
    assert loaded.is_boltfile and loaded.project == "shop"
    db = loaded.specs["container.db"]
    assert isinstance(db, ContainerSpec)
    assert db.image == "postgres:16" and db.env == {"POSTGRES_PASSWORD": "pw"}
    assert db.healthcheck and db.healthcheck.command == ["/bin/sh", "-c", "pg_isready"]
    assert db.healthcheck.interval == 2.0 and db.storage_size == 10 * 2**30
    web = loaded.specs["container.web"]
    assert web.depends_on == ["db"] and web.networks == ["front"] and web.build == "./web"
    assert web.registry_auth == {"username": "me", "password": "pw"}
    assert web.init and not db.init  # compose's init: an init process as PID 1
    assert loaded.specs["network.front"].driver == "bridge"
    assert db.networks == ["default"]  # compose-style: services naming no network share one
    default = loaded.specs["network.default"]
    assert isinstance(default, NetworkSpec) and default.dns and default.driver == "bridge"


def test_boltfile_without_nova_bridge_keeps_loopback_and_says_so(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        [services.web]
        image = "nginx"
        ports = ["8080:80"]
    """, name="Boltfile.toml")
    loaded = load_novafile(path, PluginRegistry(disabled=("nova-bridge",)))
    assert loaded.specs["container.web"].networks == []
    assert "network.default" not in loaded.specs
    assert any("ports are not published; install nova-bridge" in n for n in loaded.notes)


def test_boltfile_errors_use_the_boltfile_names(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        [services.web]
        image = "nginx"
        enviroment = ["A=1"]
        environment = { B = [1] }
    """, name="Boltfile.toml")
    found = problems(path)
    assert any("services.web.enviroment: unknown key (did you mean 'environment'?)" in p
               or "did you mean 'env'" in p for p in found)
    assert all("container.web" not in p for p in found)


def test_find_novafile_order_and_errors(project_dir: Path) -> None:
    with pytest.raises(NovaError, match="no NovaFile in"):
        find_novafile(directory=project_dir)
    write_novafile(project_dir, "project='b'\n", name="Boltfile.toml")
    assert find_novafile(directory=project_dir).name == "Boltfile.toml"
    write_novafile(project_dir, "project='a'\n", name="NovaFile.toml")
    assert find_novafile(directory=project_dir).name == "NovaFile.toml"
    with pytest.raises(NovaError, match="no such file"):
        find_novafile(project_dir / "nope.toml")


def test_driver_options_are_validated_by_the_driver(project_dir: Path, nova_fake_drivers) -> None:
    path = write_novafile(project_dir, """
        [vm.a]
        driver = "fake"
        fail_on = "sometimes"
        [vm.b]
        driver = "fake"
        fail_onn = "start"
    """)
    found = problems(path)
    assert any(p.startswith("NovaFile:3: vm.a.fail_on: input should be") for p in found)
    assert any("vm.b.fail_onn: unknown key (did you mean 'fail_on'?)" in p for p in found)


def test_driver_keys_of_an_absent_driver_are_errors(project_dir: Path) -> None:
    path = write_novafile(project_dir, """
        [vm.a]
        driver = "hyperdrive"
        warp = 9
    """)
    [message] = problems(path)
    assert "vm.a.warp: unknown key" in message and "no compute driver 'hyperdrive'" in message


def test_validate_cli(project_dir: Path, run_nova) -> None:
    write_novafile(project_dir, "[vm.a]\ncpu = 2\nmemory = '1Gi'\n")
    good = run_nova("validate", cwd=project_dir)
    assert good.returncode == 0, good.stderr
    assert "valid; project 'proj': 1 vm" in good.stdout
    write_novafile(project_dir, "[vm.a]\ncpu = 0\nmemroy = 1\n")
    bad = run_nova("validate", cwd=project_dir)
    assert bad.returncode == 1
    assert "2 errors" in bad.stderr and "Traceback" not in bad.stderr
    as_json = run_nova("validate", "--json", cwd=project_dir)
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["valid"] is False


def test_schema_has_core_and_driver_keys(run_nova, nova_fake_drivers) -> None:
    done = run_nova("schema")
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    vm = schema["$defs"]["vm_table"]
    assert {"memory", "cpu", "gpu_passthrough", "fail_on"} <= set(vm["properties"])
    assert "(driver 'fake')" in vm["properties"]["fail_on"]["description"]
    assert vm["additionalProperties"] is False
    assert set(schema["properties"]) == {"project", "vm", "container", "network", "volume"}


@pytest.mark.parametrize("text", [
    "[[network]]\nx = 1\n",
    "[[volume]]\nx = 1\n",
    "network = 5\n",
    "[vm.a]\nnetwork = 5\n",
    "[vm.a]\nenv = 3\n",
    "[vm.a]\ndisks = [{size = 1}]\n",
    "[container.a]\nhealthcheck = 'x'\n",
])
def test_odd_shapes_are_errors_not_crashes(project_dir: Path, text: str) -> None:
    found = problems(write_novafile(project_dir, text))
    assert found and all(p.startswith("NovaFile:") for p in found)


@pytest.mark.parametrize("text", ["[[services]]\nimage = 'x'\n", "services = 5\n"])
def test_odd_boltfile_shapes_use_boltfile_names(project_dir: Path, text: str) -> None:
    [message] = problems(write_novafile(project_dir, text, name="Boltfile.toml"))
    assert "services: must be a table of tables, like [services.NAME]" in message


def test_names_cannot_hide_a_newline(project_dir: Path) -> None:
    found = problems(write_novafile(project_dir, 'project = "p\\n"\n[volume."v\\n"]\n'))
    assert len(found) == 2


def test_clone_of_itself_and_clone_cycles(project_dir: Path) -> None:
    found = problems(write_novafile(project_dir, """
        [vm.x]
        clone = "x"
        [vm.a]
        clone = "b"
        [vm.b]
        clone = "a"
    """))
    assert any("vm.x.clone: a vm cannot be a clone of itself" in p for p in found)
    assert any("depends_on and clone form a cycle: vm.a -> vm.b -> vm.a" in p for p in found)


def test_no_follow_on_errors_from_an_invalid_entry(project_dir: Path) -> None:
    [message] = problems(write_novafile(project_dir, """
        [container.db]
        memory = "lots"
        [container.web]
        depends_on = ["db"]
    """))
    assert "container.db.memory" in message


@pytest.mark.parametrize("value", ["true", '"inf"', "inf", "nan"])
def test_cpu_must_be_a_finite_number(project_dir: Path, value: str) -> None:
    [message] = problems(write_novafile(project_dir, f"[vm.a]\ncpu = {value}\n"))
    assert "vm.a.cpu" in message


def test_infinite_timeout_and_empty_env_name(project_dir: Path) -> None:
    found = problems(write_novafile(project_dir, '[vm.a]\nstop_timeout = inf\nenv = {"" = "x"}\n'))
    assert any("vm.a.stop_timeout" in p for p in found) and any("vm.a.env" in p for p in found)


def test_a_port_on_all_addresses_clashes_with_one_address(project_dir: Path) -> None:
    [message] = problems(write_novafile(project_dir, """
        [vm.a]
        ports = ["8080:80"]
        [vm.b]
        ports = ["127.0.0.1:8080:80", "127.0.0.2:9090:90", "127.0.0.3:9090:90"]
    """))
    assert "vm.b.ports: host port 8080/tcp is published also by vm.a" in message


def test_boltfile_duplicate_spellings_name_both(project_dir: Path) -> None:
    [message] = problems(write_novafile(project_dir, """
        [services.web]
        image = "nginx"
        environment = { A = "1" }
        env = { B = "2" }
    """, name="Boltfile.toml"))
    assert "services.web.env: 'environment' and 'env' mean the same; keep one" in message
