"""nova-capsule's hooks: host checks for ``nova doctor``, capsule images for ``nova image``,
and ``nova exec``."""

from __future__ import annotations

import shutil
from typing import Any

from nova_core.hookspecs import hookimpl
from nova_core.hooktypes import CheckResult, program_check

CATEGORY = "nova-capsule"


@hookimpl
def nova_cli_commands() -> list[Any]:
    """``nova exec``."""
    from nova_capsule.cli import exec_command

    return [exec_command]


@hookimpl
def nova_image_kinds() -> list[Any]:
    """OCI images for capsules."""
    from nova_capsule.cli import CapsuleImages

    return [CapsuleImages()]


@hookimpl
def nova_doctor_checks() -> list[CheckResult]:
    """An OCI runtime (crun or runc), the conmon monitor, an init program, overlayfs."""
    runtimes = [name for name in ("crun", "runc") if shutil.which(name)]
    results = [CheckResult(
        CATEGORY, "OCI runtime", "ok" if runtimes else "fail",
        ", ".join(runtimes) if runtimes else "neither crun nor runc found",
        None if runtimes else "apt-get install crun (or runc)")]
    results.append(program_check(CATEGORY, "conmon", "monitors each capsule",
                                 "apt-get install conmon"))
    from nova_capsule.bundle import init_program
    from nova_core.errors import NovaError

    try:
        init: str | None = init_program()
    except NovaError:
        init = None
    results.append(CheckResult(
        CATEGORY, "init program", "ok" if init else "warn",
        f"{init} (for init = true)" if init else "neither catatonit nor tini-static found "
        "(capsules with init = true cannot be made)", None if init else "apt-get install catatonit"))
    try:
        with open("/proc/filesystems") as handle:
            has_overlay = any(line.split()[-1] == "overlay" for line in handle if line.strip())
    except OSError:
        has_overlay = False
    results.append(CheckResult(
        CATEGORY, "overlayfs", "ok" if has_overlay else "warn",
        "available" if has_overlay else "not listed in /proc/filesystems",
        None if has_overlay else "modprobe overlay"))
    return results
