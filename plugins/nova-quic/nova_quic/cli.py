"""``nova overlay``: the certificate authority and host credentials of quic overlays."""

from __future__ import annotations

from pathlib import Path

import click

from nova_core.cli.output import print_json, table


def _store():  # noqa: ANN202 - lazily imported types
    from nova_core.state.store import default_nova_home
    from nova_quic.pki import OverlayStore

    return OverlayStore(default_nova_home())


def _hostname() -> str:
    import socket

    return socket.gethostname().split(".")[0].lower()


@click.group("overlay")
def overlay_group() -> None:
    """Encrypted overlay networks (driver quic): CA, host bundles, revocation."""


@overlay_group.group("ca")
def ca_group() -> None:
    """The certificate authority of an overlay network."""


@ca_group.command("init")
@click.argument("network")
@click.option("--host", "hostname", default=None,
              help="This host's name on the overlay (default: the machine's host name).")
@click.option("--peer", "peers", multiple=True, metavar="HOST:PORT",
              help="An address of this host other hosts dial (put into the bundles it issues).")
@click.option("--days", type=click.IntRange(1), default=3650, show_default=True,
              help="How long the CA is valid.")
def ca_init(network: str, hostname: str | None, peers: tuple[str, ...], days: int) -> None:
    """Make NETWORK's CA on this host, and this host's own credentials from it."""
    store = _store()
    identity = store.init_ca(network, hostname or _hostname(), days=days, peers=list(peers))
    folder = store.folder(network)
    click.echo(f"overlay {network}: CA made in {folder}/ca (keep ca.key private); this host is "
               f"'{identity.hostname}' (host 1)")
    click.echo(f"next: nova overlay issue {network} HOSTNAME for each other host, then "
               f"nova overlay join BUNDLE there")


@overlay_group.command("issue")
@click.argument("network")
@click.argument("hostname")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the bundle (default: ./NETWORK-HOSTNAME.bundle).")
@click.option("--peer", "peers", multiple=True, metavar="HOST:PORT",
              help="A member the new host dials first (default: those given to ca init).")
@click.option("--days", type=click.IntRange(1), default=365, show_default=True,
              help="How long the host's certificate is valid.")
def issue(network: str, hostname: str, output: Path | None, peers: tuple[str, ...],
          days: int) -> None:
    """Issue HOSTNAME's credentials for NETWORK as a bundle file (mode 0600)."""
    from nova_quic.pki import write_bundle

    bundle = _store().issue(network, hostname, days=days, peers=list(peers))
    path = output or Path(f"{network}-{hostname}.bundle")
    write_bundle(path, bundle)
    click.echo(f"bundle for '{hostname}' (host {bundle['index']}) written to {path}; it holds "
               f"a private key: copy it to that host, run nova overlay join {path.name} there, "
               f"then delete it")
    if not bundle["peers"]:
        click.echo("note: the bundle names no peer: give the new host's NovaFile "
                   "peers = [\"HOST:PORT\"] of a member", err=True)


@overlay_group.command("join")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
def join(bundle: Path) -> None:
    """Install a bundle from nova overlay issue: this host joins its network."""
    identity = _store().join(bundle)
    click.echo(f"joined overlay {identity.network} as '{identity.hostname}' (host "
               f"{identity.index}); peers to dial: {', '.join(identity.peers) or 'none'}")


@overlay_group.command("revoke")
@click.argument("network")
@click.argument("hostname")
def revoke(network: str, hostname: str) -> None:
    """Revoke HOSTNAME: every member refuses it from now on (run on the CA's host)."""
    number = _store().revoke(network, hostname)
    click.echo(f"revoked '{hostname}' on overlay {network} (revocation list #{number}); running "
               "endpoints drop it within a second and pass the list to their peers")


@overlay_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def overlay_ls(as_json: bool) -> None:
    """Overlay networks this host has credentials for."""
    from cryptography import x509

    store = _store()
    rows = []
    for network in store.networks():
        folder = store.folder(network)
        entry: dict[str, object] = {"network": network, "ca": store.has_ca(network)}
        if (folder / "host.json").exists():
            identity = store.identity(network)
            cert = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
            entry.update(hostname=identity.hostname, index=identity.index,
                         expires=cert.not_valid_after_utc.isoformat(), peers=identity.peers)
        if store.has_ca(network):
            entry["issued"] = store.issued(network)
        rows.append(entry)
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("no overlay credentials on this host (nova overlay ca init NETWORK)")
        return
    click.echo(table(["NETWORK", "HOST", "INDEX", "CA HERE", "EXPIRES", "ISSUED"],
                     [(r["network"], r.get("hostname", "-"), r.get("index", "-"),
                       "yes" if r["ca"] else "no", str(r.get("expires", "-"))[:19],
                       ", ".join(f"{h}{' (revoked)' if i.get('revoked') else ''}"
                                 for h, i in r.get("issued", {}).items()) or "-")  # type: ignore[union-attr]
                      for r in rows]))
