"""The ``local`` storage driver: a named volume is a folder under NOVA_HOME."""

from __future__ import annotations

import shutil
from typing import ClassVar

from nova_core.drivers.models import (
    DriverOptions,
    Lifecycle,
    RenderedDetail,
    ResourceSpec,
    ResourceStatus,
    VolumeSpec,
)
from nova_core.drivers.storage import StorageDriver


class LocalVolumeOptions(DriverOptions):
    """The ``local`` driver has no options of its own."""


class LocalVolumeDriver(StorageDriver):
    """Volumes as folders: ``NOVA_HOME/drivers/local/<project>/<name>/data``.

    ``size`` is recorded but not enforced (a folder has no quota); capsules that
    need a hard limit use ``[container.X.storage] size``.
    """

    options_model: ClassVar[type[DriverOptions]] = LocalVolumeOptions
    updatable_fields: ClassVar[frozenset[str]] = frozenset({"size"})

    def _path(self, spec: ResourceSpec):  # noqa: ANN202 - a Path
        return self.context.nova_home / "drivers" / self.name / spec.ref.project / spec.ref.name

    def render(self, spec: ResourceSpec) -> list[RenderedDetail]:
        """The folder the volume will live in."""
        return [RenderedDetail(title="folder", body=str(self._path(spec) / "data"))]

    def create(self, spec: VolumeSpec) -> ResourceStatus:
        """Make the folder (mode 0755, owned by the caller)."""
        data = self._path(spec) / "data"
        data.mkdir(parents=True, exist_ok=True)
        return ResourceStatus(ref=spec.ref, state=Lifecycle.CREATED, data={"path": str(data)})

    def delete(self, spec: VolumeSpec) -> None:
        """Remove the folder and everything in it."""
        shutil.rmtree(self._path(spec), ignore_errors=True)

    def status(self, spec: VolumeSpec) -> ResourceStatus:
        """``created`` with the path when the folder exists, else ``missing``."""
        data = self._path(spec) / "data"
        if data.is_dir():
            return ResourceStatus(ref=spec.ref, state=Lifecycle.CREATED, data={"path": str(data)})
        return ResourceStatus(ref=spec.ref, state=Lifecycle.MISSING)
