"""nova-quic's hooks: ``nova overlay``, and host checks for ``nova doctor``."""

from __future__ import annotations

import os
from typing import Any

from nova_core.hookspecs import hookimpl
from nova_core.hooktypes import CheckResult

CATEGORY = "nova-quic"


@hookimpl
def nova_cli_commands() -> list[Any]:
    """``nova overlay``."""
    from nova_quic.cli import overlay_group

    return [overlay_group]


@hookimpl
def nova_doctor_checks() -> list[CheckResult]:
    """The TUN/TAP device the overlay endpoint needs."""
    tun = os.path.exists("/dev/net/tun")
    return [CheckResult(CATEGORY, "/dev/net/tun", "ok" if tun else "fail",
                        "present" if tun else "missing: the overlay needs TAP devices",
                        None if tun else "modprobe tun")]
