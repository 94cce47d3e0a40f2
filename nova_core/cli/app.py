"""The click command tree. Commands import heavy modules inside their bodies, so
``nova ls`` and ``nova --help`` never import pydantic, stevedore or any driver."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from nova_core import __version__
from nova_core.cli.output import print_json, table
from nova_core.errors import NovaError

if TYPE_CHECKING:
    from nova_core.engine.engine import Engine
    from nova_core.novafile.loader import NovaFile
    from nova_core.plugins import PluginRegistry
    from nova_core.state.store import Store

INSTANCE_KIND = click.Choice(["vm", "container"])


class App:
    """What commands share: built lazily so each command pays only for what it uses."""

    def __init__(self, debug: bool) -> None:
        self.debug = debug
        self.force = False  # set by commands with --force before the engine is built
        self._stores: list[Store] = []

    @functools.cached_property
    def nova_home(self) -> Path:
        from nova_core.state.store import default_nova_home

        return default_nova_home()

    @functools.cached_property
    def registry(self) -> PluginRegistry:
        from nova_core.plugins import get_registry

        return get_registry()

    def store(self, readonly: bool = False) -> Store:
        from nova_core.state.store import Store

        store = Store(self.nova_home, readonly=readonly)
        if not self._stores:
            from nova_core.afterwards import defer

            defer(self._close_stores)
        self._stores.append(store)
        return store

    def _close_stores(self) -> None:
        """Close the command's stores once its result is out: the next command then finds the
        write-ahead log folded into the database (see Store.close)."""
        for store in self._stores:
            store.close()

    @functools.cached_property
    def engine(self) -> Engine:
        from nova_core.drivers.base import DriverContext
        from nova_core.engine.engine import Engine

        context = DriverContext(nova_home=self.nova_home,
                                progress=lambda message: click.echo(f"  {message}", err=True),
                                force=self.force)
        return Engine(self.store(), self.registry, context)

    def novafile(self, file: str | None) -> NovaFile:
        from nova_core.novafile.loader import find_novafile, load_novafile

        loaded = load_novafile(find_novafile(file), self.registry)
        return loaded

    def lock(self, project: str) -> Any:
        from nova_core.state.lock import project_lock

        return project_lock(self.nova_home, project)


pass_app = click.make_pass_decorator(App)


def file_option(flags: tuple[str, ...] = ("-f", "--file")) -> Callable[[Any], Any]:
    """The -f FILE option shared by commands that read a NovaFile."""
    return click.option(*flags, "file", metavar="FILE", default=None,
                        help="NovaFile to use (default: NovaFile, NovaFile.toml or "
                             "Boltfile.toml in the current folder).")


def _project_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from nova_core.names import NAME_RULE, is_valid_name

    if value is not None and not is_valid_name(value):
        raise click.BadParameter(f"'{value}' is not a project name ({NAME_RULE})")
    return value


def project_option(help_text: str) -> Callable[[Any], Any]:
    """The -p/--project option, checked like project names in a NovaFile."""
    return click.option("-p", "--project", default=None, callback=_project_name, help=help_text)


def json_option() -> Callable[[Any], Any]:
    """The --json flag."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


class NovaGroup(click.Group):
    """The top-level group: core commands, then commands that plugins add (pluggy)."""

    def _plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        cache = ctx.meta.setdefault("nova.plugin_commands", {})
        if "loaded" not in cache:
            from nova_core.plugins import get_registry

            registry = get_registry()
            found: dict[str, click.Command] = {}
            for commands in registry.call_hook_safely("nova_cli_commands"):
                for command in commands:
                    if command.name in self.commands or command.name in found:
                        registry.warn(f"a plugin command '{command.name}' clashes with an "
                                      "existing command and is ignored")
                        continue
                    found[str(command.name)] = command
            cache["commands"] = found
            cache["loaded"] = True
        return cache["commands"]

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*self.commands, *self._plugin_commands(ctx)])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        found = self._plugin_commands(ctx).get(cmd_name)
        if found is None and cmd_name in ALIASES:
            return self.commands.get(ALIASES[cmd_name])
        return found


#: What users of docker and podman (``ps``) or incus and virsh (``list``) type, answered by
#: Nova's own command; not listed in the help, and a plugin's command of the name wins.
ALIASES = {"ps": "ls", "list": "ls"}


@click.group(cls=NovaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="nova",
                      message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Nova: virtual machines, capsules and networks from one NovaFile.

    \b
    Start with:  nova validate   nova plan   nova up   nova ls   nova down
    Host report: nova doctor     Plugins:    nova plugins ls
    """
    ctx.obj = App(debug)


# -- NovaFile ---------------------------------------------------------------------------------
@cli.command()
@file_option()
@json_option()
@pass_app
def validate(app: App, file: str | None, as_json: bool) -> None:
    """Check a NovaFile without touching the host or the state."""
    from nova_core.errors import NovaFileError
    from nova_core.novafile.loader import find_novafile, load_novafile

    try:
        path = find_novafile(file)
        loaded = load_novafile(path, app.registry)
    except NovaError as error:
        if as_json:
            problems = error.problems if isinstance(error, NovaFileError) else [str(error)]
            print_json({"file": file, "valid": False, "errors": problems})
            raise click.exceptions.Exit(1) from error
        raise
    if as_json:
        print_json({"file": str(path), "valid": True, "project": loaded.project,
                    "resources": sorted(loaded.specs), "notes": loaded.notes})
        return
    for note in loaded.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"{path}: valid; {loaded.summary()}")


@cli.command()
@pass_app
def schema(app: App) -> None:
    """Print the JSON Schema of the NovaFile (for editor completion)."""
    from nova_core.novafile.schema import novafile_schema

    print_json(novafile_schema(app.registry))


# -- plan / up / down ---------------------------------------------------------------------------
def _print_plan(plan: Any, as_json: bool) -> None:
    from nova_core.secrets import mask, secret_values

    secrets = secret_values(*[s.spec for s in plan.steps], *[s.recorded for s in plan.steps])
    if as_json:
        text = json.dumps({"project": plan.project, "steps": [s.as_json() for s in plan.steps],
                           "kept": plan.kept, "counts": plan.counts()}, indent=2)
        click.echo(mask(text, secrets))
        return
    symbols = {"create": "+", "update": "~", "replace": "±", "delete": "-", "unchanged": "="}
    click.echo(f"project {plan.project}:")
    for step in plan.steps:
        click.echo(f"  {symbols[step.action]} {step.action:<9} {step.ref.key:<28} "
                   f"[{step.driver}]  {mask(step.reason, secrets)}")
        for detail in step.details:
            body = mask(detail.body, secrets)
            click.echo(f"      {detail.title}:")
            for line in body.splitlines():
                click.echo(f"        {line}")
    for key in plan.kept:
        click.echo(f"  = keep      {key:<28} kept with its data (nova down --volumes removes it)")
    counts = plan.counts()
    summary = ", ".join(f"{n} to {a}" if a != "unchanged" else f"{n} unchanged"
                        for a, n in counts.items())
    click.echo(f"plan: {summary or 'nothing declared'}")


@cli.command()
@file_option()
@json_option()
@click.argument("names", nargs=-1)
@pass_app
def plan(app: App, file: str | None, as_json: bool, names: tuple[str, ...]) -> None:
    """Show what `nova up` would do, and how each driver would do it."""
    loaded = app.novafile(file)
    _print_plan(app.engine.plan(loaded, list(names) or None), as_json)


class _LineReporter:
    """Prints one line per step; a spinner while a step runs on a terminal."""

    def __init__(self) -> None:
        self._status: Any = None

    def step_started(self, step: Any, index: int, total: int) -> None:
        verb = {"create": "creating", "update": "updating", "replace": "replacing",
                "delete": "removing"}[step.action]
        self._line = f"[{index}/{total}] {verb} {step.ref.key}"
        if sys.stdout.isatty():
            from rich.console import Console

            self._status = Console().status(self._line + " ...")
            self._status.start()

    def _end(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def step_finished(self, step: Any, seconds: float) -> None:
        self._end()
        click.echo(f"{self._line}: done ({seconds:.2f}s)")

    def step_failed(self, step: Any, error: str) -> None:
        self._end()
        click.echo(f"{self._line}: failed")


@cli.command()
@file_option()
@click.option("--force", is_flag=True,
              help="Go ahead where a driver refuses for safety (e.g. enslaving the host's uplink).")
@click.argument("names", nargs=-1)
@pass_app
def up(app: App, file: str | None, force: bool, names: tuple[str, ...]) -> None:
    """Create and start what the NovaFile declares (or only NAMES and what they need)."""
    app.force = force
    loaded = app.novafile(file)
    for note in loaded.notes:
        click.echo(f"note: {note}", err=True)
    with app.lock(loaded.project):
        plan = app.engine.plan(loaded, list(names) or None, render=False)
        if not plan.changes:
            click.echo(f"project {loaded.project}: up to date ({len(plan.steps)} unchanged)")
            return
        report = app.engine.apply(plan, _LineReporter())
    click.echo(f"project {loaded.project}: {len(report.applied)} change"
               f"{'s' if len(report.applied) != 1 else ''} applied in {report.seconds:.2f}s")


def _project_for_down(app: App, file: str | None, project: str | None) -> str:
    if project:
        return project
    return app.novafile(file).project


@cli.command()
@file_option()
@project_option("Project to take down (default: the NovaFile's).")
@click.option("--volumes", is_flag=True, help="Also remove named volumes and their data.")
@click.argument("names", nargs=-1)
@pass_app
def down(app: App, file: str | None, project: str | None, volumes: bool,
         names: tuple[str, ...]) -> None:
    """Stop and remove what `nova up` made, in reverse order."""
    name = _project_for_down(app, file, project)
    with app.lock(name):
        plan = app.engine.down_plan(name, list(names) or None, remove_volumes=volumes)
        if not plan.changes:
            click.echo(f"project {name}: nothing to remove")
        else:
            report = app.engine.apply(plan, _LineReporter(), command="nova down")
            click.echo(f"project {name}: {len(report.applied)} removed in {report.seconds:.2f}s")
    for key in plan.kept:
        click.echo(f"kept {key} (its data stays; nova down --volumes removes it)")


# -- listing ------------------------------------------------------------------------------------
@cli.command("ls")
@json_option()
@project_option("Only this project.")
@pass_app
def list_instances(app: App, as_json: bool, project: str | None) -> None:
    """List every VM and capsule Nova has recorded, with its state."""
    store = app.store(readonly=True)
    rows = store.resources(project, kinds=("vm", "container"))
    if as_json:
        print_json([{"project": r.project, "kind": r.kind, "name": r.name, "driver": r.driver,
                     "state": r.state, "detail": r.detail, "data": r.data_dict()} for r in rows])
        return
    if not rows:
        click.echo("no instances (nova up creates the ones in your NovaFile)")
        return
    click.echo(table(["PROJECT", "KIND", "NAME", "DRIVER", "STATE", "DETAIL"],
                     [(r.project, r.kind, r.name, r.driver, r.state, r.detail) for r in rows]))


@cli.group()
def net() -> None:
    """Networks."""


@net.command("ls")
@json_option()
@project_option("Only this project.")
@pass_app
def net_ls(app: App, as_json: bool, project: str | None) -> None:
    """List the networks Nova has recorded."""
    store = app.store(readonly=True)
    rows = store.resources(project, kinds=("network",))
    items = []
    for row in rows:
        spec = row.spec_dict()
        items.append({"project": row.project, "name": row.name, "driver": row.driver,
                      "type": spec.get("type"), "state": row.state,
                      "subnet": row.data_dict().get("subnet") or spec.get("subnet"),
                      "attached": store.attached_to(row.project, row.name)})
    if as_json:
        print_json(items)
        return
    if not items:
        click.echo("no networks")
        return
    click.echo(table(["PROJECT", "NAME", "DRIVER", "TYPE", "STATE", "SUBNET", "ATTACHED"],
                     [(i["project"], i["name"], i["driver"], i["type"], i["state"],
                       i["subnet"] or "-", len(i["attached"])) for i in items]))


def _network_row(app: App, name: str, project: str | None) -> tuple[str, Any]:
    """The recorded network ``name``: of ``project``, else the only one by that name."""
    rows = [r for r in app.engine.store.resources(project, kinds=("network",)) if r.name == name]
    if not rows:
        where = f" in project '{project}'" if project else ""
        raise NovaError(f"no network {name}{where}", hint="nova net ls lists them")
    if len(rows) > 1:
        projects = ", ".join(sorted(r.project for r in rows))
        raise NovaError(f"several projects have a network {name}: {projects}",
                        hint="say which with -p PROJECT")
    return rows[0].project, rows[0]


@net.command("inspect")
@click.argument("name")
@project_option("Project of the network (default: the only one with a network NAME).")
@json_option()
@pass_app
def net_inspect(app: App, name: str, project: str | None, as_json: bool) -> None:
    """Show a network: its settings, addresses, attached instances and host objects."""
    from nova_core.drivers.network import NetworkDriver

    project, row = _network_row(app, name, project)
    spec = app.engine.recorded_spec(row)
    driver = app.engine.driver_for(spec)
    assert isinstance(driver, NetworkDriver)
    attached = []
    for key in app.engine.store.attached_to(project, name):
        kind, instance = key.split(".", 1)
        info = json.loads(app.engine.store.attachments(project, kind, instance).get(name, "{}"))
        attached.append({"instance": key, "endpoint": info.get("endpoint"),
                         **info.get("details", {})})
    info = {"project": project, "name": name, "driver": row.driver, "state": row.state,
            "settings": {k: v for k, v in row.spec_dict().items()
                         if k not in ("ref", "driver", "base_dir")},
            "status": row.data_dict(), "attached": attached, "host": driver.inspect(spec)}
    if as_json:
        print_json(info)
        return
    click.echo(f"network {name} (project {project}, driver {row.driver}): {row.state}")
    for key, value in {**info["settings"], **info["status"]}.items():
        if value not in (None, [], {}, ""):
            click.echo(f"  {key}: {value if not isinstance(value, dict | list) else json.dumps(value)}")
    click.echo(f"  attached: {len(attached)}")
    for item in attached:
        extra = ", ".join(f"{k}={v}" for k, v in item.items() if k != "instance")
        click.echo(f"    {item['instance']}: {extra}")
    for key, value in info["host"].items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            click.echo(f"  {key}:")  # peers of an overlay, say: one line each
            for item in value:
                click.echo("    " + ", ".join(f"{k}={v}" for k, v in item.items()
                                              if v not in (None, "", [])))
            continue
        click.echo(f"  {key}: {value if not isinstance(value, dict | list) else json.dumps(value)}")


def _option_value(text: str, as_list: bool) -> Any:
    """A -o value: JSON when it parses (true, 42, [..]), else text; lists split on commas."""
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if as_list and not isinstance(value, list):
        return [part for part in str(text).split(",") if part]
    return value


@net.command("create")
@click.argument("name")
@project_option("Project of the network (default: 'default').")
@click.option("--subnet", default=None, help="CIDR, e.g. 10.1.2.0/24 (default: a free /24).")
@click.option("--gateway", default=None, help="The bridge's address (default: the first).")
@click.option("--dns/--no-dns", default=False, help="Instances resolve each other by name.")
@click.option("--mtu", type=int, default=None, help="The network's MTU (default: the driver's).")
@click.option("--interface", "interfaces", multiple=True, metavar="LINK",
              help="An uplink to enslave to the bridge (repeat for more), e.g. enp6s0.")
@click.option("--type", "net_type", default="bridge", show_default=True,
              type=click.Choice(["bridge", "overlay"]))
@click.option("--driver", "driver_name", default=None, help="Network driver (default: by type).")
@click.option("-o", "--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="A driver option, e.g. -o nat=false, -o isolated=true, -o vni=42.")
@click.option("--force", is_flag=True,
              help="Go ahead where the driver refuses for safety (e.g. enslaving the host's uplink).")
@pass_app
def net_create(app: App, name: str, project: str | None, subnet: str | None,
               gateway: str | None, dns: bool, mtu: int | None, interfaces: tuple[str, ...],
               net_type: str, driver_name: str | None, opts: tuple[str, ...],
               force: bool) -> None:
    """Create a network outside of `nova up`."""
    app.force = force
    from pydantic import ValidationError

    from nova_core.drivers.models import DriverKind, NetworkSpec, ResourceKind, ResourceRef
    from nova_core.engine.plan import Plan, PlanStep
    from nova_core.names import NAME_RULE, is_valid_name
    from nova_core.novafile.entries import NetworkEntry, default_driver

    if not is_valid_name(name):
        raise click.BadParameter(f"'{name}' is not a network name ({NAME_RULE})", param_hint="NAME")
    try:
        entry = NetworkEntry(type=net_type, subnet=subnet, gateway=gateway, dns=dns, mtu=mtu,
                             interfaces=list(interfaces))
    except ValidationError as error:
        problem = error.errors()[0]
        raise click.BadParameter(problem["msg"], param_hint=f"--{problem['loc'][0]}" if
                                 problem["loc"] else None) from error
    driver_name = driver_name or default_driver("network", {"type": net_type})
    model = app.registry.driver_class(DriverKind.NETWORK, driver_name).options_model
    options: dict[str, Any] = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{opt}' is not KEY=VALUE", param_hint="--opt")
        field = model.model_fields.get(key)
        as_list = field is not None and "list" in str(field.annotation)
        options[key] = _option_value(value, as_list)
    try:
        driver_options = model.model_validate(options)
    except ValidationError as error:
        problem = error.errors()[0]
        raise click.BadParameter(f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}",
                                 param_hint="--opt") from error
    project = project or "default"  # not a NovaFile's project: its `nova up` would remove it
    spec = NetworkSpec(ref=ResourceRef(project=project, kind=ResourceKind.NETWORK, name=name),
                       driver=driver_name, base_dir=Path.cwd(), options=driver_options,
                       type=entry.type, subnet=entry.subnet, gateway=entry.gateway, dns=entry.dns,
                       mtu=entry.mtu, interfaces=entry.interfaces)
    with app.lock(project):
        existing = app.engine.store.resource(project, "network", name)
        if existing is not None and existing.state not in ("creating", "failed"):
            raise NovaError(f"network {name} already exists in project '{project}'",
                            hint="nova net inspect shows it")
        step = PlanStep(ref=spec.ref, action="create", reason="nova net create",
                        driver=driver_name, spec=spec, resume=existing is not None)
        if existing is not None:
            step.recorded = app.engine.recorded_spec(existing)
        try:
            app.engine.apply(Plan(project=project, steps=[step]), command="nova net create")
        except NovaError:
            # the driver undid its part; nothing is left to resume, so forget the row too
            with app.engine.store.transaction() as conn:
                app.engine.store.delete_resource(conn, project, "network", name)
            raise
        subnet_made = app.engine.store.resource(project, "network", name).data_dict().get("subnet")
    click.echo(f"network {name} created in project '{project}'"
               f"{f' ({subnet_made})' if subnet_made else ''}")


@net.command("rm")
@click.argument("name")
@project_option("Project of the network (default: the only one with a network NAME).")
@pass_app
def net_rm(app: App, name: str, project: str | None) -> None:
    """Remove a network (refused while instances are attached)."""
    project, _ = _network_row(app, name, project)
    with app.lock(project):
        users = app.engine.store.attached_to(project, name)
        if users:
            names = " ".join(u.split(".", 1)[1] for u in users)
            raise NovaError(f"network {name} has instances attached: {', '.join(users)}",
                            hint=f"remove them first (nova down {names})")
        plan = app.engine.down_plan(project, [f"network.{name}"])
        app.engine.apply(plan, command="nova net rm")
    click.echo(f"network {name} removed")


# -- single instances ---------------------------------------------------------------------------
def resolve_project(app: App, kind: str, name: str, file: str | None,
                     project: str | None) -> str:
    """The project of instance ``kind.name``: -p, else the NovaFile here, else the only one."""
    if project:
        return project
    from nova_core.novafile.loader import NOVAFILE_NAMES

    if file or any(Path(n).is_file() for n in NOVAFILE_NAMES):
        return app.novafile(file).project
    projects = app.store(readonly=True).projects_with(kind, name)
    if len(projects) == 1:
        return projects[0]
    if not projects:
        raise NovaError(f"no {kind} named '{name}' is recorded",
                        hint="nova ls lists what exists; run it from the NovaFile's folder "
                             "or pass -f FILE")
    raise NovaError(f"{kind} '{name}' exists in several projects: {', '.join(projects)}",
                    hint="choose one with -p PROJECT")


@contextmanager
def locked_instance(app: App, kind: str, name: str, file: str | None,
                    project: str | None) -> Iterator[tuple[Any, Any]]:
    """Resolve the instance's project, hold its lock, and yield (spec, driver)."""
    from nova_core.drivers.models import ResourceKind

    project = resolve_project(app, kind, name, file, project)
    with app.lock(project):
        yield app.engine.instance(project, ResourceKind(kind), name)


def _act(app: App, kind: str, name: str, file: str | None, project: str | None,
         action: Callable[[Any, Any], Any]) -> None:
    """Run ``action(spec, driver)`` on one instance under its project's lock; print its state."""
    with locked_instance(app, kind, name, file, project) as (spec, driver):
        status = action(spec, driver)
    click.echo(f"{kind}.{name}: {status.state.value}")


def instance_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """KIND NAME arguments plus --file and --project."""
    func = project_option("Project of the instance.")(func)
    func = file_option(("--file",))(func)
    func = click.argument("name")(func)
    return click.argument("kind", type=INSTANCE_KIND)(func)


@cli.command()
@file_option()
@click.option("--wait", is_flag=True, help="Wait until the instance stops, print its output, "
              "and exit with its exit status.")
@click.option("--rm", "remove", is_flag=True, help="Like --wait, then remove the instance.")
@click.argument("kind", type=INSTANCE_KIND)
@click.argument("name")
@pass_app
def run(app: App, file: str | None, wait: bool, remove: bool, kind: str, name: str) -> None:
    """Create (if needed) and start one instance from the NovaFile, with what it needs."""
    loaded = app.novafile(file)
    key = f"{kind}.{name}"
    if key not in loaded.specs:
        declared = sorted(k for k in loaded.specs if k.startswith(kind + "."))
        raise NovaError(f"{key} is not declared in {loaded.path}",
                        hint=f"declared {kind}s: {', '.join(declared) or 'none'}")

    def remove_it() -> None:  # under the project's lock
        app.engine.apply(app.engine.down_plan(loaded.project, [key]),
                         command=f"nova down {name}")

    def take_down() -> None:
        with app.lock(loaded.project):
            remove_it()

    attached = None
    with app.lock(loaded.project):
        existing = app.engine.store.resource(loaded.project, kind, name) if remove else None
        if existing is not None:  # --rm would remove it afterwards, with its data
            raise NovaError(f"{key} already exists ({existing.state}); --rm runs a throwaway "
                            f"instance and removes it afterwards",
                            hint=f"follow it with: nova logs {kind} {name} -f; or run it "
                                 f"without --rm; or remove it first: nova down {name}")
        plan = app.engine.plan(loaded, [key], render=False)
        if plan.changes:
            reporter = None if (wait or remove) else _LineReporter()
            try:  # a throwaway instance runs attached to this process where its driver can
                report = app.engine.apply(plan, reporter, command=f"nova run {kind} {name}",
                                          attach=frozenset({key} if remove else ()))
            except NovaError:
                if remove:  # --rm promises that the instance does not stay, started or not
                    with contextlib.suppress(NovaError):
                        remove_it()
                raise
            attached = report.attached.get(key)
    if not (wait or remove):
        row = app.engine.store.resource(loaded.project, kind, name)
        click.echo(f"{key}: {row.state if row else 'unknown'}")
        return
    if attached is None:
        code = _wait_and_show(app, loaded.project, kind, name)
    else:
        def relay() -> None:
            for line in attached.output():
                click.echo(line.text, err=line.stream == "stderr")

        try:
            relay()
            code = attached.wait()
        except KeyboardInterrupt:  # Ctrl-C ends a throwaway run: stop it, then remove it
            from nova_core.drivers.models import ResourceKind

            spec, driver = app.engine.instance(loaded.project, ResourceKind(kind), name)
            with app.lock(loaded.project):
                app.engine.stop_instance(spec, driver)
            relay()  # its last words
            attached.wait()
            take_down()
            raise
    if remove:
        take_down()
    raise click.exceptions.Exit(code)


def _wait_and_show(app: App, project: str, kind: str, name: str) -> int:
    """Wait for an instance to stop, printing its output as it comes; return its exit code
    (1 if unknown)."""
    from nova_core.drivers.models import Lifecycle, LogRequest, ResourceKind
    from nova_core.polling import Backoff

    spec, driver = app.engine.instance(project, ResourceKind(kind), name)
    shown = 0
    for line in driver.logs(spec, LogRequest(follow=True)):  # as it comes, while it runs
        click.echo(line.text, err=line.stream == "stderr")
        shown += 1
    status = driver.status(spec)
    backoff = Backoff()
    while status.state in (Lifecycle.RUNNING, Lifecycle.PAUSED, Lifecycle.CREATED):
        backoff.wait()
        status = driver.status(spec)
    for index, line in enumerate(driver.logs(spec, LogRequest())):
        if index >= shown:  # what a driver that follows until a pause only wrote since
            click.echo(line.text, err=line.stream == "stderr")
    return status.exit_code if status.exit_code is not None else 1


@cli.command()
@instance_options
@click.option("-t", "--timeout", type=float, default=None,
              help="Seconds before the stop is forced (default: the instance's stop_timeout).")
@pass_app
def stop(app: App, kind: str, name: str, file: str | None, project: str | None,
         timeout: float | None) -> None:
    """Stop a running instance (gracefully, then forced after the timeout)."""
    _act(app, kind, name, file, project,
         lambda spec, driver: app.engine.stop_instance(spec, driver, timeout))


@cli.command()
@instance_options
@pass_app
def kill(app: App, kind: str, name: str, file: str | None, project: str | None) -> None:
    """Stop an instance at once (no grace period)."""
    _act(app, kind, name, file, project,
         lambda spec, driver: app.engine.stop_instance(spec, driver, timeout=0))


@cli.command()
@instance_options
@click.option("-t", "--timeout", type=float, default=None,
              help="Seconds before the stop is forced (default: the instance's stop_timeout).")
@pass_app
def restart(app: App, kind: str, name: str, file: str | None, project: str | None,
            timeout: float | None) -> None:
    """Stop an instance (gracefully) and start it again."""

    def stop_then_start(spec: Any, driver: Any) -> Any:
        app.engine.stop_instance(spec, driver, timeout)
        return app.engine.start_instance(spec, driver)

    _act(app, kind, name, file, project, stop_then_start)


@cli.command()
@instance_options
@pass_app
def pause(app: App, kind: str, name: str, file: str | None, project: str | None) -> None:
    """Freeze a running instance in place (VM CPUs stop; capsule processes freeze)."""
    _act(app, kind, name, file, project, app.engine.pause_instance)


@cli.command()
@instance_options
@pass_app
def resume(app: App, kind: str, name: str, file: str | None, project: str | None) -> None:
    """Let a paused instance run again."""
    _act(app, kind, name, file, project, app.engine.resume_instance)


class SnapshotGroup(click.Group):
    """``nova snapshot vm|container NAME`` takes one; ``ls``, ``restore``, ``rm`` manage them."""

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] in ("vm", "container"):
            return "take", self.commands["take"], args
        return super().resolve_command(ctx, args)


@cli.group(cls=SnapshotGroup)
def snapshot() -> None:
    """Snapshots of instances.

    \b
    nova snapshot vm|container NAME [--name SNAP]     take one
    nova snapshot ls vm|container NAME                list them
    nova snapshot restore vm|container NAME SNAP      go back to one
    nova snapshot rm vm|container NAME SNAP           remove one
    """


@snapshot.command("take", hidden=True)
@instance_options
@click.option("--name", "snapshot_name", default=None, help="Snapshot name (default: a timestamp).")
@pass_app
def snapshot_take(app: App, kind: str, name: str, file: str | None, project: str | None,
                  snapshot_name: str | None) -> None:
    """Take a snapshot of an instance."""
    import time

    from nova_core.names import NAME_RULE, is_valid_name

    snapshot_name = snapshot_name or time.strftime("snap-%Y%m%d-%H%M%S")
    if not is_valid_name(snapshot_name):
        raise click.BadParameter(f"'{snapshot_name}' is not a snapshot name ({NAME_RULE})",
                                 param_hint="--name")
    with locked_instance(app, kind, name, file, project) as (spec, driver):
        info = app.engine.snapshot_instance(spec, driver, snapshot_name)
    click.echo(f"{kind}.{name}: snapshot '{info.name}' taken")


@snapshot.command("ls")
@instance_options
@json_option()
@pass_app
def snapshot_ls(app: App, kind: str, name: str, file: str | None, project: str | None,
                as_json: bool) -> None:
    """List the snapshots of an instance."""
    import time

    project = resolve_project(app, kind, name, file, project)
    rows = app.store(readonly=True).snapshots(project, kind, name)
    items = [{"name": snap, "created": created, **json.loads(info)} for snap, created, info in rows]
    if as_json:
        print_json(items)
        return
    if not items:
        click.echo(f"{kind}.{name} has no snapshots")
        return
    from nova_core.units import format_size

    click.echo(table(["NAME", "CREATED", "SIZE"],
                     [(i["name"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i["created"])),
                       format_size(i["size"]) if i.get("size") is not None else "-")
                      for i in items]))


@snapshot.command("restore")
@instance_options
@click.argument("snapshot_name", metavar="SNAP")
@pass_app
def snapshot_restore(app: App, kind: str, name: str, file: str | None, project: str | None,
                     snapshot_name: str) -> None:
    """Bring an instance back to a snapshot (changes since are lost)."""
    with locked_instance(app, kind, name, file, project) as (spec, driver):
        status = app.engine.restore_instance(spec, driver, snapshot_name)
    click.echo(f"{kind}.{name}: restored to '{snapshot_name}' ({status.state.value})")


@snapshot.command("rm")
@instance_options
@click.argument("snapshot_name", metavar="SNAP")
@pass_app
def snapshot_rm(app: App, kind: str, name: str, file: str | None, project: str | None,
                snapshot_name: str) -> None:
    """Remove a snapshot."""
    with locked_instance(app, kind, name, file, project) as (spec, driver):
        app.engine.delete_instance_snapshot(spec, driver, snapshot_name)
    click.echo(f"{kind}.{name}: snapshot '{snapshot_name}' removed")


@cli.command()
@instance_options
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output.")
@click.option("-n", "--tail", type=click.IntRange(min=0), default=None,
              help="Only the last N lines.")
@click.option("-t", "--timestamps", is_flag=True, help="Show when each line was written.")
@pass_app
def logs(app: App, kind: str, name: str, file: str | None, project: str | None, follow: bool,
         tail: int | None, timestamps: bool) -> None:
    """Print an instance's output (capsule stdout/stderr, VM serial console)."""
    from nova_core.drivers.models import LogRequest, ResourceKind

    project = resolve_project(app, kind, name, file, project)
    spec, driver = app.engine.instance(project, ResourceKind(kind), name)
    request = LogRequest(tail=tail, follow=follow, timestamps=timestamps)
    for line in driver.logs(spec, request):
        prefix = f"{line.timestamp.isoformat()} " if timestamps and line.timestamp else ""
        click.echo(f"{prefix}{line.text}", err=line.stream == "stderr")


# -- volumes ------------------------------------------------------------------------------------
@cli.group()
def volume() -> None:
    """Named volumes (also declared as [volume.NAME] in a NovaFile)."""


def _default_project(app: App, project: str | None) -> str:
    """-p, else the project of the NovaFile here, else ``default``."""
    from nova_core.novafile.loader import NOVAFILE_NAMES

    if project:
        return project
    if any(Path(n).is_file() for n in NOVAFILE_NAMES):
        return app.novafile(None).project
    return "default"


@volume.command("create")
@click.argument("name")
@project_option("Project of the volume (default: the NovaFile's here, else 'default').")
@click.option("--size", default=None, help="Size to record, e.g. 10Gi.")
@click.option("--driver", "driver_name", default="local", show_default=True,
              help="Storage driver.")
@pass_app
def volume_create(app: App, name: str, project: str | None, size: str | None,
                  driver_name: str) -> None:
    """Create a named volume outside of `nova up`."""
    from nova_core.drivers.models import DriverKind, ResourceKind, ResourceRef, VolumeSpec
    from nova_core.engine.plan import Plan, PlanStep
    from nova_core.names import NAME_RULE, is_valid_name
    from nova_core.units import parse_size

    if not is_valid_name(name):
        raise click.BadParameter(f"'{name}' is not a volume name ({NAME_RULE})", param_hint="NAME")
    try:
        size_bytes = parse_size(size) if size is not None else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--size") from error
    project = _default_project(app, project)
    options = app.registry.driver_class(DriverKind.STORAGE, driver_name).options_model()
    spec = VolumeSpec(ref=ResourceRef(project=project, kind=ResourceKind.VOLUME, name=name),
                      driver=driver_name, base_dir=Path.cwd(), size=size_bytes, options=options)
    with app.lock(project):
        if app.engine.store.resource(project, "volume", name) is not None:
            raise NovaError(f"volume {name} already exists in project '{project}'")
        step = PlanStep(ref=spec.ref, action="create", reason="nova volume create",
                        driver=driver_name, spec=spec)
        app.engine.apply(Plan(project=project, steps=[step]), command="nova volume create")
    click.echo(f"volume {name} created in project '{project}'")


@volume.command("ls")
@json_option()
@project_option("Only this project.")
@pass_app
def volume_ls(app: App, as_json: bool, project: str | None) -> None:
    """List named volumes and who uses them."""
    store = app.store(readonly=True)
    items = []
    for row in store.resources(project, kinds=("volume",)):
        users = store.instances_using_volume(row.project, row.name)
        items.append({"project": row.project, "name": row.name, "driver": row.driver,
                      "state": row.state, "path": row.data_dict().get("path"), "used_by": users})
    if as_json:
        print_json(items)
        return
    if not items:
        click.echo("no volumes")
        return
    click.echo(table(["PROJECT", "NAME", "DRIVER", "STATE", "USED BY", "PATH"],
                     [(i["project"], i["name"], i["driver"], i["state"],
                       ", ".join(i["used_by"]) or "-", i["path"] or "-") for i in items]))


@volume.command("rm")
@click.argument("name")
@project_option("Project of the volume (default: the NovaFile's here, else 'default').")
@pass_app
def volume_rm(app: App, name: str, project: str | None) -> None:
    """Remove a named volume and its data (refused while an instance uses it)."""
    project = _default_project(app, project)
    with app.lock(project):
        if app.engine.store.resource(project, "volume", name) is None:
            raise NovaError(f"no volume {name} in project '{project}'",
                            hint="nova volume ls lists them")
        users = app.engine.store.instances_using_volume(project, name)
        if users:
            raise NovaError(f"volume {name} is in use by {', '.join(users)}",
                            hint="remove those instances first (nova down NAME)")
        plan = app.engine.down_plan(project, [f"volume.{name}"], remove_volumes=True)
        app.engine.apply(plan, command="nova volume rm")
    click.echo(f"volume {name} removed")


# -- images --------------------------------------------------------------------------------------
def _kind_option() -> Callable[[Any], Any]:
    return click.option("--kind", default=None, metavar="KIND",
                        help="Only this kind of image: capsule or vm (as plugins provide).")


@cli.group()
def image() -> None:
    """Images for capsules (OCI) and VMs (disk images): pull, ls, import, rm."""


@image.command("ls")
@json_option()
@_kind_option()
def image_ls(as_json: bool, kind: str | None) -> None:
    """List stored images of every kind."""
    import time

    from nova_core.images import choose_kind
    from nova_core.state.store import default_nova_home
    from nova_core.units import format_size

    home = default_nova_home()
    rows = [(k.kind, row) for k in choose_kind(kind) for row in k.rows(home)]
    if as_json:
        print_json([{"kind": k, **row.data} for k, row in rows])
        return
    if not rows:
        click.echo("no images (nova image pull REF, or nova image import FILE NAME)")
        return
    click.echo(table(["NAME", "KIND", "ID", "SIZE", "DETAIL", "ADDED"],
                     [(r.name, k, r.id, format_size(r.size), r.detail,
                       time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)))
                      for k, r in rows]))


@image.command("pull")
@click.argument("reference")
@_kind_option()
def image_pull(reference: str, kind: str | None) -> None:
    """Pull an image from a registry (capsule images; short names use the default registry)."""
    from nova_core.images import ImageKind, choose_kind
    from nova_core.state.store import default_nova_home

    kinds = [k for k in choose_kind(kind) if type(k).pull is not ImageKind.pull] or choose_kind(kind)
    click.echo(kinds[0].pull(default_nova_home(), reference))


@image.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("name")
@_kind_option()
def image_import(path: Path, name: str, kind: str | None) -> None:
    """Import a file as NAME: a disk image (qcow2, raw, vmdk, ...) for VMs, a rootfs
    tarball or an OCI archive for capsules."""
    from nova_core.images import choose_kind
    from nova_core.state.store import default_nova_home

    if not path.is_file():
        raise NovaError(f"{path} does not exist or is not a file")
    kinds = choose_kind(kind)
    claimed = [k for k in kinds if k.claims(path)] if kind is None else kinds
    if not claimed:
        raise NovaError(f"no installed image kind recognises {path}",
                        hint="tarballs and OCI archives are capsule images, disk images are "
                             "VM images; --kind says which")
    click.echo(claimed[0].import_image(default_nova_home(), path, name))


@image.command("rm")
@click.argument("name")
@_kind_option()
def image_rm(name: str, kind: str | None) -> None:
    """Remove an image (refused while VMs are built on it; shared layers are kept)."""
    from nova_core.images import choose_kind
    from nova_core.state.store import default_nova_home

    home = default_nova_home()
    holders = [k for k in choose_kind(kind) if k.find(home, name)]
    if not holders:
        raise NovaError(f"no image {name} in the store", hint="nova image ls lists them")
    if len(holders) > 1:
        raise NovaError(f"there are {' and '.join(k.kind for k in holders)} images named {name}",
                        hint="say which with --kind")
    click.echo(holders[0].remove(home, name))


# -- plugins / doctor ----------------------------------------------------------------------------
@cli.group()
def plugins() -> None:
    """Installed plugin distributions."""


@plugins.command("ls")
@json_option()
@pass_app
def plugins_ls(app: App, as_json: bool) -> None:
    """List plugin distributions, their drivers and hooks, and whether they load."""
    dists = app.registry.distributions(load=True)
    if as_json:
        print_json([d.as_json() for d in dists])
        return
    rows = []
    for dist in dists:
        state = "disabled" if dist.disabled else ("ok" if dist.loaded else "error")
        rows.append((dist.name, dist.version, state, ", ".join(dist.drivers) or "-",
                     ", ".join(dist.hooks) or "-"))
    click.echo(table(["DISTRIBUTION", "VERSION", "STATUS", "DRIVERS", "HOOKS"], rows))
    for dist in dists:
        for error in dist.errors:
            click.echo(f"{dist.name}: {error}", err=True)


@cli.command()
@json_option()
@pass_app
def doctor(app: App, as_json: bool) -> None:
    """Report what this host can do: cgroups, KVM, the programs plugins need."""
    results = [r for batch in app.registry.call_hook_safely("nova_doctor_checks") for r in batch]
    results.sort(key=lambda r: (r.category != "host", r.category))
    if as_json:
        print_json([{"category": r.category, "name": r.name, "status": r.status,
                     "summary": r.summary, "hint": r.hint} for r in results])
    else:
        marks = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "info": "info"}
        click.echo(table(["CATEGORY", "CHECK", "STATUS", "FINDING"],
                         [(r.category, r.name, marks[r.status], r.summary) for r in results]))
        hints = [r for r in results if r.hint and r.status in ("warn", "fail")]
        if hints:
            click.echo("\nwhat to do:")
            for r in hints:
                click.echo(f"  {r.category} / {r.name}: {r.hint}")
    failed = sum(r.status == "fail" for r in results)
    if not as_json:
        click.echo(f"\n{len(results)} checks: {failed} failed, "
                   f"{sum(r.status == 'warn' for r in results)} with warnings")


# -- warm start -------------------------------------------------------------------------------
@cli.group()
def warm() -> None:
    """The warm helper that saves each command Python's start-up (docs/architecture.md)."""


@warm.command("status")
@json_option()
def warm_status(as_json: bool) -> None:
    """Show the helper that serves commands run from here, if one runs."""
    import json

    from nova_core import warm as helper

    answer = helper.control("status")
    info = json.loads(answer) if answer else None
    if as_json:
        print_json({"enabled": helper.enabled(), "running": info is not None, **(info or {})})
        return
    if info is None:
        click.echo("no warm helper runs for this context; "
                   + ("the next command starts one" if helper.enabled()
                      else "NOVA_WARM=0 keeps commands from starting one"))
        return
    click.echo(table(["PID", "SERVED", "BUSY", "UPTIME", "IDLE TIMEOUT", "RSS", "SOCKET"],
                     [(info["pid"], info["served"], info["busy"], f"{info['uptime_seconds']} s",
                       f"{info['idle_timeout_seconds']:g} s", f"{info['rss_kib'] // 1024} MiB",
                       info["socket"])]))


@warm.command("stop")
def warm_stop() -> None:
    """Stop the helper (commands still running in it finish first)."""
    from nova_core import warm as helper

    if helper.control("stop") is None:
        click.echo("no warm helper runs for this context")
    else:
        click.echo("warm helper stopped")


__all__ = ["cli"]
