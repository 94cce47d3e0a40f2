"""JSON Schema of the NovaFile, with every installed driver's own keys."""

from __future__ import annotations

from typing import Any

from nova_core.drivers.compute import ComputeDriver
from nova_core.drivers.models import DRIVER_KIND_OF, ResourceKind
from nova_core.novafile import entries
from nova_core.novafile.entries import NAME_PATTERN
from nova_core.plugins import PluginRegistry


def _inline(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Move a model schema's ``$defs`` into the shared ``defs``."""
    for name, value in schema.pop("$defs", {}).items():
        defs.setdefault(name, value)
    return schema


def novafile_schema(registry: PluginRegistry) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a NovaFile as this installation accepts it.

    Each kind's table schema has the core keys plus the keys of every installed
    driver of that kind, each described with the driver that accepts it.
    """
    defs: dict[str, Any] = {}
    properties: dict[str, Any] = {
        "project": {"type": "string", "pattern": NAME_PATTERN,
                    "description": "project name; defaults to the folder's name"},
    }
    for kind, model in entries.ENTRY_MODELS.items():
        entry = _inline(model.model_json_schema(ref_template="#/$defs/{model}"), defs)
        entry["additionalProperties"] = False
        drivers = registry.all_driver_classes(DRIVER_KIND_OF[ResourceKind(kind)])
        names = []
        for name, cls in sorted(drivers.items()):
            if issubclass(cls, ComputeDriver) and ResourceKind(kind) not in cls.instance_kinds:
                continue
            names.append(name)
            options = _inline(cls.options_model.model_json_schema(ref_template="#/$defs/{model}"),
                              defs)
            for key, prop in options.get("properties", {}).items():
                if key in entry["properties"]:
                    continue
                prop = dict(prop)
                prop["description"] = (prop.get("description", "") +
                                       f" (driver '{name}')").strip()
                entry["properties"][key] = prop
        entry["properties"]["driver"] = {
            "type": "string",
            "description": f"driver; default '{entries.DEFAULT_DRIVERS[kind]}'",
            **({"examples": names} if names else {}),
        }
        defs[f"{kind}_table"] = entry
        properties[kind] = {
            "type": "object",
            "propertyNames": {"pattern": NAME_PATTERN},
            "additionalProperties": {"$ref": f"#/$defs/{kind}_table"},
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "NovaFile",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "$defs": defs,
    }
