"""nova-bridge registers and reports nft and dnsmasq."""

from __future__ import annotations

from pathlib import Path

from nova_bridge.hooks import nova_doctor_checks


def test_missing_programs_have_install_hints(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    checks = {c.name: c for c in nova_doctor_checks()}
    assert checks["program nft"].status == "fail"
    assert checks["program nft"].hint == "apt-get install nftables"
    assert checks["program dnsmasq"].hint == "apt-get install dnsmasq-base"


def test_forwarding_is_reported_as_read() -> None:
    value = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    checks = {c.name: c for c in nova_doctor_checks()}
    assert checks["ip_forward"].summary.startswith(value)
