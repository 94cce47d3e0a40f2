"""Image references: ``ubuntu:22.04``, ``postgres``, ``bolt://nginx:latest``,
``127.0.0.1:5000/team/app:1.2``, ``repo@sha256:...``.

A reference without a registry resolves against the default registry
(``bolt://`` says so explicitly). Registries on loopback addresses are spoken
to over plain HTTP, as docker and podman do; others over HTTPS unless listed as
insecure in Nova's configuration.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from nova_core.errors import NovaError

_NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"^{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
DOCKER_HUB = "docker.io"


@dataclass(frozen=True)
class ImageReference:
    """A parsed reference. ``registry`` is ``host[:port]``."""

    registry: str
    repository: str
    tag: str | None = "latest"
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def host(self) -> str:
        """The registry's host without the port."""
        host = self.registry
        if host.startswith("["):
            return host[1:host.index("]")]
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_reference(text: str, default_registry: str = DOCKER_HUB) -> ImageReference:
    """Parse ``text``; raise :class:`NovaError` naming what is wrong."""
    original = text
    text = text.strip()
    if text.startswith("bolt://"):
        text = text[len("bolt://"):]
        explicit_default = True
    else:
        explicit_default = False
    if not text:
        raise NovaError(f"'{original}' is not an image reference",
                        hint="use NAME[:TAG], e.g. busybox:latest")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise NovaError(f"'{original}': '{digest}' is not a sha256 digest")
    tag: str | None = None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise NovaError(f"'{original}': '{tag}' is not a valid tag")
    first, _, rest = text.partition("/")
    if rest and not explicit_default and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = default_registry, text
    if not _NAME_RE.match(repository):
        raise NovaError(f"'{original}': '{repository}' is not a repository name",
                        hint="repository names are lowercase letters, digits and . _ - /")
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(registry=registry, repository=repository, tag=tag, digest=digest)
