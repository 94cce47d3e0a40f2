"""``nova plan``: what ``nova up`` would do, step by step, with reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nova_core.drivers.base import Driver
from nova_core.drivers.compute import ComputeDriver
from nova_core.drivers.models import (
    ContainerSpec,
    Lifecycle,
    RenderedDetail,
    ResourceKind,
    ResourceRef,
    ResourceSpec,
    VmSpec,
)
from nova_core.drivers.network import NetworkDriver
from nova_core.novafile.values import is_named_volume

Action = Literal["create", "update", "replace", "delete", "unchanged"]
KIND_ORDER = {ResourceKind.NETWORK: 0, ResourceKind.VOLUME: 1, ResourceKind.VM: 2,
              ResourceKind.CONTAINER: 3}
INSTANCE_KINDS = (ResourceKind.VM, ResourceKind.CONTAINER)


@dataclass
class PlanStep:
    """One thing ``nova up`` will do to one resource.

    :param spec: the desired spec (None for ``delete``).
    :param recorded: the spec recorded in state (None if never recorded).
    :param resume: the recorded resource was left part-made; clean it before creating.
    :param start_only: an ``update`` that only starts a stopped instance.
    """

    ref: ResourceRef
    action: Action
    reason: str
    driver: str
    spec: ResourceSpec | None = None
    recorded: ResourceSpec | None = None
    changed: frozenset[str] = frozenset()
    resume: bool = False
    start_only: bool = False
    details: list[RenderedDetail] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        """A JSON-ready dict (no secret values: only field names are listed)."""
        return {
            "resource": self.ref.key,
            "project": self.ref.project,
            "action": self.action,
            "reason": self.reason,
            "driver": self.driver,
            "changed": sorted(self.changed),
            "details": [d.model_dump() for d in self.details],
        }


@dataclass
class Plan:
    """The steps of one apply, in the order they run."""

    project: str
    steps: list[PlanStep]
    kept: list[str] = field(default_factory=list)

    @property
    def changes(self) -> list[PlanStep]:
        """Steps that do something."""
        return [s for s in self.steps if s.action != "unchanged"]

    def counts(self) -> dict[str, int]:
        """How many steps of each action."""
        result: dict[str, int] = {}
        for step in self.steps:
            result[step.action] = result.get(step.action, 0) + 1
        return result


def dependencies(spec: ResourceSpec) -> list[str]:
    """Keys (``kind.name``) of the resources ``spec`` needs first."""
    if not isinstance(spec, VmSpec | ContainerSpec):
        return []
    deps = [f"network.{n}" for n in spec.networks]
    deps += [f"volume.{m.source}" for m in spec.volumes
             if m.type == "volume" and is_named_volume(m.source)]
    deps += [name for name in spec.depends_on]  # instance names, resolved below
    if isinstance(spec, VmSpec) and spec.clone:
        deps.append(spec.clone)
    return deps


def dependency_order(specs: dict[str, ResourceSpec]) -> list[str]:
    """Keys in an order where every resource comes after what it needs.

    Networks and volumes come first; instances follow ``depends_on``; ties are
    broken by kind then name, so the order is stable.
    """
    by_instance_name = {s.ref.name: k for k, s in specs.items() if s.ref.kind in INSTANCE_KINDS}
    graph: dict[str, list[str]] = {}
    for key, spec in specs.items():
        needs = []
        for dep in dependencies(spec):
            dep_key = dep if dep in specs else by_instance_name.get(dep)
            if dep_key and dep_key != key:
                needs.append(dep_key)
        graph[key] = needs
    ordered: list[str] = []
    done: set[str] = set()
    visiting: set[str] = set()

    def sort_key(k: str) -> tuple[int, str]:
        return (KIND_ORDER[specs[k].ref.kind], specs[k].ref.name)

    def visit(key: str) -> None:
        if key in done or key in visiting:  # cycles are rejected when the file is loaded
            return
        visiting.add(key)
        for dep in sorted(graph[key], key=sort_key):
            visit(dep)
        visiting.discard(key)
        done.add(key)
        ordered.append(key)

    for key in sorted(specs, key=sort_key):
        visit(key)
    return ordered


def closure(specs: dict[str, ResourceSpec], names: list[str]) -> set[str]:
    """Keys of the named resources (``name`` or ``kind.name``) and all they need."""
    by_instance_name = {s.ref.name: k for k, s in specs.items() if s.ref.kind in INSTANCE_KINDS}
    wanted: set[str] = set()
    pending = []
    for name in names:
        key = name if name in specs else by_instance_name.get(name)
        if key is None:
            from nova_core.errors import NovaError

            raise NovaError(f"'{name}' is not declared in the NovaFile",
                            hint="use an instance name, or kind.name such as network.lan")
        pending.append(key)
    while pending:
        key = pending.pop()
        if key in wanted:
            continue
        wanted.add(key)
        for dep in dependencies(specs[key]):
            dep_key = dep if dep in specs else by_instance_name.get(dep)
            if dep_key:
                pending.append(dep_key)
    return wanted


def observe_step(step: PlanStep, driver: Driver) -> None:
    """Refine an ``unchanged`` step with what the driver sees on the host."""
    assert step.spec is not None
    status = driver.status(step.spec)  # type: ignore[attr-defined]
    if status.state is Lifecycle.MISSING:
        step.action, step.resume = "create", True
        step.reason = "recorded, but missing on the host: it will be made again"
    elif isinstance(driver, NetworkDriver) and status.state is Lifecycle.STOPPED:
        step.action = "update"
        step.reason = f"incomplete on the host ({status.detail or 'down'}): it will be remade"
    elif isinstance(driver, ComputeDriver) and status.state in (
        Lifecycle.STOPPED, Lifecycle.CREATED, Lifecycle.FAILED
    ):
        step.action, step.start_only = "update", True
        step.reason = f"{status.state.value} on the host: it will be started"
        if status.detail:
            step.reason += f" ({status.detail})"
