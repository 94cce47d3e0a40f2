"""``nova console vm NAME``: the VM's serial console, interactively."""

from __future__ import annotations

import os
import select
import socket
import sys

import click

DETACH = b"\x1d"  # Ctrl-], as in telnet and virsh console


@click.command("console")
@click.option("-p", "--project", default=None, help="Project of the VM.")
@click.option("--file", "file", default=None, help="NovaFile (to find the project).")
@click.argument("kind", type=click.Choice(["vm"]))
@click.argument("name")
@click.pass_context
def console_command(ctx: click.Context, project: str | None, file: str | None, kind: str,
                    name: str) -> None:
    """Attach to a running VM's serial console; Ctrl-] detaches (the VM keeps running).

    \b
    nova console vm web
    """
    from nova_core.cli.app import App, resolve_project
    from nova_core.drivers.models import ResourceKind
    from nova_core.errors import NovaError
    from nova_qemu.vm import VmDriver

    app = ctx.find_object(App)
    assert app is not None
    project = resolve_project(app, kind, name, file, project)
    spec, driver = app.engine.instance(project, ResourceKind.VM, name)
    if not isinstance(driver, VmDriver):
        raise NovaError(f"vm {name} runs on driver {spec.driver}, which has no console here")
    path = driver.console_socket(spec)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError as error:
        raise NovaError(f"cannot reach vm {name}'s console: {error.strerror}") from error
    click.echo(f"connected to vm.{name}'s serial console; Ctrl-] detaches", err=True)
    _relay(conn)
    click.echo(f"\ndetached from vm.{name} (it keeps running)", err=True)


def _relay(conn: socket.socket) -> None:
    """Copy between the terminal and the console until Ctrl-] or the VM closes it."""
    stdin = sys.stdin.fileno()
    stdout = sys.stdout.fileno()
    saved = None
    if os.isatty(stdin):
        import termios
        import tty

        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
    try:
        reading = [stdin, conn]
        while True:
            ready, _, _ = select.select(reading, [], [], None if stdin in reading else 0.5)
            if not ready:
                return  # input ended and the console went quiet: detach
            if conn in ready:
                data = conn.recv(65536)
                if not data:
                    return
                os.write(stdout, data)
            if stdin in ready:
                data = os.read(stdin, 4096)
                if not data:  # input ended (a pipe): show what follows, then detach
                    reading = [conn]
                    continue
                if DETACH in data:
                    conn.sendall(data.split(DETACH, 1)[0])
                    return
                conn.sendall(data)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        conn.close()
