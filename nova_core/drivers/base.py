"""What every driver is: a named class built with a context, declaring its options."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from nova_core.drivers.models import DriverKind, DriverOptions, RenderedDetail, ResourceSpec


@dataclass(frozen=True)
class DriverContext:
    """What the core hands a driver when it builds it.

    :param nova_home: the folder for Nova's state; a driver keeps its own files
        under ``nova_home / <driver name>``.
    :param progress: call with a short message to report progress of long work.
    :param force: the user asked to go ahead where a driver would refuse for safety
        (``nova up --force``), e.g. enslaving the host's uplink to a bridge.
    """

    nova_home: Path
    progress: Callable[[str], None] = field(default=lambda message: None)
    force: bool = False

    def driver_dir(self, driver_name: str) -> Path:
        """Return (and create) the folder a driver keeps its files in."""
        path = self.nova_home / "drivers" / driver_name
        path.mkdir(parents=True, exist_ok=True)
        return path


class Driver(abc.ABC):
    """Base of all driver kinds.

    The driver's name is its entry-point name: the core passes it in, the class
    never hard-codes it. ``options_model`` is the pydantic model of the keys this
    driver adds to its NovaFile tables.
    """

    kind: ClassVar[DriverKind]
    options_model: ClassVar[type[DriverOptions]] = DriverOptions
    #: Spec fields the driver can change on an existing resource through ``update``;
    #: a change to any other field makes the engine replace the resource.
    updatable_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, context: DriverContext) -> None:
        self.name = name
        self.context = context

    @classmethod
    def warm_up(cls) -> None:
        """Compute what every command would compute again and that stays true while a
        warm helper lives (host facts read once per process: the cgroup layout, where
        a program is installed).

        The warm helper (:mod:`nova_core.warm`) calls it once, before it forks the
        children that run commands, so they inherit the results. It has no NOVA_HOME,
        so it must only read; an exception is ignored (the child computes it itself).
        The default does nothing.
        """
        return

    @abc.abstractmethod
    def render(self, spec: ResourceSpec) -> list[RenderedDetail]:
        """Describe concretely what applying ``spec`` will do (argv, XML, rules...).

        Must not touch the host: ``nova plan`` calls it as a dry run.
        """
