"""Fan-out hooks every plugin may answer (pluggy, project name ``nova_core``).

A plugin is a module (or object) named by an entry point in the group
``nova_core.plugins``; its functions decorated with :data:`hookimpl` answer the
hooks below. Named drivers are *not* hooks: they are entry points in
``nova_core.compute`` / ``network`` / ``storage`` / ``device``.

A complete plugin module::

    # my_plugin/hooks.py, registered as  [project.entry-points."nova_core.plugins"]
    #                                    my-plugin = "my_plugin.hooks"
    import click
    from nova_core.hookspecs import hookimpl
    from nova_core.hooktypes import program_check

    @hookimpl
    def nova_doctor_checks():
        return [program_check("my-plugin", "socat", "forwards consoles", "apt-get install socat")]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from nova_core.drivers.base import Driver
    from nova_core.drivers.models import RenderedDetail
    from nova_core.engine.plan import PlanStep
    from nova_core.hooktypes import CheckResult, LifecycleEvent
    from nova_core.images import ImageKind

PROJECT_NAME = "nova_core"
ENTRY_POINT_GROUP = "nova_core.plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def nova_cli_commands() -> list[click.Command]:
    """Return click commands to add to ``nova``.

    Commands whose name clashes with a core command are refused with a warning.

    Example::

        @hookimpl
        def nova_cli_commands():
            @click.command("hello", help="Say hello.")
            def hello():
                click.echo("hello from my-plugin")
            return [hello]

    :return: a list of :class:`click.Command` (groups allowed).
    """


@hookspec
def nova_image_kinds() -> list[ImageKind]:
    """Return the kinds of images the plugin stores, for ``nova image``.

    Each is an :class:`nova_core.images.ImageKind` (see that module for an example).
    """


@hookspec
def nova_doctor_checks() -> list[CheckResult]:
    """Return host checks for ``nova doctor``.

    Checks must be quick (a few seconds at most) and must not change the host.

    Example::

        @hookimpl
        def nova_doctor_checks():
            return [program_check("my-plugin", "socat", "forwards consoles",
                                  "apt-get install socat")]

    :return: a list of :class:`nova_core.hooktypes.CheckResult`.
    """


@hookspec
def nova_lifecycle_event(event: LifecycleEvent) -> None:
    """Observe a resource being created, started, stopped or deleted.

    Called with ``phase="before"`` before the driver call and ``"after"`` or
    ``"failed"`` after it. An exception raised here is reported as a warning and
    never stops the apply.

    Example::

        @hookimpl
        def nova_lifecycle_event(event):
            if event.phase == "after" and event.action == "start":
                print(f"{event.kind} {event.name} is up")

    :param event: what happened, see :class:`nova_core.hooktypes.LifecycleEvent`.
    """


@hookspec
def nova_plan_render(step: PlanStep, driver: Driver | None) -> list[RenderedDetail]:
    """Contribute concrete detail to ``nova plan`` for one planned step.

    The core answers this hook for every step by asking the step's driver to
    render its spec (the QEMU argv, the nft rules...). Other plugins may add
    their own detail, e.g. a firewall plugin showing the rules a port needs.

    Example::

        @hookimpl
        def nova_plan_render(step, driver):
            if step.ref.kind == "container" and step.spec is not None and step.spec.ports:
                return [RenderedDetail(title="ports", body="8080 -> 80")]
            return []

    :param step: the planned step (action, reason, desired spec).
    :param driver: the loaded driver of the step's resource, or None if absent.
    :return: a list of :class:`nova_core.drivers.models.RenderedDetail`.
    """
