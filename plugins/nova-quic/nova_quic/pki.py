"""The trust of an overlay network: a certificate authority per network, host bundles.

```
NOVA_HOME/overlay/NETWORK/          (0700)
  ca.crt                            the network's CA certificate (every host)
  crl.pem                           revocations signed by the CA (every host, when any)
  host.key  (0600) host.crt         this host's identity
  host.json                         {"hostname", "index", "peers"} from the bundle
  ca/ca.key (0600) ca/issued.json   only on the host that holds the CA (and
  ca/advertise.json                 the addresses bundles name by default)
```

A bundle (``nova overlay issue``) is one JSON file, mode 0600, holding a host's key,
certificate, the CA certificate, the current revocation list and the peers to
dial first. ``index`` numbers the hosts of a network (1 for the CA's own host):
the quic driver gives host *i* the gateway ``subnet + i`` and the *i*-th sixteenth
of the subnet for its instances, so hosts never hand out the same address.

Keys are ECDSA P-256. Peers verify each other with :func:`verify_peer`: issued by the
network's CA, within its validity, not revoked.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nova_core.errors import NovaError
from nova_core.files import replace_file
from nova_core.names import NAME_RULE, is_valid_name

MAX_HOSTS = 15  # indexes 1..15: one sixteenth of the subnet each (the first holds the gateways)
HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
BUNDLE_FORMAT = "nova-overlay-bundle/1"


class PeerRefused(Exception):  # noqa: N818 - a refusal, with the reason as its message
    """A peer's certificate is not acceptable."""


def utcnow() -> datetime.datetime:
    """Now, timezone-aware (certificates compare in UTC)."""
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by root only, replacing ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, data, mode=0o600)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem(cert: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def check_hostname(hostname: str) -> None:
    """Refuse a host name that is not one DNS label."""
    if not HOSTNAME.match(hostname):
        raise NovaError(f"'{hostname}' is not a valid overlay host name",
                        hint="use lower-case letters, digits and '-', at most 63 characters "
                             "(one DNS label, e.g. host-b)")


def check_network(network: str) -> None:
    """Refuse a network name the NovaFile would refuse too."""
    if not is_valid_name(network):
        raise NovaError(f"'{network}' is not a valid network name", hint=NAME_RULE)


@dataclass
class Identity:
    """What the endpoint needs: its key and certificate, the CA, the revocations."""

    network: str
    hostname: str
    index: int
    key_path: Path
    cert_path: Path
    ca: x509.Certificate
    crl: x509.CertificateRevocationList | None
    peers: list[str] = field(default_factory=list)


class OverlayStore:
    """The ``overlay/`` folder of one NOVA_HOME."""

    def __init__(self, nova_home: Path) -> None:
        self.root = nova_home / "overlay"

    def folder(self, network: str) -> Path:
        """The folder of ``network``."""
        check_network(network)
        return self.root / network

    def networks(self) -> list[str]:
        """Networks this host holds credentials (or a CA) for."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if (p / "ca.crt").exists())

    def _mkdir(self, folder: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)

    # -- the CA ---------------------------------------------------------------------------
    def has_ca(self, network: str) -> bool:
        """True where the network's CA key lives."""
        return (self.folder(network) / "ca" / "ca.key").exists()

    def init_ca(self, network: str, hostname: str, days: int = 3650,
                host_days: int = 365, peers: list[str] | None = None) -> Identity:
        """Make the network's CA and this host's identity (index 1) from it."""
        check_hostname(hostname)
        folder = self.folder(network)
        if (folder / "ca.crt").exists():
            holder = "this host holds its CA" if self.has_ca(network) else \
                "this host joined it with a bundle"
            raise NovaError(f"overlay network {network} already has credentials here ({holder})",
                            hint=f"nova overlay issue {network} HOSTNAME makes bundles for other "
                                 f"hosts; remove {folder} to start over")
        self._mkdir(folder)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"nova overlay {network} CA")])
        now = utcnow()
        ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=days))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                           crl_sign=True, content_commitment=False,
                                           key_encipherment=False, data_encipherment=False,
                                           key_agreement=False, encipher_only=False,
                                           decipher_only=False), critical=True)
              .sign(key, hashes.SHA256()))
        self._mkdir(folder / "ca")
        _write_private(folder / "ca" / "ca.key", _pem_key(key))
        _write_public(folder / "ca.crt", _pem(ca))
        _write_public(folder / "ca" / "issued.json", b"{}\n")
        _write_public(folder / "ca" / "advertise.json", json.dumps(peers or []).encode())
        bundle = self.issue(network, hostname, days=host_days)
        self._install(folder, bundle)
        return self.identity(network)

    def _ca(self, network: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
        folder = self.folder(network)
        if not self.has_ca(network):
            raise NovaError(f"this host does not hold the CA of overlay network {network}",
                            hint=f"run this on the host where you ran nova overlay ca init "
                                 f"{network}")
        ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((folder / "ca" / "ca.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return ca, key, folder

    def issued(self, network: str) -> dict[str, dict[str, object]]:
        """hostname -> {serial, serials, index, not_after, revoked}: the hosts the CA issued."""
        path = self.folder(network) / "ca" / "issued.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def issue(self, network: str, hostname: str, days: float = 365,
              peers: list[str] | None = None,
              not_after: datetime.datetime | None = None) -> dict[str, object]:
        """A bundle (a JSON-able dict) for ``hostname``; re-issuing keeps its index.

        ``peers`` defaults to the addresses given to :meth:`init_ca`.
        """
        check_hostname(hostname)
        ca, ca_key, folder = self._ca(network)
        if not peers:
            advertised = folder / "ca" / "advertise.json"
            peers = json.loads(advertised.read_text()) if advertised.exists() else []
        issued = self.issued(network)
        previous = issued.get(hostname)
        if previous is not None and previous.get("revoked"):
            raise NovaError(f"host {hostname} was revoked from overlay network {network}",
                            hint="issue under a new host name")
        if previous is not None:
            index = int(previous["index"])  # type: ignore[call-overload]
        else:
            used = {int(v["index"]) for v in issued.values()}  # type: ignore[call-overload]
            free = [i for i in range(1, MAX_HOSTS + 1) if i not in used]
            if not free:
                raise NovaError(f"overlay network {network} already has {MAX_HOSTS} hosts",
                                hint="each host gets a sixteenth of the subnet; a larger "
                                     "overlay needs gateway and ip_range set per host")
            index = free[0]
        key = ec.generate_private_key(ec.SECP256R1())
        now = utcnow()
        # X.509 holds whole seconds: round down here so issued.json records the moment
        # the certificate really ends (verify_peer refuses from then on)
        until = (not_after or now + datetime.timedelta(days=days)).replace(microsecond=0)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
                .issuer_name(ca.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(min(now - datetime.timedelta(minutes=5), until))
                .not_valid_after(until)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                      x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        serials = [*(previous or {}).get("serials", []), str(cert.serial_number)]  # type: ignore[misc]
        issued[hostname] = {"serial": str(cert.serial_number), "serials": serials,
                            "index": index, "not_after": until.isoformat(), "revoked": False}
        _write_public(folder / "ca" / "issued.json", json.dumps(issued, indent=1).encode())
        crl_path = folder / "crl.pem"
        return {"format": BUNDLE_FORMAT, "network": network, "hostname": hostname,
                "index": index, "peers": list(peers or []),
                "key": _pem_key(key).decode(), "certificate": _pem(cert).decode(),
                "ca": _pem(ca).decode(),
                "crl": crl_path.read_text() if crl_path.exists() else None}

    def revoke(self, network: str, hostname: str) -> int:
        """Revoke ``hostname``'s certificates; returns the new CRL number."""
        ca, ca_key, folder = self._ca(network)
        issued = self.issued(network)
        if hostname not in issued:
            known = ", ".join(sorted(issued)) or "none"
            raise NovaError(f"overlay network {network} issued nothing to host {hostname}",
                            hint=f"issued hosts: {known}")
        issued[hostname]["revoked"] = True
        _write_public(folder / "ca" / "issued.json", json.dumps(issued, indent=1).encode())
        previous = self.crl(network)
        number = 1
        if previous is not None:
            number = previous.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
        now = utcnow()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
                   .last_update(now).next_update(now + datetime.timedelta(days=3650))
                   .add_extension(x509.CRLNumber(number), critical=False))
        for info in issued.values():
            if info.get("revoked"):  # every certificate the host ever got
                for serial in info.get("serials") or [info["serial"]]:  # type: ignore[union-attr]
                    builder = builder.add_revoked_certificate(
                        x509.RevokedCertificateBuilder().serial_number(int(str(serial)))
                        .revocation_date(now).build())
        _write_public(folder / "crl.pem", _pem(builder.sign(ca_key, hashes.SHA256())))
        return number

    # -- every host -----------------------------------------------------------------------
    def crl(self, network: str) -> x509.CertificateRevocationList | None:
        """The network's revocation list as this host has it (signature checked)."""
        folder = self.folder(network)
        path = folder / "crl.pem"
        if not path.exists():
            return None
        crl = x509.load_pem_x509_crl(path.read_bytes())
        ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
        if not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
            raise NovaError(f"{path} is not signed by the CA of overlay network {network}",
                            hint="remove it; the CA's host sends the right one again")
        return crl

    def accept_crl(self, network: str, pem: bytes) -> bool:
        """Store a revocation list a peer sent if the CA signed it and it is newer."""
        folder = self.folder(network)
        ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
        try:
            offered = x509.load_pem_x509_crl(pem)
        except ValueError:
            return False
        if not offered.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
            return False
        current = self.crl(network)
        if current is not None and crl_number(current) >= crl_number(offered):
            return False
        _write_public(folder / "crl.pem", pem)
        return True

    def join(self, bundle_path: Path) -> Identity:
        """Install a bundle made by ``nova overlay issue``."""
        try:
            bundle = json.loads(bundle_path.read_text())
        except FileNotFoundError:
            raise NovaError(f"no bundle at {bundle_path}") from None
        except (ValueError, UnicodeDecodeError):
            raise NovaError(f"{bundle_path} is not an overlay bundle (not JSON)",
                            hint="nova overlay issue NETWORK HOSTNAME writes one") from None
        if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
            raise NovaError(f"{bundle_path} is not an overlay bundle",
                            hint="nova overlay issue NETWORK HOSTNAME writes one")
        network = str(bundle["network"])
        folder = self.folder(network)
        if self.has_ca(network):
            raise NovaError(f"this host holds the CA of overlay network {network}; it has its "
                            "own credentials already", hint="join the bundle on the other host")
        if (folder / "ca.crt").exists():
            current = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
            if _pem(current).decode() != bundle["ca"]:
                raise NovaError(f"the bundle is from another CA than the overlay network "
                                f"{network} this host joined", hint=f"remove {folder} first "
                                "if the network was re-created")
        ca = x509.load_pem_x509_certificate(str(bundle["ca"]).encode())
        cert = x509.load_pem_x509_certificate(str(bundle["certificate"]).encode())
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise NovaError(f"{bundle_path}: its certificate is not signed by its CA",
                            hint="the bundle is damaged; issue it again") from None
        self._mkdir(folder)
        self._install(folder, bundle)
        return self.identity(network)

    def _install(self, folder: Path, bundle: dict[str, object]) -> None:
        _write_private(folder / "host.key", str(bundle["key"]).encode())
        _write_public(folder / "host.crt", str(bundle["certificate"]).encode())
        _write_public(folder / "ca.crt", str(bundle["ca"]).encode())
        if bundle.get("crl"):
            _write_public(folder / "crl.pem", str(bundle["crl"]).encode())
        _write_public(folder / "host.json", json.dumps(
            {"hostname": bundle["hostname"], "index": bundle["index"],
             "peers": bundle.get("peers") or []}, indent=1).encode())

    def identity(self, network: str) -> Identity:
        """This host's identity on ``network``, or a clear error when it has none."""
        folder = self.folder(network)
        if not (folder / "host.json").exists():
            raise NovaError(f"this host has no credentials for overlay network {network}",
                            hint=f"on the first host: nova overlay ca init {network}; on the "
                                 f"others: nova overlay join BUNDLE (from nova overlay issue "
                                 f"{network} HOSTNAME)")
        info = json.loads((folder / "host.json").read_text())
        return Identity(network=network, hostname=info["hostname"], index=int(info["index"]),
                        key_path=folder / "host.key", cert_path=folder / "host.crt",
                        ca=x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes()),
                        crl=self.crl(network), peers=list(info.get("peers") or []))


def crl_number(crl: x509.CertificateRevocationList) -> int:
    """A CRL's sequence number (0 when it has none)."""
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def verify_peer(cert: x509.Certificate | None, ca: x509.Certificate,
                crl: x509.CertificateRevocationList | None) -> str:
    """The peer's host name if ``cert`` is acceptable; :class:`PeerRefused` says why not.

    The TLS handshake has already proved the peer holds the certificate's key
    (CertificateVerify); this checks that the network's CA (itself within its validity)
    issued it, that it is within its validity and that the CA has not revoked it.
    """
    if cert is None:
        raise PeerRefused("no client certificate")
    now = utcnow()
    if now > ca.not_valid_after_utc:
        raise PeerRefused(f"this network's CA certificate expired on "
                          f"{ca.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC; make a new CA "
                          "(nova overlay ca init) and issue every host a new bundle")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise PeerRefused(f"certificate of '{common_name(cert)}' is not from this network's CA "
                          f"(issuer: {cert.issuer.rfc4514_string()})") from None
    if now > cert.not_valid_after_utc:
        raise PeerRefused(f"certificate of '{common_name(cert)}' expired on "
                          f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    if now < cert.not_valid_before_utc:
        raise PeerRefused(f"certificate of '{common_name(cert)}' is not valid yet")
    if crl is not None and crl.get_revoked_certificate_by_serial_number(cert.serial_number):
        raise PeerRefused(f"certificate of '{common_name(cert)}' was revoked")
    name = common_name(cert)
    if not HOSTNAME.match(name):
        raise PeerRefused(f"certificate names no valid host ('{name}')")
    return name


def common_name(cert: x509.Certificate) -> str:
    """The certificate's CN, or '?'."""
    found = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(found[0].value) if found else "?"


def write_bundle(path: Path, bundle: dict[str, object]) -> None:
    """Write a bundle readable by its owner only (it holds a private key)."""
    _write_private(path, json.dumps(bundle, indent=1).encode())
