"""The KVM boot probe, run against the real QEMU."""

from __future__ import annotations

import json
import os

from nova_qemu.kvm_probe import MARKER, boot_probe, probe_image, probe_kvm


def test_probe_image_is_a_boot_sector() -> None:
    image = probe_image()
    assert len(image) == 512 and image[-2:] == b"\x55\xaa"


def test_probe_boots_under_tcg() -> None:
    result = boot_probe("tcg")
    assert result.booted, result.error
    assert 0 < result.seconds < 10


def test_missing_qemu_is_a_verdict_not_a_crash() -> None:
    verdict = probe_kvm(qemu="qemu-system-that-does-not-exist")
    assert verdict.usable is False and "not installed" in verdict.reason


def test_verdict_is_consistent_with_the_boots() -> None:
    verdict = probe_kvm()
    if not os.path.exists("/dev/kvm"):
        assert not verdict.usable and verdict.kvm is None
        return
    assert verdict.kvm is not None
    if verdict.usable:
        assert verdict.kvm.booted
        assert verdict.tcg is None or verdict.kvm.seconds <= verdict.tcg.seconds
    else:
        assert (not verdict.kvm.booted) or (verdict.tcg and verdict.kvm.seconds > verdict.tcg.seconds)
    assert MARKER == b"L"


def test_doctor_shows_the_probe(run_nova) -> None:
    checks = json.loads(run_nova("doctor", "--json", check=True, timeout=120).stdout)
    names = {c["name"]: c for c in checks if c["category"] == "nova-qemu"}
    assert names["program qemu-system-x86_64"]["status"] == "ok"
    assert names["kvm usable"]["summary"]
