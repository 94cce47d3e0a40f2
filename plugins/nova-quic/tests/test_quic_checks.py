"""nova-quic registers and reports the TUN device."""

from __future__ import annotations

import os

from nova_quic.hooks import nova_doctor_checks


def test_tun_check_matches_the_host() -> None:
    [check, _datapath] = nova_doctor_checks()
    assert (check.status == "ok") == os.path.exists("/dev/net/tun")


def test_the_data_path_check_says_whether_the_library_loads(monkeypatch, tmp_path) -> None:
    from nova_quic import datapath

    assert nova_doctor_checks()[1].status == "ok"  # setup.sh builds it
    monkeypatch.setattr(datapath, "_LIBRARY", None)
    monkeypatch.setattr(datapath, "HERE", tmp_path)
    check = nova_doctor_checks()[1]
    assert check.status == "warn" and "not built" in check.summary and "libssl-dev" in check.hint


def test_registered_as_a_plugin(run_nova) -> None:
    import json

    dists = {d["name"]: d for d in json.loads(run_nova("plugins", "ls", "--json",
                                                       check=True).stdout)}
    assert dists["nova-quic"]["hooks"] == ["nova_cli_commands", "nova_doctor_checks"]
