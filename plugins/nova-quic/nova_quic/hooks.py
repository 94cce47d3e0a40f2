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
    """The TUN/TAP device the overlay endpoint needs, and its compiled data path."""
    from nova_quic import datapath

    tun = os.path.exists("/dev/net/tun")
    try:
        built = datapath.load() is not None
        problem = "not built"
    except OSError as error:  # built, but it does not load (libcrypto missing?)
        built, problem = False, f"does not load: {error}"
    return [CheckResult(CATEGORY, "/dev/net/tun", "ok" if tun else "fail",
                        "present" if tun else "missing: the overlay needs TAP devices",
                        None if tun else "modprobe tun"),
            CheckResult(CATEGORY, "compiled data path", "ok" if built else "warn",
                        "built" if built else f"{problem}: overlay frames go through Python "
                        "(several times slower)",
                        None if built else "apt-get install gcc libssl-dev, then reinstall "
                        "nova-quic (pip install --force-reinstall --no-deps nova-quic)")]
