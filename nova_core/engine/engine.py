"""The engine: builds plans and applies them through drivers, recording every step."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nova_core.drivers.base import Driver, DriverContext
from nova_core.drivers.compute import AttachedRun, ComputeDriver
from nova_core.drivers.device import DeviceDriver
from nova_core.drivers.models import (
    DRIVER_KIND_OF,
    DeviceAssignment,
    DeviceClaim,
    DriverKind,
    InstanceSpec,
    Lifecycle,
    NetworkAttachment,
    NetworkSpec,
    PortMapping,
    ResourceKind,
    ResourceSpec,
    ResourceStatus,
    VmSpec,
    on_nova_network,
)
from nova_core.drivers.network import NetworkDriver
from nova_core.drivers.storage import StorageDriver
from nova_core.engine import specs as specmod
from nova_core.engine.plan import (
    INSTANCE_KINDS,
    Plan,
    PlanStep,
    closure,
    dependency_order,
    observe_step,
)
from nova_core.errors import ApplyError, DriverNotFound, NovaError
from nova_core.hooktypes import LifecycleEvent
from nova_core.novafile.loader import NovaFile
from nova_core.plugins import PluginRegistry
from nova_core.state.store import ResourceRow, Store

LIFECYCLE_ACTIONS = frozenset({"create", "start", "stop", "delete"})


class Reporter(Protocol):
    """Receives progress while a plan is applied (the CLI prints it)."""

    def step_started(self, step: PlanStep, index: int, total: int) -> None:
        """A step begins."""

    def step_finished(self, step: PlanStep, seconds: float) -> None:
        """A step succeeded."""

    def step_failed(self, step: PlanStep, error: str) -> None:
        """A step failed (the apply stops)."""


class SilentReporter:
    """A reporter that says nothing."""

    def step_started(self, step: PlanStep, index: int, total: int) -> None:
        """Ignore."""

    def step_finished(self, step: PlanStep, seconds: float) -> None:
        """Ignore."""

    def step_failed(self, step: PlanStep, error: str) -> None:
        """Ignore."""


@dataclass
class ApplyReport:
    """What an apply did."""

    applied: list[PlanStep] = field(default_factory=list)
    seconds: float = 0.0
    attached: dict[str, AttachedRun] = field(default_factory=dict)  # key -> its run


def device_driver_for(address: str) -> str:
    """Which device driver serves a ``devices`` entry: ``vf:...`` -> sriov, else vfio."""
    return "sriov" if address.startswith("vf:") else "vfio"


class Engine:
    """Plans and applies changes for projects recorded in one :class:`Store`.

    :param store: the state database.
    :param registry: where drivers and hooks come from.
    :param context: handed to every driver the engine builds.
    """

    def __init__(self, store: Store, registry: PluginRegistry, context: DriverContext) -> None:
        self.store = store
        self.registry = registry
        self.context = context

    # -- drivers -----------------------------------------------------------------
    def driver(self, kind: DriverKind, name: str) -> Driver:
        """The driver instance for ``kind``/``name`` (errors name the package to install)."""
        return self.registry.driver(kind, name, self.context)

    def driver_for(self, spec: ResourceSpec) -> Driver:
        """The driver that serves ``spec``."""
        return self.driver(DRIVER_KIND_OF[spec.ref.kind], spec.driver)

    def recorded_spec(self, row: ResourceRow) -> ResourceSpec:
        """Rebuild the spec recorded in ``row``."""
        kind = ResourceKind(row.kind)
        cls = self.registry.try_driver_class(DRIVER_KIND_OF[kind], row.driver)
        return specmod.spec_from_json(kind, row.spec, cls.options_model if cls else None)

    # -- plan --------------------------------------------------------------------
    def plan(self, novafile: NovaFile, names: list[str] | None = None, observe: bool = True,
             render: bool = True) -> Plan:
        """Compare the NovaFile with what is recorded (and, with ``observe``, on the host)."""
        project = novafile.project
        desired = novafile.specs
        selected = closure(desired, names) if names else set(desired)
        recorded = {row.key: row for row in self.store.resources(project)}
        wanted: list[PlanStep] = []
        for key in dependency_order(desired):
            if key not in selected:
                continue
            spec = desired[key]
            wanted.append(self._plan_one(spec, recorded.get(key), observe))
        gone = [] if names else [row for key, row in recorded.items() if key not in desired]
        kept = [row.key for row in gone if row.kind == ResourceKind.VOLUME.value]
        deletions = self._deletions([row for row in gone if row.key not in kept],
                                    "no longer in the NovaFile")
        # Instances go first (freeing names and ports for what replaces them);
        # networks only after the instances that used them were changed.
        steps = ([s for s in deletions if s.ref.kind in INSTANCE_KINDS] + wanted +
                 [s for s in deletions if s.ref.kind not in INSTANCE_KINDS])
        self.check_ports(project, [desired[k] for k in selected], leaving={row.key for row in gone})
        plan = Plan(project=project, steps=steps, kept=kept)
        if render:
            self.render(plan)
        return plan

    def _plan_one(self, spec: ResourceSpec, row: ResourceRow | None, observe: bool) -> PlanStep:
        step = PlanStep(ref=spec.ref, action="create", reason="not created yet",
                        driver=spec.driver, spec=spec)
        if row is None:
            return step
        step.recorded = self._try_recorded(row)
        if row.state in (Lifecycle.CREATING.value, Lifecycle.FAILED.value):
            step.resume = True
            step.reason = (f"the last attempt did not finish (recorded as {row.state}"
                           f"{': ' + row.detail if row.detail else ''}); it will be cleaned up "
                           "and made again")
            return step
        if step.recorded is not None and step.recorded.driver != spec.driver:
            step.action = "replace"
            step.changed = frozenset({"driver"})
            step.reason = f"driver changed from {step.recorded.driver} to {spec.driver}"
            return step
        changed: frozenset[str] = frozenset()
        if row.spec_hash != specmod.spec_hash(spec):
            # A spec recorded before a field was added reads back with that field's
            # default: a different digest, no difference that matters.
            changed = (specmod.changed_fields(step.recorded, spec) if step.recorded
                       else frozenset({"spec"}))
        if changed:
            step.changed = changed
            driver = self._try_driver(spec)
            updatable = getattr(driver, "updatable_fields", frozenset())
            step.action = "update" if changed <= updatable else "replace"
            step.reason = "changed: " + ", ".join(sorted(changed))
            return step
        step.action, step.reason = "unchanged", "matches the NovaFile"
        if observe:
            driver = self._try_driver(spec)
            if driver is not None:
                observe_step(step, driver)
        return step

    def _try_driver(self, spec: ResourceSpec) -> Driver | None:
        try:
            return self.driver_for(spec)
        except DriverNotFound:
            return None

    def _try_recorded(self, row: ResourceRow) -> ResourceSpec | None:
        try:
            return self.recorded_spec(row)
        except ValueError:
            return None

    def _deletions(self, rows: list[ResourceRow], reason: str) -> list[PlanStep]:
        specs = {}
        for row in rows:
            spec = self._try_recorded(row)
            if spec is None:
                raise NovaError(f"the recorded spec of {row.key} cannot be read back",
                                hint="upgrade the plugin that made it")
            specs[row.key] = spec
        ordered = list(reversed(dependency_order(specs)))
        return [PlanStep(ref=specs[k].ref, action="delete", reason=reason,
                         driver=specs[k].driver, recorded=specs[k]) for k in ordered]

    def render(self, plan: Plan) -> None:
        """Fill each changing step's details through the ``nova_plan_render`` hook."""
        for step in plan.changes:
            if step.action == "delete":
                continue
            driver = self._try_driver(step.spec) if step.spec else None
            for details in self.registry.call_hook_safely("nova_plan_render", step=step,
                                                          driver=driver):
                step.details.extend(details)

    def down_plan(self, project: str, names: list[str] | None = None,
                  remove_volumes: bool = False) -> Plan:
        """Steps that remove what ``nova up`` made for ``project`` (reverse order)."""
        rows = self.store.resources(project)
        if names:
            keys = {f"{r.kind}.{r.name}" for r in rows}
            wanted = set()
            for name in names:
                matches = [k for k in keys if k == name or k.split(".", 1)[1] == name]
                if not matches:
                    raise NovaError(f"nothing named '{name}' is recorded for project '{project}'",
                                    hint="nova ls shows what is recorded")
                wanted.update(matches)
            rows = [r for r in rows if r.key in wanted]
        kept = [r.key for r in rows if r.kind == ResourceKind.VOLUME.value and not remove_volumes]
        rows = [r for r in rows if r.key not in kept]
        return Plan(project=project, steps=self._deletions(rows, "nova down"), kept=kept)

    def check_ports(self, project: str, specs: list[ResourceSpec],
                    leaving: set[str] | frozenset[str] = frozenset()) -> None:
        """Refuse host ports two instances would publish, or that a host program listens on.

        ``leaving``: keys of this project's instances the plan removes (their ports free up).
        """
        from nova_core.hostinfo.ports import listening, overlaps

        claims: list[tuple[str, PortMapping]] = []
        mine = set()
        for spec in specs:
            if isinstance(spec, InstanceSpec):
                mine.add(spec.ref.key)
                if on_nova_network(spec.networks):  # elsewhere nothing is published
                    claims += [(spec.ref.key, port) for port in spec.ports]
        others: list[tuple[str, PortMapping]] = []
        for row in self.store.resources(None, kinds=("vm", "container")):
            if row.project == project and (row.key in mine or row.key in leaving):
                continue  # its new ports replace its recorded ones, or it goes
            recorded = row.spec_dict()
            if not on_nova_network(recorded.get("networks") or []):
                continue
            for port in recorded.get("ports") or []:
                label = row.key if row.project == project else f"{row.key} of project {row.project}"
                others.append((label, PortMapping.model_validate(port)))
        held = self._own_sockets() if claims else set()
        problems = []
        for index, (key, port) in enumerate(claims):
            for other_key, other in claims[:index] + others:
                if other_key != key and overlaps(port, other):
                    problems.append(f"{key} and {other_key} both publish host port "
                                    f"{port.host_port}/{port.protocol}")
            if listening(port, held):
                problems.append(f"{key} publishes host port {port.host_port}/{port.protocol}, "
                                "but a program on the host already listens there")
        if problems:
            raise NovaError("port conflict:\n" + "\n".join(f"  - {p}" for p in dict.fromkeys(problems)),
                            hint="change the host side of ports (HOST:TARGET) so each is used once")

    def _own_sockets(self) -> set[tuple[str, str, int]]:
        """Host sockets the services of this NOVA_HOME's network drivers hold (their
        ``own_sockets``), over every recorded network's driver that is installed."""
        held: set[tuple[str, str, int]] = set()
        for name in sorted({row.driver for row in self.store.resources(None, kinds=("network",))}):
            if self.registry.try_driver_class(DriverKind.NETWORK, name) is not None:
                network_driver = self.driver(DriverKind.NETWORK, name)
                if isinstance(network_driver, NetworkDriver):
                    held |= network_driver.own_sockets()
        return held

    # -- apply -------------------------------------------------------------------
    def check_plan(self, plan: Plan) -> None:
        """Refuse, before touching anything, a plan that cannot finish or would lose data.

        Every driver a change needs (the recorded one too, for replace and removal)
        must load; a volume is never replaced implicitly (that deletes its data); a
        network is not replaced or removed while instances that stay are attached.
        """
        problems: list[str] = []

        def note(message: str) -> None:
            if message not in problems:
                problems.append(message)

        leaving = {s.ref.key for s in plan.changes
                   if s.action in ("delete", "replace") and s.ref.kind in INSTANCE_KINDS}
        for step in plan.changes:
            for spec in (step.spec, step.recorded if step.action != "create" or step.resume
                         else None):
                if spec is None:
                    continue
                try:
                    self.driver_for(spec)
                    if isinstance(spec, VmSpec):
                        for name in self._device_drivers(spec):
                            self.driver(DriverKind.DEVICE, name)
                except NovaError as error:
                    note(f"{step.ref.key}: {error.message}" +
                         (f" ({error.hint})" if error.hint else ""))
            if step.action == "replace" and step.ref.kind is ResourceKind.VOLUME:
                note(f"{step.ref.key} would be replaced ({step.reason}), which deletes its data; "
                     f"remove it first with `nova down --volumes {step.ref.name}` if that is meant")
            if step.action == "delete" and step.ref.kind is ResourceKind.VOLUME:
                staying = [k for k in self.store.instances_using_volume(step.ref.project,
                                                                        step.ref.name)
                           if k not in leaving]
                if staying:
                    note(f"{step.ref.key} is used by {', '.join(staying)}; remove "
                         f"{'it' if len(staying) == 1 else 'them'} first")
            if step.action in ("replace", "delete") and step.ref.kind is ResourceKind.NETWORK:
                staying = [k for k in self.store.attached_to(step.ref.project, step.ref.name)
                           if k not in leaving]
                if staying:
                    note(f"{step.ref.key} would be {'replaced' if step.action == 'replace' else 'removed'}"
                         f" ({step.reason}) but {', '.join(staying)} "
                         f"{'is' if len(staying) == 1 else 'are'} attached; take "
                         f"{'it' if len(staying) == 1 else 'them'} down first "
                         f"(nova down {' '.join(k.split('.', 1)[1] for k in staying)}), "
                         "then run nova up")
        if problems:
            raise NovaError("cannot apply:\n" + "\n".join(f"  - {p}" for p in problems))

    def apply(self, plan: Plan, reporter: Reporter | None = None,
              command: str = "nova up", attach: frozenset[str] = frozenset()) -> ApplyReport:
        """Run the plan's changes in order; stop at the first failure with :class:`ApplyError`.

        :param command: what the user runs to try again, for the error's hint.
        :param attach: keys of instances to start attached to this process where their
            driver can (:meth:`ComputeDriver.start_attached`); the report's ``attached``
            holds their runs.
        """
        from nova_core.secrets import mask, secret_values

        reporter = reporter or SilentReporter()
        self.check_plan(plan)
        report = ApplyReport()
        started = time.monotonic()
        changes = plan.changes
        for index, step in enumerate(changes, start=1):
            reporter.step_started(step, index, len(changes))
            begun = time.monotonic()
            try:
                self._apply_step(step, report.attached if step.ref.key in attach else None)
            except Exception as error:
                message = error.message if isinstance(error, NovaError) else (
                    f"{type(error).__name__}: {error}")
                message = mask(message, secret_values(step.spec, step.recorded))
                reporter.step_failed(step, message)
                raise ApplyError(
                    f"{step.ref.key}: {step.action} failed: {message}\n"
                    f"{index - 1} of {len(changes)} steps were applied and recorded.",
                    hint=(f"{error.hint}; then " if isinstance(error, NovaError) and error.hint
                          else "fix the cause and ") + f"run `{command}` again: it continues from here",
                ) from error
            reporter.step_finished(step, time.monotonic() - begun)
            report.applied.append(step)
        report.seconds = time.monotonic() - started
        return report

    def _apply_step(self, step: PlanStep, attached: dict[str, AttachedRun] | None) -> None:
        if step.action == "delete":
            assert step.recorded is not None
            self._remove(step.recorded)
        elif step.action == "replace":
            assert step.spec is not None
            # an unreadable recorded spec (e.g. after a plugin upgrade) is removed by ref
            self._remove(step.recorded or step.spec, quiet=step.recorded is None)
            self._make(step.spec, attached)
        elif step.action == "create":
            assert step.spec is not None
            if step.resume:
                self._remove(step.recorded or step.spec, quiet=True)
            self._make(step.spec, attached)
        elif step.action == "update":
            assert step.spec is not None
            self._update(step, attached)

    # -- the driver calls, each recorded -------------------------------------------
    def _event(self, phase: str, action: str, spec: ResourceSpec, error: str | None = None) -> None:
        if action not in LIFECYCLE_ACTIONS:
            return
        event = LifecycleEvent(phase=phase, action=action, project=spec.ref.project,  # type: ignore[arg-type]
                               kind=spec.ref.kind.value, name=spec.ref.name, driver=spec.driver,
                               error=error)
        self.registry.call_hook_safely("nova_lifecycle_event", event=event)

    def _call(self, action: str, spec: ResourceSpec, call: Callable[[], Any],
              record: Callable[[Any], tuple[str, str, dict[str, str] | None]] | None = None,
              making: bool = False) -> Any:
        """Run one driver call: lifecycle events, the operations log, and the state update.

        ``record`` maps the call's result to (state, detail, data) written in the same
        transaction that closes the operation. A failure while ``making`` the resource
        marks it ``failed`` (the next ``nova up`` cleans it and makes it again); any
        other failure (stop, snapshot...) only records the error beside its state.
        """
        from nova_core.secrets import mask, secret_values

        ref = spec.ref
        op = self.store.begin_operation(ref.project, ref.kind.value, ref.name, action)
        self._event("before", action, spec)
        try:
            result = call()
        except Exception as error:
            message = error.message if isinstance(error, NovaError) else str(error)
            message = mask(message, secret_values(spec))
            with self.store.transaction() as conn:
                self.store.end_operation(conn, op, "failed", message)
                row = self.store.resource(ref.project, ref.kind.value, ref.name)
                if row is not None:
                    state = Lifecycle.FAILED.value if making else row.state
                    self.store.set_state(conn, ref.project, ref.kind.value, ref.name,
                                         state, f"{action} failed: {message}")
            self._event("failed", action, spec, message)
            raise
        with self.store.transaction() as conn:
            self.store.end_operation(conn, op, "ok")
            if record is not None:
                state, detail, data = record(result)
                self.store.set_state(conn, ref.project, ref.kind.value, ref.name, state, detail,
                                     data)
        if action in ("start", "stop") and isinstance(spec, InstanceSpec):
            self._tell_networks(action, spec)
        self._event("after", action, spec)
        return result

    def _tell_networks(self, action: str, spec: InstanceSpec) -> None:
        """Let each network the instance is attached to follow its start or stop (ports)."""
        ref = spec.ref
        for net_name, info in self.store.attachments(ref.project, ref.kind.value,
                                                     ref.name).items():
            attachment = NetworkAttachment.model_validate_json(info)
            net_row = self.store.resource(ref.project, "network", net_name)
            if net_row is None or attachment.endpoint == "none":
                continue
            net_spec = self.recorded_spec(net_row)
            net_driver = self.driver_for(net_spec)
            assert isinstance(net_driver, NetworkDriver) and isinstance(net_spec, NetworkSpec)
            if action == "start":
                net_driver.instance_started(net_spec, attachment, spec)
            else:
                net_driver.instance_stopped(net_spec, attachment, spec)

    @staticmethod
    def _status_record(status: ResourceStatus) -> tuple[str, str, dict[str, str]]:
        return status.state.value, status.detail, status.data

    def _record_intent(self, spec: ResourceSpec) -> None:
        with self.store.transaction() as conn:
            self.store.put_resource(conn, spec.ref.project, spec.ref.kind.value, spec.ref.name,
                                    spec.driver, specmod.spec_json(spec), specmod.spec_hash(spec),
                                    Lifecycle.CREATING.value)

    def _make(self, spec: ResourceSpec, attached: dict[str, AttachedRun] | None = None) -> None:
        """Create the resource and, for an instance, start it (attached when ``attached``
        is given and the driver can: its run is put there under the instance's key)."""
        self._record_intent(spec)
        driver = self.driver_for(spec)
        if isinstance(driver, ComputeDriver):
            assert isinstance(spec, InstanceSpec)
            self._wait_for_dependencies(spec)
            spec = self._prepare_instance(spec)
            # still "creating" until attached: a crash in between is resumed by the next up
            self._call("create", spec, lambda: driver.create(spec),
                       lambda status: (Lifecycle.CREATING.value, status.detail, status.data),
                       making=True)
            spec = self._attach_networks(spec)
            self._start(spec, driver, attached, making=True)
        else:
            assert isinstance(driver, NetworkDriver | StorageDriver)
            self._call("create", spec, lambda: driver.create(spec),  # type: ignore[arg-type]
                       self._status_record, making=True)

    def _start(self, spec: InstanceSpec, driver: ComputeDriver,
               attached: dict[str, AttachedRun] | None, making: bool = False) -> None:
        """Start an instance and record it; attached to this process when ``attached`` is
        given and the driver can (the run is put there under the instance's key)."""

        def start() -> ResourceStatus:
            run = driver.start_attached(spec) if attached is not None else None
            if run is None:
                return driver.start(spec)
            assert attached is not None
            attached[spec.ref.key] = run
            return run.status

        self._call("start", spec, start, self._status_record, making=making)

    def _wait_for_dependencies(self, spec: InstanceSpec) -> None:
        """Wait until every dependency with a health check passes it (or fail clearly)."""
        for dep in spec.depends_on:
            row = next((r for r in self.store.resources(spec.ref.project, ("vm", "container"))
                        if r.name == dep), None)
            if row is None:
                continue
            dep_spec = self.recorded_spec(row)
            health = getattr(dep_spec, "healthcheck", None)
            if health is None:
                continue
            driver = self.driver_for(dep_spec)
            assert isinstance(driver, ComputeDriver) and isinstance(dep_spec, InstanceSpec)
            limit = health.start_period + health.retries * (health.interval + health.timeout)
            self.context.progress(f"waiting for {dep_spec.ref.key} to be healthy "
                                  f"(up to {limit:.0f}s)")
            deadline = time.monotonic() + limit
            while True:
                result = driver.check_health(dep_spec)
                if result is None:
                    result = driver.status(dep_spec).state is Lifecycle.RUNNING
                if result:
                    break
                if time.monotonic() >= deadline:
                    raise NovaError(f"{spec.ref.key} depends on {dep_spec.ref.key}, whose health "
                                    f"check still fails after {limit:.0f}s",
                                    hint=f"nova logs {dep_spec.ref.kind.value} {dep} shows why; "
                                         "healthcheck interval/retries/start_period set the wait")
                time.sleep(min(health.interval, max(0.0, deadline - time.monotonic())))

    def _prepare_instance(self, spec: InstanceSpec) -> InstanceSpec:
        """Reserve devices and resolve volumes, recording each before it is made."""
        ref = spec.ref
        assigned: list[DeviceAssignment] = []
        if isinstance(spec, VmSpec):
            for name in self._device_drivers(spec):
                device_driver = self.driver(DriverKind.DEVICE, name)
                assert isinstance(device_driver, DeviceDriver)
                wanted = [a for a in spec.devices if device_driver_for(a) == name]
                claim = DeviceClaim(holder=ref, gpu=spec.gpu_passthrough and name == "vfio",
                                    addresses=wanted)
                assigned.extend(self._call("reserve-devices", spec,
                                           lambda d=device_driver, c=claim: d.reserve(c),
                                           making=True))
        volumes = []
        for mount in spec.volumes:
            if mount.type == "volume":
                row = self.store.resource(ref.project, "volume", mount.source)
                path = row.data_dict().get("path") if row else None
                if not path:
                    raise NovaError(f"volume {mount.source} has no path recorded",
                                    hint="run nova up so the volume is created first")
                mount = mount.model_copy(update={"host_path": path})
            volumes.append(mount)
        prepared = spec.model_copy(update={"assigned_devices": assigned, "volumes": volumes})
        with self.store.transaction() as conn:
            self.store.put_resource(conn, ref.project, ref.kind.value, ref.name, spec.driver,
                                    specmod.spec_json(prepared), specmod.spec_hash(prepared),
                                    Lifecycle.CREATING.value)
        return prepared

    def _attach_networks(self, spec: InstanceSpec) -> InstanceSpec:
        """Attach the created instance to its networks, recording each before it is made.

        After ``create`` (so a compute driver can first make what the network driver
        plugs into, such as a capsule's own network namespace) and before ``start``.
        """
        ref = spec.ref
        attachments: list[NetworkAttachment] = []
        for net_name in spec.networks:
            net_row = self.store.resource(ref.project, "network", net_name)
            if net_row is None:
                continue  # "host", "user", "none": no network driver involved
            net_spec = self.recorded_spec(net_row)
            assert isinstance(net_spec, NetworkSpec)
            net_driver = self.driver_for(net_spec)
            assert isinstance(net_driver, NetworkDriver)
            pending = NetworkAttachment(network=net_name, driver=net_spec.driver, instance=ref,
                                        endpoint="none")
            with self.store.transaction() as conn:
                self.store.put_attachment(conn, ref.project, ref.kind.value, ref.name, net_name,
                                          pending.model_dump_json())
            attachment = self._call("attach", spec,
                                    lambda d=net_driver, n=net_spec: d.attach(n, spec),
                                    making=True)
            with self.store.transaction() as conn:
                self.store.put_attachment(conn, ref.project, ref.kind.value, ref.name, net_name,
                                          attachment.model_dump_json())
            attachments.append(attachment)
        attached = spec.model_copy(update={"attachments": attachments})
        row = self.store.resource(ref.project, ref.kind.value, ref.name)
        with self.store.transaction() as conn:
            self.store.put_resource(conn, ref.project, ref.kind.value, ref.name, spec.driver,
                                    specmod.spec_json(attached), specmod.spec_hash(attached),
                                    row.state if row else Lifecycle.CREATING.value,
                                    row.detail if row else "", row.data_dict() if row else None)
        return attached

    @staticmethod
    def _device_drivers(spec: VmSpec) -> list[str]:
        names = {device_driver_for(a) for a in spec.devices}
        if spec.gpu_passthrough:
            names.add("vfio")
        return sorted(names)

    def _update(self, step: PlanStep, attached: dict[str, AttachedRun] | None = None) -> None:
        spec = step.spec
        assert spec is not None
        driver = self.driver_for(spec)
        live = spec
        if isinstance(spec, InstanceSpec):
            assert isinstance(driver, ComputeDriver)
            row = self.store.resource(spec.ref.project, spec.ref.kind.value, spec.ref.name)
            recorded = self.recorded_spec(row) if row else spec
            assert isinstance(recorded, InstanceSpec)
            live = spec.model_copy(update={"attachments": recorded.attachments,
                                           "assigned_devices": recorded.assigned_devices})
            if step.start_only:
                self._start(live, driver, attached)
                return
        status = self._call("update", live,
                            lambda: driver.update(live, step.changed))  # type: ignore[attr-defined]
        with self.store.transaction() as conn:
            self.store.put_resource(conn, live.ref.project, live.ref.kind.value, live.ref.name,
                                    live.driver, specmod.spec_json(live), specmod.spec_hash(live),
                                    status.state.value, status.detail, status.data)

    def _remove(self, spec: ResourceSpec, quiet: bool = False) -> None:
        """Stop and delete a resource, undo its attachments and devices, forget it."""
        ref = spec.ref
        driver = self.driver_for(spec)
        if isinstance(driver, ComputeDriver):
            assert isinstance(spec, InstanceSpec)
            status = driver.status(spec)
            if status.state in (Lifecycle.RUNNING, Lifecycle.PAUSED):
                self._call("stop", spec, lambda: driver.stop(spec, spec.stop_timeout),
                           self._status_record)
            self._call("delete", spec, lambda: driver.delete(spec))
            self._detach_all(spec)
            for name in sorted({a.driver for a in spec.assigned_devices} |
                               (set(self._device_drivers(spec)) if isinstance(spec, VmSpec)
                                else set())):
                device_driver = self.driver(DriverKind.DEVICE, name)
                assert isinstance(device_driver, DeviceDriver)
                self._call("release-devices", spec, lambda d=device_driver: d.release(ref))
        else:
            if isinstance(spec, NetworkSpec) and not quiet:
                users = self.store.attached_to(ref.project, ref.name)
                if users:
                    raise NovaError(f"network {ref.name} still has instances attached: "
                                    f"{', '.join(users)}", hint="remove those instances first")
            self._call("delete", spec, lambda: driver.delete(spec))  # type: ignore[attr-defined]
        with self.store.transaction() as conn:
            self.store.delete_resource(conn, ref.project, ref.kind.value, ref.name)

    def _detach_all(self, spec: InstanceSpec) -> None:
        ref = spec.ref
        for net_name, info in self.store.attachments(ref.project, ref.kind.value,
                                                     ref.name).items():
            attachment = NetworkAttachment.model_validate_json(info)
            net_row = self.store.resource(ref.project, "network", net_name)
            if net_row is not None:
                net_spec = self.recorded_spec(net_row)
                net_driver = self.driver_for(net_spec)
                assert isinstance(net_driver, NetworkDriver) and isinstance(net_spec, NetworkSpec)
                self._call("detach", spec,
                           lambda d=net_driver, n=net_spec, a=attachment: d.detach(n, a))
            with self.store.transaction() as conn:
                self.store.delete_attachment(conn, ref.project, ref.kind.value, ref.name,
                                             net_name)

    # -- single-instance operations for the CLI ------------------------------------------
    def instance(self, project: str, kind: ResourceKind, name: str) -> tuple[InstanceSpec,
                                                                             ComputeDriver]:
        """The recorded spec and driver of an instance, or a clear error."""
        row = self.store.resource(project, kind.value, name)
        if row is None:
            raise NovaError(f"{kind.value} '{name}' is not recorded in project '{project}'",
                            hint=f"nova run {kind.value} {name} creates it from the NovaFile")
        spec = self.recorded_spec(row)
        driver = self.driver_for(spec)
        assert isinstance(spec, InstanceSpec) and isinstance(driver, ComputeDriver)
        return spec, driver

    def start_instance(self, spec: InstanceSpec, driver: ComputeDriver) -> ResourceStatus:
        """Start a recorded instance and record its state."""
        return self._call("start", spec, lambda: driver.start(spec), self._status_record)

    def stop_instance(self, spec: InstanceSpec, driver: ComputeDriver,
                      timeout: float | None = None) -> ResourceStatus:
        """Stop a recorded instance and record its state."""
        wait = spec.stop_timeout if timeout is None else timeout
        return self._call("stop", spec, lambda: driver.stop(spec, wait), self._status_record)

    def pause_instance(self, spec: InstanceSpec, driver: ComputeDriver) -> ResourceStatus:
        """Pause a running instance and record its state."""
        return self._call("pause", spec, lambda: driver.pause(spec), self._status_record)

    def resume_instance(self, spec: InstanceSpec, driver: ComputeDriver) -> ResourceStatus:
        """Resume a paused instance and record its state."""
        return self._call("resume", spec, lambda: driver.resume(spec), self._status_record)

    def _recorded_snapshot(self, spec: InstanceSpec, name: str) -> None:
        ref = spec.ref
        names = [s[0] for s in self.store.snapshots(ref.project, ref.kind.value, ref.name)]
        if name not in names:
            raise NovaError(f"{ref.key} has no snapshot named '{name}'",
                            hint=f"nova snapshot ls {ref.kind.value} {ref.name} lists them")

    def restore_instance(self, spec: InstanceSpec, driver: ComputeDriver, name: str) -> ResourceStatus:
        """Restore a recorded snapshot and record the instance's state."""
        self._recorded_snapshot(spec, name)
        return self._call("restore", spec, lambda: driver.restore_snapshot(spec, name),
                          self._status_record)

    def delete_instance_snapshot(self, spec: InstanceSpec, driver: ComputeDriver, name: str) -> None:
        """Remove a recorded snapshot."""
        self._recorded_snapshot(spec, name)
        self._call("delete-snapshot", spec, lambda: driver.delete_snapshot(spec, name))
        self.store.delete_snapshot(spec.ref.project, spec.ref.kind.value, spec.ref.name, name)

    def snapshot_instance(self, spec: InstanceSpec, driver: ComputeDriver, name: str) -> Any:
        """Take and record a snapshot."""
        ref = spec.ref
        if name in [s[0] for s in self.store.snapshots(ref.project, ref.kind.value, ref.name)]:
            raise NovaError(f"{ref.key} already has a snapshot named '{name}'",
                            hint="choose another --name, or nova snapshot rm it first")
        info = self._call("snapshot", spec, lambda: driver.snapshot(spec, name))
        self.store.put_snapshot(spec.ref.project, spec.ref.kind.value, spec.ref.name, info.name,
                                info.model_dump_json())
        return info



__all__ = ["ApplyReport", "Engine", "INSTANCE_KINDS", "Reporter", "SilentReporter"]
