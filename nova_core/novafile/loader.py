"""Read a NovaFile (or Boltfile): TOML -> validated, cross-checked resource specs.

Every problem is collected (not just the first) and reported with the file, the
line where known and the table path, e.g.
``NovaFile:5: vm.win11.memory: '16Gx' is not a size; ...``.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nova_core.drivers.compute import ComputeDriver
from nova_core.drivers.models import (
    DRIVER_KIND_OF,
    ContainerSpec,
    DiskSpec,
    DriverKind,
    DriverOptions,
    HealthCheck,
    NetworkSpec,
    ResourceKind,
    ResourceRef,
    ResourceSpec,
    VmSpec,
    VolumeSpec,
    on_nova_network,
)
from nova_core.errors import DriverConflict, DriverLoadError, NovaError, NovaFileError
from nova_core.names import is_valid_name
from nova_core.novafile import entries
from nova_core.novafile.boltfile import Translation, translate_boltfile
from nova_core.novafile.locate import index_lines, line_of
from nova_core.novafile.values import parse_port, parse_volume
from nova_core.plugins import PluginRegistry

NOVAFILE_NAMES = ("NovaFile", "NovaFile.toml", "Boltfile.toml")
KINDS = ("vm", "container", "network", "volume")
TOP_LEVEL = ("project", *KINDS)
#: Keys never printed by any command.
SECRET_KEYS = frozenset({"env", "auth"})
#: Network names an instance may use without declaring them.
SPECIAL_NETWORKS = {"vm": {"user", "none"}, "container": {"host", "none"}}


@dataclass
class NovaFile:
    """A validated NovaFile: the project and one spec per resource, keyed ``kind.name``."""

    path: Path
    project: str
    specs: dict[str, ResourceSpec]
    notes: list[str] = field(default_factory=list)
    is_boltfile: bool = False

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the file start from."""
        return self.path.parent

    def summary(self) -> str:
        """One line: what the file declares."""
        counts = {kind: 0 for kind in KINDS}
        for spec in self.specs.values():
            counts[spec.ref.kind.value] += 1
        parts = [f"{n} {k}{'s' if n != 1 else ''}" for k, n in counts.items() if n]
        return f"project '{self.project}': " + (", ".join(parts) if parts else "nothing declared")


def find_novafile(explicit: str | Path | None = None, directory: Path | None = None) -> Path:
    """Return the file to use: ``explicit`` (-f) or the first of NOVAFILE_NAMES in ``directory``."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise NovaError(f"no such file: {path}", hint="check the path given to -f")
        return path
    directory = directory or Path.cwd()
    for name in NOVAFILE_NAMES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise NovaError(
        f"no NovaFile in {directory} (looked for {', '.join(NOVAFILE_NAMES)})",
        hint="cd to your project, pass -f FILE, or start from examples/quickstart/NovaFile",
    )


def _did_you_mean(word: str, choices: list[str] | set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Problems:
    """Collects problems with their location."""

    def __init__(self, path: Path, text: str, translation: Translation | None) -> None:
        self.path = path
        self.index = index_lines(text)
        self.translation = translation
        self.items: list[tuple[int, str]] = []

    def label(self, kind: str, name: str) -> tuple[str, ...]:
        """The table path as the user wrote it (a Boltfile's ``services.NAME``)."""
        if self.translation:
            from nova_core.novafile.boltfile import BOLTFILE_TOP_LEVEL

            if (kind, name) in self.translation.labels:
                return self.translation.labels[(kind, name)]
            users = {v: k for k, v in BOLTFILE_TOP_LEVEL.items()}
            return (users.get(kind, kind), name)
        return (kind, name)

    def user_key(self, kind: str, name: str, key: str) -> str:
        if self.translation:
            return self.translation.renamed.get((kind, name), {}).get(key, key)
        return key

    def user_keys(self, kind: str, keys: set[str]) -> set[str]:
        """``keys`` as the user may write them (a Boltfile's spellings included)."""
        if self.translation and kind == "container":
            from nova_core.novafile.boltfile import RENAMES

            return keys | set(RENAMES)
        return keys

    def add_at(self, user_path: tuple[str, ...], message: str) -> None:
        line = line_of(self.index, user_path)
        where = f"{self.path.name}:{line}" if line else self.path.name
        dotted = ".".join(str(p) for p in user_path)
        self.items.append((line or 0, f"{where}: {dotted}: {message}" if dotted else f"{where}: {message}"))

    def add(self, kind: str, name: str, keys: tuple[Any, ...], message: str) -> None:
        label = self.label(kind, name)
        if keys:
            keys = (self.user_key(kind, name, str(keys[0])), *keys[1:])
        self.add_at((*label, *(str(k) for k in keys)), message)

    def raise_if_any(self) -> None:
        if self.items:
            ordered = [message for _, message in sorted(self.items, key=lambda item: item[0])]
            raise NovaFileError(str(self.path), ordered)


def _pydantic_message(error: dict[str, Any], secret: bool) -> str:
    """A pydantic error as a sentence; secret inputs are never echoed."""
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    if error["type"] == "missing":
        return "is required"
    message = message[:1].lower() + message[1:]
    if error["type"].endswith(("_type", "_parsing")):
        got = "a value" if secret else type(error.get("input")).__name__
        got = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
               "list": "a list", "dict": "a table"}.get(got, got)
        message = f"{message}, got {got}"
    return message


def load_novafile(path: Path, registry: PluginRegistry) -> NovaFile:
    """Parse, validate and cross-check ``path``; raise :class:`NovaFileError` listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise NovaFileError(str(path), [f"{path.name}: not UTF-8 text ({error.reason})"]) from error
    except OSError as error:
        raise NovaError(f"cannot read {path}: {error.strerror}") from error
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        line = None
        if "(at line " in message:
            line = message.rsplit("(at line ", 1)[1].split(",")[0]
            message = message.rsplit(" (at line ", 1)[0]
        where = f"{path.name}:{line}" if line else path.name
        raise NovaFileError(
            str(path), [f"{where}: invalid TOML: {message}"]
        ) from error

    is_bolt = path.name == "Boltfile.toml" or ("services" in raw and not any(k in raw for k in KINDS))
    translation = translate_boltfile(raw) if is_bolt else None
    data = translation.data if translation else raw
    problems = _Problems(path, text, translation)
    if translation:
        for user_path, message in translation.problems:
            problems.add_at(user_path, message)
    top_level = (
        {"project", "services", "networks", "volumes"} if is_bolt else set(TOP_LEVEL)
    )
    for key in raw:
        if (is_bolt and key not in top_level) or (not is_bolt and key not in TOP_LEVEL):
            problems.add_at((key,), f"unknown top-level key{_did_you_mean(key, top_level)}; "
                            f"allowed: {', '.join(sorted(top_level))}")

    project = data.get("project")
    if project is None:
        project = path.resolve().parent.name
    if not isinstance(project, str) or not is_valid_name(project):
        problems.add_at(("project",), "must be a name of letters, digits, '.', '_' or '-' "
                        "(at most 63 characters, starting with a letter or digit)")
        project = "invalid"

    notes: list[str] = []
    if is_bolt:
        _default_network(data, registry, notes)
    specs: dict[str, ResourceSpec] = {}
    for kind in KINDS:
        tables = data.get(kind, {})
        if not isinstance(tables, dict):
            label = problems.label(kind, "NAME")[0]
            problems.add_at((label,), f"must be a table of tables, like [{label}.NAME]")
            continue
        for name, table in tables.items():
            if not isinstance(table, dict):
                label = ".".join(problems.label(kind, name))
                problems.add(kind, name, (), f"must be a table, like [{label}]")
                continue
            if not is_valid_name(name):
                problems.add(kind, name, (), "invalid name: use letters, digits, '.', '_' or '-' "
                             "(at most 63 characters, starting with a letter or digit)")
                continue
            spec = _load_entry(kind, name, table, project, path.parent.resolve(), registry,
                               problems, notes)
            if spec is not None:
                specs[spec.ref.key] = spec

    _cross_check(specs, data, problems)
    problems.raise_if_any()
    for spec in specs.values():
        if isinstance(spec, ContainerSpec | VmSpec) and spec.ports and \
                not on_nova_network(spec.networks):
            notes.append(f"{spec.ref.key}: ports are published only on a Nova network; "
                         "add network = \"NAME\" with a [network.NAME] table")
    return NovaFile(path=path, project=project, specs=specs, notes=notes, is_boltfile=is_bolt)


def _load_entry(
    kind: str,
    name: str,
    table: dict[str, Any],
    project: str,
    base_dir: Path,
    registry: PluginRegistry,
    problems: _Problems,
    notes: list[str],
) -> ResourceSpec | None:
    model = entries.ENTRY_MODELS[kind]
    driver_name = table.get("driver") or entries.default_driver(kind, table)
    if not isinstance(driver_name, str):
        problems.add(kind, name, ("driver",), "must be a driver name (a string)")
        return None
    driver_kind = DRIVER_KIND_OF[ResourceKind(kind)]
    try:
        driver_cls = registry.try_driver_class(driver_kind, driver_name)
    except (DriverLoadError, DriverConflict) as error:
        problems.add(kind, name, ("driver",), error.message)
        return None

    core_keys = set(model.model_fields)
    option_model: type[DriverOptions] = driver_cls.options_model if driver_cls else DriverOptions
    option_keys = set(option_model.model_fields)
    unknown = [key for key in table if key not in core_keys and key not in option_keys]
    absent_note = ""
    if driver_cls is None:
        why = registry.absent_message(driver_kind, driver_name)
        absent_note = f" ({why}, so its own keys cannot be checked)"
        notes.append(f"{kind}.{name}: {why}; its own keys were not checked")
    for key in unknown:
        user_key = problems.user_key(kind, name, key)
        suggestion = _did_you_mean(user_key, problems.user_keys(kind, core_keys | option_keys))
        problems.add(kind, name, (key,), f"unknown key{suggestion}{absent_note}")

    core_part = {k: v for k, v in table.items() if k in core_keys}
    if kind == "network":
        core_part["type"] = entries.network_type(table)
    option_part = {k: v for k, v in table.items() if k in option_keys and k not in core_keys}
    ok = not unknown
    try:
        entry = model.model_validate(core_part)
    except ValidationError as error:
        ok = False
        for item in error.errors():
            loc = tuple(item["loc"])
            problems.add(kind, name, loc, _pydantic_message(item, secret=str(loc[0]) in SECRET_KEYS))
    try:
        options = option_model.model_validate(option_part)
    except ValidationError as error:
        ok = False
        for item in error.errors():
            problems.add(kind, name, tuple(item["loc"]), _pydantic_message(item, secret=False))
    if not ok:
        return None

    if driver_cls is not None and issubclass(driver_cls, ComputeDriver):
        served = driver_cls.instance_kinds
        if ResourceKind(kind) not in served:
            runs = " and ".join(sorted(f"{k.value}s" for k in served))
            problems.add(kind, name, ("driver",), f"compute driver '{driver_name}' runs {runs}, "
                         f"not {kind}s")
            return None

    ref = ResourceRef(project=project, kind=ResourceKind(kind), name=name)
    try:
        return _build_spec(kind, ref, driver_name, entry, options, base_dir, problems)
    except ValueError as error:
        problems.add(kind, name, (), str(error))
        return None


def _instance_common(
    kind: str, ref: ResourceRef, entry: Any, base_dir: Path, problems: _Problems
) -> dict[str, Any]:
    ports = []
    for index, text in enumerate(entry.ports):
        try:
            ports.append(parse_port(text))
        except ValueError as error:
            problems.add(kind, ref.name, ("ports", index), str(error))
    volumes = []
    for index, text in enumerate(entry.volumes):
        try:
            volumes.append(parse_volume(text, base_dir))
        except ValueError as error:
            problems.add(kind, ref.name, ("volumes", index), str(error))
    return {
        "image": entry.image, "cpu": entry.cpu, "memory": entry.memory, "env": entry.env,
        "ports": ports, "volumes": volumes, "networks": entry.network,
        "ip": entry.ip,
        "depends_on": entry.depends_on, "restart": entry.restart,
        "stop_timeout": entry.stop_timeout, "command": entry.command,
    }


def _build_spec(
    kind: str,
    ref: ResourceRef,
    driver: str,
    entry: Any,
    options: DriverOptions,
    base_dir: Path,
    problems: _Problems,
) -> ResourceSpec:
    common = {"ref": ref, "driver": driver, "base_dir": base_dir, "options": options}
    if kind == "vm":
        return VmSpec(
            **common, **_instance_common(kind, ref, entry, base_dir, problems),
            gpu_passthrough=entry.gpu_passthrough, devices=entry.devices,
            disks=[DiskSpec(path=d.path, size=d.size, format=d.format) for d in entry.disks],
            kernel=entry.kernel, initrd=entry.initrd, cmdline=entry.cmdline,
            user_data=entry.user_data, meta_data=entry.meta_data,
            ssh_authorized_keys=entry.ssh_authorized_keys, clone=entry.clone,
        )
    if kind == "container":
        if entry.capsule and entry.image:
            problems.add(kind, ref.name, ("image",), "give the image as 'capsule' or 'image', not both")
        fields = _instance_common(kind, ref, entry, base_dir, problems)
        fields["image"] = entry.capsule or entry.image
        health = None
        if entry.healthcheck is not None:
            argv = entry.healthcheck.argv()
            if not argv:
                problems.add(kind, ref.name, ("healthcheck",), "needs a command (test = [...])")
            health = HealthCheck(command=argv, interval=entry.healthcheck.interval,
                                 timeout=entry.healthcheck.timeout,
                                 retries=entry.healthcheck.retries,
                                 start_period=entry.healthcheck.start_period)
        return ContainerSpec(
            **common, **fields, hostname=entry.hostname, workdir=entry.workdir, user=entry.user,
            uid=entry.uid, gid=entry.gid, args=entry.args, pids=entry.pids, healthcheck=health,
            storage_size=entry.storage.size if entry.storage else None, build=entry.build,
            devices=entry.devices, gpu=entry.gpu, init=entry.init,
            registry_auth=entry.auth.model_dump(exclude_none=True) if entry.auth else {},
        )
    if kind == "network":
        return NetworkSpec(**common, type=entry.type, subnet=entry.subnet, gateway=entry.gateway,
                           dns=entry.dns, mtu=entry.mtu, interfaces=entry.interfaces)
    return VolumeSpec(**common, size=entry.size)


def _default_network(data: dict[str, Any], registry: PluginRegistry, notes: list[str]) -> None:
    """As in compose: Boltfile services that name no network share a ``default`` one
    (a bridge with DNS, so they find each other by name and can publish ports)."""
    services = data.get("container")
    if not isinstance(services, dict):
        return
    loose = [name for name, table in services.items()
             if isinstance(table, dict) and "network" not in table]
    if not loose:
        return
    if "bridge" not in registry.driver_names(DriverKind.NETWORK):
        if any(services[name].get("ports") for name in loose):
            notes.append("services without networks keep a private loopback-only network and "
                         "their ports are not published; install nova-bridge for the default "
                         "network")
        return
    networks = data.setdefault("network", {})
    if not isinstance(networks, dict):
        return
    networks.setdefault("default", {"type": "bridge", "dns": True})
    for name in loose:
        services[name]["network"] = ["default"]


def _declared(data: dict[str, Any], kind: str) -> set[str]:
    """Names of the ``kind`` tables the file declares, valid or not."""
    tables = data.get(kind)
    return set(tables) if isinstance(tables, dict) else set()


def _cross_check(specs: dict[str, ResourceSpec], data: dict[str, Any], problems: _Problems) -> None:
    """References between tables: networks, volumes, depends_on, clone; names; cycles.

    Existence is checked against every declared table, so an entry that failed
    its own validation does not cause follow-on "not declared" errors.
    """
    declared_vms, declared_containers = _declared(data, "vm"), _declared(data, "container")
    declared_instances = declared_vms | declared_containers
    declared_networks, declared_volumes = _declared(data, "network"), _declared(data, "volume")
    for name in sorted(declared_vms & declared_containers):
        problems.add("container", name, (), f"vm.{name} has the same name; instance names must "
                     "be unique (they are also DNS names)")
    instances = [s for s in specs.values() if isinstance(s, VmSpec | ContainerSpec)]
    for spec in instances:
        kind, name = spec.ref.kind.value, spec.ref.name
        for net in spec.networks:
            if net in SPECIAL_NETWORKS[kind] or net in declared_networks:
                continue
            problems.add(kind, name, ("network",), f"network '{net}' is not declared"
                         f"{_did_you_mean(net, declared_networks)}; add a [network.{net}] table")
        for index, mount in enumerate(spec.volumes):
            if mount.type == "volume" and mount.source not in declared_volumes:
                hint = _did_you_mean(mount.source, declared_volumes)
                problems.add(kind, name, ("volumes", index),
                             f"volume '{mount.source}' is not declared{hint}; add a "
                             f"[volume.{mount.source}] table, or write a path like ./{mount.source}")
        for dep in spec.depends_on:
            if dep == name:
                problems.add(kind, name, ("depends_on",), "an instance cannot depend on itself")
            elif dep not in declared_instances:
                problems.add(kind, name, ("depends_on",), f"'{dep}' is not a declared vm or "
                             f"container{_did_you_mean(dep, declared_instances)}")
        if isinstance(spec, VmSpec) and spec.clone is not None:
            if spec.clone == name:
                problems.add(kind, name, ("clone",), "a vm cannot be a clone of itself")
            elif spec.clone not in declared_vms:
                problems.add(kind, name, ("clone",), f"'{spec.clone}' is not a declared vm"
                             f"{_did_you_mean(spec.clone, declared_vms)}")
    _check_port_clashes(instances, problems)
    by_name = {s.ref.name: s for s in instances}
    graph = {}
    for spec in instances:
        edges = [d for d in spec.depends_on if d in by_name and d != spec.ref.name]
        if isinstance(spec, VmSpec) and spec.clone in by_name and spec.clone != spec.ref.name:
            edges.append(spec.clone)
        graph[spec.ref.name] = edges
    cycle = find_cycle(graph)
    if cycle:
        first = by_name[cycle[0]]
        chain = " -> ".join(by_name[n].ref.key for n in cycle)
        via_clone = any(isinstance(by_name[a], VmSpec) and by_name[a].clone == b  # type: ignore[union-attr]
                        for a, b in zip(cycle, cycle[1:], strict=False))
        what = "depends_on and clone form a cycle" if via_clone else "depends_on forms a cycle"
        problems.add(first.ref.kind.value, first.ref.name, ("depends_on",), f"{what}: {chain}")


def _check_port_clashes(instances: list[ResourceSpec], problems: _Problems) -> None:
    """A host port may be published once per protocol; no address means every address."""
    owners: dict[tuple[int, str], list[tuple[str | None, str]]] = {}
    for spec in instances:
        assert isinstance(spec, VmSpec | ContainerSpec)
        for mapping in spec.ports:
            taken = owners.setdefault((mapping.host_port, mapping.protocol), [])
            for ip, owner in taken:
                if ip is None or mapping.host_ip is None or ip == mapping.host_ip:
                    by = ("twice by this instance" if owner == spec.ref.key
                          else f"also by {owner}")
                    problems.add(spec.ref.kind.value, spec.ref.name, ("ports",),
                                 f"host port {mapping.host_port}/{mapping.protocol} is published {by}")
                    break
            taken.append((mapping.host_ip, spec.ref.key))


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """Return one cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None
