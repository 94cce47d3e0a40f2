"""Image operations shared by the CLI and the driver: resolve a name, pull with progress."""

from __future__ import annotations

import sys
from pathlib import Path

from nova_capsule.config import load_settings
from nova_capsule.reference import ImageReference, parse_reference
from nova_capsule.registry import Credentials, RegistryClient
from nova_capsule.store import ImageRecord, ImageStore
from nova_core.errors import NovaError


def image_store(nova_home: Path) -> ImageStore:
    """The store of this NOVA_HOME."""
    return ImageStore(nova_home / "drivers" / "capsule" / "images")


def resolve(nova_home: Path, text: str) -> ImageReference:
    """Parse ``text`` against the configured default registry."""
    return parse_reference(text, load_settings(nova_home).default_registry)


def find_local(nova_home: Path, text: str) -> ImageRecord | None:
    """An image already in the store: by its full name, or by the name it was imported as."""
    store = image_store(nova_home)
    found = store.get(text)
    if found is None:
        try:
            found = store.get(str(resolve(nova_home, text)))
        except NovaError:
            return None
    return found


def pull(nova_home: Path, text: str, credentials: Credentials | None = None,
         show_progress: bool = True) -> ImageRecord:
    """Pull ``text`` into the store, with a progress bar on a terminal."""
    ref = resolve(nova_home, text)
    settings = load_settings(nova_home)
    client = RegistryClient(ref, credentials, settings.insecure_registries)
    store = image_store(nova_home)
    if not (show_progress and sys.stderr.isatty()):
        return store.pull(ref, client)
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), transient=True) as bar:
        task = bar.add_task(f"pulling {ref}", total=None)

        def update(what: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return store.pull(ref, client, update)


def layers_in_use(nova_home: Path) -> set[str]:
    """Layer and config digests existing capsules are built on (never removed with an image)."""
    import json

    used: set[str] = set()
    capsules = nova_home / "drivers" / "capsule" / "capsules"
    for meta in capsules.glob("*/*/capsule.json"):
        try:
            data = json.loads(meta.read_text())
            used.update(data.get("layers", []))
            if data.get("config_digest"):
                used.add(data["config_digest"])
        except (OSError, ValueError):
            continue
    return used
