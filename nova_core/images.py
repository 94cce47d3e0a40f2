"""Kinds of images behind ``nova image``: plugins contribute them through the
``nova_image_kinds`` hook (nova-capsule: OCI images for capsules; nova-qemu: disk
images for VMs), and the core's ``nova image`` commands list, import, pull and remove
across all of them.

A plugin's kind::

    class DiskImages(ImageKind):
        kind = "vm"
        def rows(self, nova_home): ...
        def claims(self, path): return path.suffix in (".qcow2", ".img")
        def import_image(self, nova_home, path, name): ...
        def remove(self, nova_home, name): ...

    @hookimpl
    def nova_image_kinds():
        return [DiskImages()]
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nova_core.errors import NovaError


@dataclass
class ImageRow:
    """One stored image, as ``nova image ls`` shows it."""

    name: str
    id: str  # a short content id (digest prefix)
    size: int  # bytes on disk
    detail: str  # "3 layers", "qcow2, 10.0 GiB virtual"
    created: float
    data: dict[str, Any] = field(default_factory=dict)  # the kind's full record, for --json


class ImageKind(abc.ABC):
    """One kind of image Nova stores."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def rows(self, nova_home: Path) -> list[ImageRow]:
        """Every stored image of this kind."""

    @abc.abstractmethod
    def claims(self, path: Path) -> bool:
        """True when ``nova image import PATH`` should go to this kind."""

    @abc.abstractmethod
    def import_image(self, nova_home: Path, path: Path, name: str) -> str:
        """Import ``path`` as ``name``; return the line to print."""

    @abc.abstractmethod
    def find(self, nova_home: Path, name: str) -> bool:
        """True when an image ``name`` of this kind is stored."""

    @abc.abstractmethod
    def remove(self, nova_home: Path, name: str) -> str:
        """Remove image ``name`` (it exists); return the line to print."""

    def pull(self, nova_home: Path, reference: str) -> str:
        """Fetch ``reference`` from a registry; return the line to print."""
        raise NovaError(f"{self.kind} images cannot be pulled",
                        hint=f"nova image import FILE NAME adds a {self.kind} image")


def image_kinds() -> list[ImageKind]:
    """Every kind the installed plugins contribute, by name."""
    from nova_core.plugins import get_registry

    found: dict[str, ImageKind] = {}
    for kinds in get_registry().call_hook_safely("nova_image_kinds"):
        for kind in kinds:
            found.setdefault(kind.kind, kind)
    return [found[name] for name in sorted(found)]


def choose_kind(wanted: str | None) -> list[ImageKind]:
    """The kinds to act on: all, or the one ``--kind`` names."""
    kinds = image_kinds()
    if not kinds:
        raise NovaError("no installed plugin stores images",
                        hint="install nova-capsule (container images) or nova-qemu (VM images)")
    if wanted is None:
        return kinds
    chosen = [k for k in kinds if k.kind == wanted]
    if not chosen:
        raise NovaError(f"no image kind '{wanted}'",
                        hint=f"kinds: {', '.join(k.kind for k in kinds)}")
    return chosen


__all__ = ["ImageKind", "ImageRow", "choose_kind", "image_kinds"]
