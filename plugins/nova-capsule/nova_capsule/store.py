"""The local image store: content-addressed blobs shared between images.

```
NOVA_HOME/drivers/capsule/images/
  blobs/sha256/<hex>     manifests, configs and layer blobs, verified on arrival
  layers/<hex>/          each layer extracted once (keyed by its blob digest)
  images.json            name -> manifest digest, config digest, layer digests
```

Layers are shared by every image (and every capsule) that uses them; removing
an image removes only blobs and layers nothing else references.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nova_capsule.layers import extract_layer
from nova_capsule.reference import ImageReference
from nova_capsule.registry import INDEX_TYPES, MANIFEST_TYPES, RegistryClient
from nova_core.errors import NovaError
from nova_core.files import replace_file

LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
}
Progress = Callable[[str, int, int], None]  # (what, done bytes, total bytes)


@dataclass
class ImageRecord:
    """One image in the store."""

    name: str
    digest: str
    config_digest: str
    layers: list[str]
    size: int
    created: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class ImageConfig:
    """What a capsule takes from an image's config."""

    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    user: str


_HEX64 = re.compile(r"[a-f0-9]{64}")


def _hex(digest: str) -> str:
    """The hex part of a sha256 digest; anything else (it names files) is refused."""
    algorithm, _, value = str(digest).partition(":")
    if algorithm != "sha256" or not _HEX64.fullmatch(value):
        raise NovaError(f"invalid or unsupported digest {str(digest)[:80]!r} (only sha256 is)")
    return value


class ImageStore:
    """The store under ``root``; safe for concurrent nova processes (a file lock)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.layers = root / "layers"
        self.index = root / "images.json"

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.layers.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = json.loads(self.index.read_text()) if self.index.exists() else {"images": {}}
            yield data
            replace_file(self.index, json.dumps(data, indent=1, sort_keys=True))

    def _read(self) -> dict[str, Any]:
        return json.loads(self.index.read_text()) if self.index.exists() else {"images": {}}

    def blob_path(self, digest: str) -> Path:
        """Where blob ``digest`` lives."""
        return self.blobs / _hex(digest)

    def layer_path(self, digest: str) -> Path:
        """Where the extracted layer of blob ``digest`` lives."""
        return self.layers / _hex(digest)

    # -- queries -----------------------------------------------------------------
    def images(self) -> list[ImageRecord]:
        """Every image, by name."""
        return [ImageRecord(**v) for _, v in sorted(self._read()["images"].items())]

    def get(self, name: str) -> ImageRecord | None:
        """The image called ``name`` (a normalised reference string), or None."""
        entry = self._read()["images"].get(name)
        return ImageRecord(**entry) if entry else None

    def config(self, image: ImageRecord) -> ImageConfig:
        """The runtime parts of the image's config."""
        return self.config_from_digest(image.config_digest)

    def config_from_digest(self, digest: str) -> ImageConfig:
        """The runtime parts of the config blob ``digest``."""
        data = json.loads(self.blob_path(digest).read_text())
        conf = data.get("config") or {}
        env = {}
        for item in conf.get("Env") or []:
            key, _, value = item.partition("=")
            env[key] = value
        return ImageConfig(env=env, entrypoint=list(conf.get("Entrypoint") or []),
                           cmd=list(conf.get("Cmd") or []), workdir=conf.get("WorkingDir") or "/",
                           user=conf.get("User") or "")

    # -- pull --------------------------------------------------------------------
    def pull(self, ref: ImageReference, client: RegistryClient,
             progress: Progress | None = None) -> ImageRecord:
        """Fetch ``ref`` (platform linux/amd64 from an index), verify and extract it."""
        media_type, body, digest = client.manifest()
        if media_type in INDEX_TYPES:
            chosen = _choose_platform(json.loads(body), str(ref))
            media_type, body, digest = client.manifest(chosen)
        if media_type not in MANIFEST_TYPES:
            raise NovaError(f"{ref}: unsupported manifest type {media_type!r}",
                            hint="Nova reads OCI and Docker schema 2 images")
        manifest = _checked_manifest(body, str(ref))
        layers = manifest["layers"]
        for layer in layers:
            if layer.get("mediaType") not in LAYER_TYPES:
                raise NovaError(f"{ref}: layer type {layer.get('mediaType')!r} is not supported",
                                hint="Nova reads tar, tar+gzip and tar+zstd layers")
        total = sum(int(layer.get("size", 0)) for layer in layers)
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.layers.mkdir(parents=True, exist_ok=True)
        self._write_blob(digest, body)
        config = manifest["config"]["digest"]
        if not self.blob_path(config).exists():
            client.blob(config, self.blob_path(config))
        done = 0
        for layer in layers:
            layer_digest = layer["digest"]
            path = self.blob_path(layer_digest)
            if not path.exists():
                def advance(count: int, _what: str = layer_digest[7:19]) -> None:
                    nonlocal done
                    done += count
                    if progress:
                        progress(_what, done, total)
                client.blob(layer_digest, path, advance)
            else:
                done += int(layer.get("size", 0))
                if progress:
                    progress(layer_digest[7:19], done, total)
            if not self.layer_path(layer_digest).exists():
                extract_layer(path, self.layer_path(layer_digest), layer_digest[:19])
        record = ImageRecord(name=str(ref), digest=digest, config_digest=config,
                             layers=[layer["digest"] for layer in layers], size=total)
        with self._locked() as data:
            data["images"][record.name] = record.as_json()
        return record

    def _write_blob(self, digest: str, body: bytes) -> None:
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        if actual != digest:
            raise NovaError(f"digest mismatch: expected {digest}, got {actual}")
        path = self.blob_path(digest)
        if not path.exists():
            replace_file(path, body, tmp=path.with_name(path.name + ".partial"))

    # -- import ------------------------------------------------------------------
    def import_archive(self, source: Path, name: str) -> ImageRecord:
        """Import a rootfs tarball (tar or tar.gz) or an OCI image archive as ``name``."""
        if not source.is_file():
            raise NovaError(f"no such file: {source}")
        try:
            with tarfile.open(source, "r:*") as archive:
                names = set(archive.getnames())
        except tarfile.TarError as error:
            raise NovaError(f"{source} is not a tar archive: {error}") from error
        if "oci-layout" in names or "./oci-layout" in names:
            return self._import_oci(source, name)
        return self._import_rootfs(source, name)

    def _store_file(self, path: Path) -> tuple[str, int]:
        hasher = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                hasher.update(chunk)
        digest = "sha256:" + hasher.hexdigest()
        target = self.blob_path(digest)
        if not target.exists():
            tmp = target.with_name(target.name + ".partial")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        return digest, path.stat().st_size

    def _import_rootfs(self, source: Path, name: str) -> ImageRecord:
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.layers.mkdir(parents=True, exist_ok=True)
        layer_digest, size = self._store_file(source)
        opener = gzip.open if _is_gzip(source) else open
        hasher = hashlib.sha256()
        with opener(source, "rb") as handle:
            while chunk := handle.read(1 << 20):
                hasher.update(chunk)
        config = {"architecture": "amd64", "os": "linux",
                  "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:"
                                                         "/usr/sbin:/usr/bin:/sbin:/bin"]},
                  "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hasher.hexdigest()]}}
        config_body = json.dumps(config).encode()
        config_digest = "sha256:" + hashlib.sha256(config_body).hexdigest()
        self._write_blob(config_digest, config_body)
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": config_digest, "size": len(config_body)},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar" +
                                ("+gzip" if _is_gzip(source) else ""),
                                "digest": layer_digest, "size": size}]}
        body = json.dumps(manifest).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self._write_blob(digest, body)
        if not self.layer_path(layer_digest).exists():
            extract_layer(self.blob_path(layer_digest), self.layer_path(layer_digest))
        record = ImageRecord(name=name, digest=digest, config_digest=config_digest,
                             layers=[layer_digest], size=size)
        with self._locked() as data:
            data["images"][name] = record.as_json()
        return record

    def _import_oci(self, source: Path, name: str) -> ImageRecord:
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="nova-oci-", dir=self.root) as tmp:
            folder = Path(tmp)
            wanted = {"oci-layout", "index.json"}
            with tarfile.open(source, "r:*") as archive:
                for member in archive:
                    parts = [p for p in Path(member.name).parts if p not in (".", "/")]
                    if not member.isreg() or not parts or ".." in parts:
                        continue
                    relative = "/".join(parts)
                    if relative not in wanted and not (
                            len(parts) == 3 and parts[:2] == ["blobs", "sha256"]
                            and _HEX64.fullmatch(parts[2])):
                        continue  # only the layout's own files, under names we checked
                    target = folder.joinpath(*parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    handle = archive.extractfile(member)
                    assert handle is not None
                    with handle, open(target, "wb") as out:
                        shutil.copyfileobj(handle, out, 1 << 20)
            try:
                return self._import_oci_layout(folder, source, name)
            except (KeyError, IndexError, TypeError, ValueError, OSError) as error:
                raise NovaError(f"{source} is not a usable OCI archive ({type(error).__name__}: "
                                f"{error})", hint="export it with skopeo copy ... oci-archive:FILE "
                                "or podman save --format oci-archive") from error

    def _import_oci_layout(self, folder: Path, source: Path, name: str) -> ImageRecord:
        index = json.loads((folder / "index.json").read_text())
        blobs = folder / "blobs" / "sha256"
        entry = index["manifests"][0]
        body = (blobs / _hex(entry["digest"])).read_bytes()
        if entry.get("mediaType") in INDEX_TYPES or json.loads(body).get("manifests"):
            entry = {"digest": _choose_platform(json.loads(body), str(source))}
            body = (blobs / _hex(entry["digest"])).read_bytes()
        manifest = _checked_manifest(body, str(source))
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.layers.mkdir(parents=True, exist_ok=True)
        self._write_blob(entry["digest"], body)
        for digest in [manifest["config"]["digest"]] + [la["digest"] for la in manifest["layers"]]:
            stored, _ = self._store_file(blobs / _hex(digest))
            if stored != digest:
                raise NovaError(f"{source}: blob {digest} has digest {stored}: archive damaged")
        for layer in manifest["layers"]:
            if not self.layer_path(layer["digest"]).exists():
                extract_layer(self.blob_path(layer["digest"]), self.layer_path(layer["digest"]))
        record = ImageRecord(name=name, digest=entry["digest"],
                             config_digest=manifest["config"]["digest"],
                             layers=[la["digest"] for la in manifest["layers"]],
                             size=sum(int(la.get("size", 0)) for la in manifest["layers"]))
        with self._locked() as data:
            data["images"][name] = record.as_json()
        return record

    # -- removal -----------------------------------------------------------------
    def remove(self, name: str, in_use: set[str]) -> list[str]:
        """Forget image ``name``; delete blobs and layers no image or capsule uses.

        :param in_use: layer digests capsules still run on.
        :return: the digests deleted.
        """
        with self._locked() as data:
            if name not in data["images"]:
                raise NovaError(f"no image {name} in the store", hint="nova image ls lists them")
            del data["images"][name]
            keep = set(in_use)
            for entry in data["images"].values():
                keep.update([entry["digest"], entry["config_digest"], *entry["layers"]])
            removed = []
            for blob in self.blobs.iterdir():
                digest = "sha256:" + blob.name
                if blob.name.endswith(".partial") or digest in keep:
                    continue
                blob.unlink()
                shutil.rmtree(self.layers / blob.name, ignore_errors=True)
                removed.append(digest)
        return removed


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _choose_platform(index: dict[str, Any], what: str, os_name: str = "linux",
                     architecture: str = "amd64") -> str:
    found = []
    for entry in index.get("manifests", []):
        platform = entry.get("platform") or {}
        found.append(f"{platform.get('os')}/{platform.get('architecture')}")
        if platform.get("os") == os_name and platform.get("architecture") == architecture:
            return entry["digest"]
    raise NovaError(f"{what} has no {os_name}/{architecture} image "
                    f"(it has: {', '.join(found) or 'none'})")


def _checked_manifest(body: bytes, what: str) -> dict[str, Any]:
    """Parse an image manifest and check the fields Nova uses (digests become file names)."""
    try:
        manifest = json.loads(body)
        config = manifest["config"]["digest"]
        layers = manifest.get("layers") or []
        _hex(config)
        for layer in layers:
            _hex(layer["digest"])
            int(layer.get("size", 0))
    except (ValueError, KeyError, TypeError) as error:
        raise NovaError(f"{what}: the image manifest is malformed ({type(error).__name__}: "
                        f"{error})") from error
    except NovaError as error:
        raise NovaError(f"{what}: {error.message}") from error
    manifest["layers"] = layers
    return manifest
