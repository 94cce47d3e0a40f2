"""The network driver kind: makes networks and plugs instances into them."""

from __future__ import annotations

import abc
from typing import ClassVar

from nova_core.drivers.base import Driver
from nova_core.drivers.models import (
    DriverKind,
    InstanceSpec,
    NetworkAttachment,
    NetworkSpec,
    ResourceStatus,
)


class NetworkDriver(Driver):
    """Makes networks and attaches instances to them.

    The engine attaches an instance before the compute driver creates it, so the
    attachment (a tap name, a network namespace path) can be handed to the
    compute driver in ``InstanceSpec.attachments``.
    """

    kind: ClassVar[DriverKind] = DriverKind.NETWORK

    @abc.abstractmethod
    def create(self, spec: NetworkSpec) -> ResourceStatus:
        """Make the network; safe to call again after a crash part way through."""

    @abc.abstractmethod
    def delete(self, spec: NetworkSpec) -> None:
        """Remove the network and everything the driver made for it."""

    @abc.abstractmethod
    def status(self, spec: NetworkSpec) -> ResourceStatus:
        """Observe the network on the host."""

    @abc.abstractmethod
    def attach(self, spec: NetworkSpec, instance: InstanceSpec) -> NetworkAttachment:
        """Make what ``instance`` needs to join the network and describe it."""

    @abc.abstractmethod
    def detach(self, spec: NetworkSpec, attachment: NetworkAttachment) -> None:
        """Undo :meth:`attach`; releases the instance's address."""

    def instance_started(self, spec: NetworkSpec, attachment: NetworkAttachment,
                         instance: InstanceSpec) -> None:
        """``instance`` (attached as ``attachment``) started: publish its ports, say.

        The engine calls this after every successful start; the default does nothing.
        """

    def instance_stopped(self, spec: NetworkSpec, attachment: NetworkAttachment,
                         instance: InstanceSpec) -> None:
        """``instance`` stopped: withdraw what :meth:`instance_started` made.

        The engine calls this after every stop it makes; :meth:`detach` must undo it too
        (an instance may stop on its own). The default does nothing.
        """

    def own_sockets(self) -> set[tuple[str, str, int]]:
        """(protocol, address, port) of host sockets that this driver's own services hold
        for every network of this NOVA_HOME (a DNS server on each gateway, say) and keep
        out of the way of published ports. ``nova up`` does not count them as a program
        already listening on a port an instance publishes. The default: none."""
        return set()

    def inspect(self, spec: NetworkSpec) -> dict[str, object]:
        """What the driver knows about the network, for ``nova net inspect`` (JSON-able)."""
        return {}

    def update(self, spec: NetworkSpec, changed: frozenset[str]) -> ResourceStatus:
        """Apply changes to ``changed`` (a subset of ``updatable_fields``).

        This default suits fields that are only recorded: it changes nothing on the host.
        """
        return self.status(spec)
