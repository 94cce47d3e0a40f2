"""Turning specs into recorded JSON and back, and comparing them."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from nova_core.drivers.models import (
    ContainerSpec,
    DriverOptions,
    NetworkSpec,
    ResourceKind,
    ResourceSpec,
    VmSpec,
    VolumeSpec,
)

SPEC_CLASS: dict[ResourceKind, type[ResourceSpec]] = {
    ResourceKind.VM: VmSpec,
    ResourceKind.CONTAINER: ContainerSpec,
    ResourceKind.NETWORK: NetworkSpec,
    ResourceKind.VOLUME: VolumeSpec,
}
#: Filled in while applying, not asked for by the user: never a reason to change.
RUNTIME_FIELDS = frozenset({"attachments", "assigned_devices", "base_dir", "ref"})


def spec_json(spec: ResourceSpec) -> str:
    """The spec as recorded in state."""
    return spec.model_dump_json()


def desired_fields(spec: ResourceSpec) -> dict[str, Any]:
    """The user-controlled fields, driver options flattened in as the user wrote them."""
    dumped = spec.model_dump(mode="json")
    for mount in dumped.get("volumes", []):
        mount.pop("host_path", None)  # filled in by the engine, not asked for
    options = dumped.pop("options", {}) or {}
    result = {k: v for k, v in dumped.items() if k not in RUNTIME_FIELDS}
    for key, value in options.items():
        result[f"{key}"] = value
    return result


def spec_hash(spec: ResourceSpec) -> str:
    """A stable digest of :func:`desired_fields`."""
    text = json.dumps(desired_fields(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def changed_fields(old: ResourceSpec, new: ResourceSpec) -> frozenset[str]:
    """Names of the user-controlled fields that differ (never their values)."""
    before, after = desired_fields(old), desired_fields(new)
    return frozenset(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def spec_from_json(
    kind: ResourceKind, text: str, options_model: type[DriverOptions] | None
) -> ResourceSpec:
    """Rebuild a recorded spec; ``options_model`` is None when the driver is absent."""
    data = json.loads(text)
    raw_options = data.pop("options", {}) or {}
    spec = SPEC_CLASS[kind].model_validate(data)
    if options_model is not None:
        options = options_model.model_validate(raw_options)
    else:
        options = DriverOptions.model_construct(**raw_options)
    return spec.model_copy(update={"options": options})
