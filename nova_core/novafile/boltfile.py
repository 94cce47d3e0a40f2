"""The Boltfile adapter: ``[services.NAME]`` tables become capsules.

A Boltfile has a top-level ``project``, ``[services.NAME]`` tables and optional
``[networks.NAME]`` / ``[volumes.NAME]``. Services map to ``container`` tables,
with compose-style spellings translated (``environment`` -> ``env``,
``networks`` and ``network_mode`` -> ``network``, ``depends_on`` as a table of
conditions -> a list).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BOLTFILE_TOP_LEVEL = {"project": "project", "services": "container",
                      "networks": "network", "volumes": "volume"}
RENAMES = {"environment": "env", "networks": "network", "network_mode": "network"}


@dataclass
class Translation:
    """A Boltfile turned into NovaFile tables, with how to name things back in errors."""

    data: dict[str, Any]
    #: (kind, name) -> the table path the user wrote, e.g. ("services", "web")
    labels: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    #: (kind, name) -> {NovaFile key: Boltfile key}
    renamed: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    problems: list[tuple[tuple[str, ...], str]] = field(default_factory=list)


def translate_boltfile(raw: dict[str, Any]) -> Translation:
    """Translate a parsed Boltfile; unknown top-level keys are left for the loader to report."""
    out = Translation(data={})
    for key, value in raw.items():
        target = BOLTFILE_TOP_LEVEL.get(key)
        if target is None:
            out.data[key] = value  # reported as unknown by the loader
            continue
        if target == "project" or not isinstance(value, dict):
            out.data[target] = value
            continue
        tables: dict[str, Any] = {}
        for name, table in value.items():
            out.labels[(target, name)] = (key, name)
            if target == "container" and isinstance(table, dict):
                table, renamed = _service(table, (key, name), out.problems)
                out.renamed[(target, name)] = renamed
            tables[name] = table
        out.data[target] = tables
    return out


def _service(
    table: dict[str, Any], label: tuple[str, ...], problems: list[tuple[tuple[str, ...], str]]
) -> tuple[dict[str, Any], dict[str, str]]:
    result: dict[str, Any] = {}
    renamed: dict[str, str] = {}
    for key, value in table.items():
        new = RENAMES.get(key, key)
        if new in result:
            other = renamed.get(new, new)
            problems.append(((*label, key), f"'{other}' and '{key}' mean the same; keep one"))
            continue
        if new != key:
            renamed[new] = key
        if key == "depends_on" and isinstance(value, dict):
            value = list(value)
        result[new] = value
    return result, renamed
