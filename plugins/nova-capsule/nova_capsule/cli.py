"""What nova-capsule adds to ``nova``: capsule images for ``nova image``, and ``nova exec``."""

from __future__ import annotations

from pathlib import Path

import click

from nova_core.errors import NovaError
from nova_core.images import ImageKind, ImageRow
from nova_core.units import format_size


class CapsuleImages(ImageKind):
    """OCI images for capsules: pulled from registries or imported from tarballs."""

    kind = "capsule"

    def rows(self, nova_home: Path) -> list[ImageRow]:
        """Every image in the capsule store."""
        from nova_capsule.images import image_store

        return [ImageRow(name=i.name, id=i.digest[7:19], size=i.size,
                         detail=f"{len(i.layers)} layer{'s' if len(i.layers) != 1 else ''}",
                         created=i.created, data=i.as_json())
                for i in image_store(nova_home).images()]

    def claims(self, path: Path) -> bool:
        """Tar archives: a rootfs tarball or an OCI archive."""
        import tarfile

        try:
            return tarfile.is_tarfile(path)
        except OSError:
            return False

    def import_image(self, nova_home: Path, path: Path, name: str) -> str:
        """Import a rootfs tarball (tar or tar.gz) or an OCI archive as NAME[:TAG]."""
        from nova_capsule.images import image_store

        if ":" not in name.rsplit("/", 1)[-1]:
            name += ":latest"
        record = image_store(nova_home).import_archive(path, name)
        return f"{record.name}: {record.digest[:19]} ({format_size(record.size)})"

    def find(self, nova_home: Path, name: str) -> bool:
        """True when the reference resolves to a stored image."""
        from nova_capsule.images import find_local

        try:
            return find_local(nova_home, name) is not None
        except NovaError:
            return False  # not a reference capsules understand

    def remove(self, nova_home: Path, name: str) -> str:
        """Remove an image; layers other images or capsules use are kept."""
        from nova_capsule.images import find_local, image_store, layers_in_use

        record = find_local(nova_home, name)
        assert record is not None
        removed = image_store(nova_home).remove(record.name, in_use=layers_in_use(nova_home))
        return (f"removed {record.name} ({len(removed)} blob{'s' if len(removed) != 1 else ''} "
                "freed)")

    def pull(self, nova_home: Path, reference: str) -> str:
        """Pull an image from a registry (short names use the default registry)."""
        from nova_capsule.images import pull

        record = pull(nova_home, reference)
        return (f"{record.name}: {record.digest[:19]} ({format_size(record.size)}, "
                f"{len(record.layers)} layer{'s' if len(record.layers) != 1 else ''})")


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
