"""The overlay's trust: real certificates made with ``cryptography``, checked as the
endpoint checks a peer after the TLS handshake."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from nova_quic.pki import OverlayStore, PeerRefused, utcnow, verify_peer, write_bundle

from nova_core.errors import NovaError


def _cert(bundle: dict[str, object]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(str(bundle["certificate"]).encode())


def test_issue_verify_expire_revoke(tmp_path: Path) -> None:
    ca = OverlayStore(tmp_path / "a")
    me = ca.init_ca("mesh", "alpha")
    assert (me.hostname, me.index) == ("alpha", 1)
    good = ca.issue("mesh", "beta")
    assert good["index"] == 2
    assert verify_peer(_cert(good), me.ca, None) == "beta"
    assert ca.issue("mesh", "beta")["index"] == 2  # re-issuing keeps the host's share

    ends = utcnow() + datetime.timedelta(hours=1, microseconds=1)
    soon = ca.issue("mesh", "soon", not_after=ends)
    # the certificate ends at the whole second before, and the index says the same
    assert _cert(soon).not_valid_after_utc == ends.replace(microsecond=0) < ends
    recorded = datetime.datetime.fromisoformat(ca.issued("mesh")["soon"]["not_after"])
    assert recorded == _cert(soon).not_valid_after_utc

    expired = ca.issue("mesh", "old", not_after=utcnow() - datetime.timedelta(hours=1))
    with pytest.raises(PeerRefused, match="certificate of 'old' expired on"):
        verify_peer(_cert(expired), me.ca, None)
    with pytest.raises(PeerRefused, match="no client certificate"):
        verify_peer(None, me.ca, None)

    other = OverlayStore(tmp_path / "b").init_ca("mesh", "rogue")
    with pytest.raises(PeerRefused, match="is not from this network's CA"):
        verify_peer(_cert(good), other.ca, None)

    assert ca.revoke("mesh", "beta") == 1
    crl = ca.crl("mesh")
    with pytest.raises(PeerRefused, match="certificate of 'beta' was revoked"):
        verify_peer(_cert(good), me.ca, crl)
    assert verify_peer(_cert(ca.issue("mesh", "gamma")), me.ca, crl) == "gamma"
    assert ca.revoke("mesh", "old") == 2


def test_an_expired_ca_refuses_every_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nova_quic import pki

    ca = OverlayStore(tmp_path / "a")
    me = ca.init_ca("mesh", "alpha", days=30, host_days=365)
    good = ca.issue("mesh", "beta")
    assert verify_peer(_cert(good), me.ca, None) == "beta"
    later = utcnow() + datetime.timedelta(days=31)  # the CA's end, the host's certificate still valid
    monkeypatch.setattr(pki, "utcnow", lambda: later)
    with pytest.raises(PeerRefused, match="this network's CA certificate expired on .*make a new CA"):
        verify_peer(_cert(good), me.ca, None)


def test_bundles_join_and_crl_exchange(tmp_path: Path) -> None:
    ca = OverlayStore(tmp_path / "a")
    ca.init_ca("mesh", "alpha", peers=["198.18.0.1:4433"])
    path = tmp_path / "beta.bundle"
    write_bundle(path, ca.issue("mesh", "beta", peers=["198.18.0.1:4433"]))
    assert path.stat().st_mode & 0o777 == 0o600
    member = OverlayStore(tmp_path / "b")
    joined = member.join(path)
    assert (joined.hostname, joined.index, joined.peers) == ("beta", 2, ["198.18.0.1:4433"])
    assert (tmp_path / "b/overlay/mesh/host.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "b/overlay").stat().st_mode & 0o777 == 0o700

    # a revocation list travels from peer to peer: only the CA's, only newer ones
    ca.revoke("mesh", "beta")
    pem = (tmp_path / "a/overlay/mesh/crl.pem").read_bytes()
    assert member.accept_crl("mesh", pem) is True
    assert member.accept_crl("mesh", pem) is False  # not newer
    rogue = OverlayStore(tmp_path / "r")
    rogue.init_ca("mesh", "rogue")
    rogue.issue("mesh", "x")
    rogue.revoke("mesh", "x")
    rogue.revoke("mesh", "rogue")  # CRL number 2, but signed by another CA
    assert member.accept_crl("mesh", (tmp_path / "r/overlay/mesh/crl.pem").read_bytes()) is False
    assert member.accept_crl("mesh", b"garbage") is False


def test_clear_errors(tmp_path: Path) -> None:
    store = OverlayStore(tmp_path)
    with pytest.raises(NovaError, match="no credentials for overlay network mesh"):
        store.identity("mesh")
    with pytest.raises(NovaError, match="does not hold the CA of overlay network mesh"):
        store.issue("mesh", "beta")
    store.init_ca("mesh", "alpha")
    with pytest.raises(NovaError, match="already has credentials here"):
        store.init_ca("mesh", "alpha")
    with pytest.raises(NovaError, match="not a valid overlay host name"):
        store.issue("mesh", "Beta_1")
    with pytest.raises(NovaError, match="issued nothing to host nope"):
        store.revoke("mesh", "nope")
    with pytest.raises(NovaError, match="holds the CA of overlay network mesh"):
        bundle = tmp_path / "self.bundle"
        write_bundle(bundle, store.issue("mesh", "beta"))
        store.join(bundle)
    bad = tmp_path / "bad.bundle"
    bad.write_text("not json")
    with pytest.raises(NovaError, match="is not an overlay bundle"):
        OverlayStore(tmp_path / "x").join(bad)
    tampered = json.loads((tmp_path / "self.bundle").read_text())
    other = OverlayStore(tmp_path / "y")
    forged = OverlayStore(tmp_path / "z")
    forged.init_ca("mesh", "zed")
    tampered["ca"] = (tmp_path / "z/overlay/mesh/ca.crt").read_text()
    write_bundle(bad, tampered)
    with pytest.raises(NovaError, match="its certificate is not signed by its CA"):
        other.join(bad)
    for count in range(3, 16):
        store.issue("mesh", f"h{count}")
    with pytest.raises(NovaError, match="already has 15 hosts"):
        store.issue("mesh", "one-too-many")
