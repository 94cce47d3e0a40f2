"""``nova image ...``: commands nova-capsule adds to ``nova``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from nova_core.cli.output import print_json, table
from nova_core.state.store import default_nova_home
from nova_core.units import format_size


@click.group("image")
def image_group() -> None:
    """Capsule images: pull, list, remove, import."""


@image_group.command("pull")
@click.argument("reference")
def image_pull(reference: str) -> None:
    """Pull an image from a registry (short names use the default registry)."""
    from nova_capsule.images import pull

    record = pull(default_nova_home(), reference)
    click.echo(f"{record.name}: {record.digest[:19]} ({format_size(record.size)}, "
               f"{len(record.layers)} layer{'s' if len(record.layers) != 1 else ''})")


@image_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def image_ls(as_json: bool) -> None:
    """List the images in the local store."""
    from nova_capsule.images import image_store

    images = image_store(default_nova_home()).images()
    if as_json:
        print_json([i.as_json() for i in images])
        return
    if not images:
        click.echo("no images (nova image pull NAME fetches one)")
        return
    click.echo(table(["NAME", "DIGEST", "SIZE", "LAYERS", "ADDED"],
                     [(i.name, i.digest[7:19], format_size(i.size), len(i.layers),
                       time.strftime("%Y-%m-%d %H:%M", time.localtime(i.created)))
                      for i in images]))


@image_group.command("rm")
@click.argument("reference")
def image_rm(reference: str) -> None:
    """Remove an image; layers other images or capsules use are kept."""
    from nova_capsule.images import find_local, image_store, layers_in_use
    from nova_core.errors import NovaError

    home = default_nova_home()
    record = find_local(home, reference)
    if record is None:
        raise NovaError(f"no image {reference} in the store", hint="nova image ls lists them")
    removed = image_store(home).remove(record.name, in_use=layers_in_use(home))
    click.echo(f"removed {record.name} ({len(removed)} blob{'s' if len(removed) != 1 else ''} "
               "freed)")


@image_group.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("name")
def image_import(path: Path, name: str) -> None:
    """Import a rootfs tarball (tar or tar.gz) or an OCI archive as NAME[:TAG]."""
    from nova_capsule.images import image_store

    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    record = image_store(default_nova_home()).import_archive(path, name)
    click.echo(f"{record.name}: {record.digest[:19]} ({format_size(record.size)})")


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal.")
@click.option("-p", "--project", default=None, help="Project of the capsule.")
@click.option("--file", "file", default=None, help="NovaFile (to find the project).")
@click.argument("kind", type=click.Choice(["container"]))
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_command(ctx: click.Context, interactive: bool, tty: bool, project: str | None,
                 file: str | None, kind: str, name: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in a running capsule; exits with the command's status.

    \b
    nova exec container api -- ls /srv
    nova exec -it container api -- sh
    """
    import subprocess
    import sys

    from nova_capsule.driver import CapsuleDriver
    from nova_core.cli.app import App, resolve_project
    from nova_core.drivers.models import ResourceKind
    from nova_core.errors import NovaError

    app = ctx.find_object(App)
    assert app is not None
    project = resolve_project(app, kind, name, file, project)
    spec, driver = app.engine.instance(project, ResourceKind.CONTAINER, name)
    if not isinstance(driver, CapsuleDriver):
        raise NovaError(f"container {name} runs on driver {spec.driver}, which has no exec")
    argv = driver.exec_argv(spec, list(command), tty=tty)
    stdin = None if (interactive or tty) else subprocess.DEVNULL
    code = subprocess.run(argv, stdin=stdin).returncode
    sys.stdout.flush()
    ctx.exit(code)
