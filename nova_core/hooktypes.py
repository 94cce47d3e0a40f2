"""Typed records that pluggy hooks take and return (see :mod:`nova_core.hookspecs`)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Literal

CheckStatus = Literal["ok", "warn", "fail", "info"]


@dataclass(frozen=True)
class CheckResult:
    """One line of ``nova doctor``.

    :param category: groups lines in the report (``host``, ``nova-qemu``, ...).
    :param name: what was checked (``cgroup mode``, ``program crun``).
    :param status: ``ok``, ``warn`` (works with limits), ``fail`` or ``info``.
    :param summary: what was found, one line.
    :param hint: what to do when it is not ok.
    """

    category: str
    name: str
    status: CheckStatus
    summary: str
    hint: str | None = None


def program_check(category: str, program: str, purpose: str, hint: str) -> CheckResult:
    """Check that ``program`` is on PATH; the usual check for a plugin's external tools.

    >>> program_check("nova-capsule", "crun", "runs capsules", "apt-get install crun").name
    'program crun'
    """
    path = shutil.which(program)
    if path:
        return CheckResult(category, f"program {program}", "ok", f"{path} ({purpose})")
    return CheckResult(category, f"program {program}", "fail", f"not found ({purpose})", hint)


@dataclass(frozen=True)
class LifecycleEvent:
    """A resource changed, or is about to.

    :param phase: ``before`` the driver call, ``after`` it succeeded, ``failed``.
    :param action: ``create``, ``start``, ``stop`` or ``delete``.
    :param project: the NovaFile's project.
    :param kind: ``vm``, ``container``, ``network`` or ``volume``.
    :param name: the resource's name.
    :param driver: the driver's name.
    :param error: the error's message when ``phase == "failed"``.
    """

    phase: Literal["before", "after", "failed"]
    action: Literal["create", "start", "stop", "delete"]
    project: str
    kind: str
    name: str
    driver: str
    error: str | None = None
    data: dict[str, str] = field(default_factory=dict)
