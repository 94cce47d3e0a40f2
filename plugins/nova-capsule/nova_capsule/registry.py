"""A client for the OCI distribution API (what docker/podman pull speaks).

Manifests (OCI and Docker schema 2), image indexes / manifest lists, blobs
streamed to disk with their digest verified, and the two auth schemes
registries use: a Bearer token fetched from the realm the registry names in its
``WWW-Authenticate`` challenge, and Basic.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nova_capsule.reference import ImageReference, is_loopback
from nova_core.errors import NovaError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
CHUNK = 1 << 20


@dataclass(frozen=True)
class Credentials:
    """Registry credentials (never printed)."""

    username: str | None = None
    password: str | None = None
    token: str | None = None


class RegistryClient:
    """Talks to one registry.

    :param insecure: registries (``host:port``) to reach over plain HTTP besides loopback.
    :param timeout: seconds for each request.
    """

    def __init__(self, ref: ImageReference, credentials: Credentials | None = None,
                 insecure: tuple[str, ...] = (), timeout: float = 30.0) -> None:
        self.ref = ref
        # the HTTP stack (urllib.request: http.client, ssl, email) costs ~30 ms to import and
        # most commands never talk to a registry: it is loaded here, and from then on
        # urllib.request / urllib.error resolve through the urllib package as usual
        import urllib.error  # noqa: F401
        import urllib.request  # noqa: F401

        self.credentials = credentials or Credentials()
        plain = is_loopback(ref.host) or ref.registry in insecure
        self.base = f"{'http' if plain else 'https'}://{ref.registry}/v2/"
        self.timeout = timeout
        self._authorization: str | None = None
        if self.credentials.token:
            self._authorization = f"Bearer {self.credentials.token}"

    # -- HTTP --------------------------------------------------------------------
    def _open(self, url: str, accept: str | None = None, retry_auth: bool = True):  # noqa: ANN202
        request = urllib.request.Request(url)
        if accept:
            request.add_header("Accept", accept)
        if self._authorization:
            # not copied onto redirects: blob downloads are often redirected to other hosts
            request.add_unredirected_header("Authorization", self._authorization)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)  # noqa: S310
        except urllib.error.HTTPError as error:
            if error.code == 401 and retry_auth:
                self._authenticate(error.headers.get("WWW-Authenticate", ""))
                return self._open(url, accept, retry_auth=False)
            raise
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise NovaError(f"cannot reach registry {self.ref.registry}: {reason}",
                            hint="check the address and that the registry is running; "
                                 "set [images] default_registry in NOVA_HOME/config.toml "
                                 "for short names") from error

    def _authenticate(self, challenge: str) -> None:
        scheme, _, params = challenge.partition(" ")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        user, password = self.credentials.username, self.credentials.password
        if scheme.lower() == "basic":
            if not user:
                raise NovaError(f"registry {self.ref.registry} needs a username and password",
                                hint="add [container.NAME.auth] username/password")
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self._authorization = f"Basic {token}"
            return
        if scheme.lower() != "bearer" or "realm" not in fields:
            raise NovaError(f"registry {self.ref.registry} asks for unsupported auth: "
                            f"{challenge or 'no challenge'}")
        query = {k: v for k, v in fields.items() if k in ("service", "scope")}
        query.setdefault("scope", f"repository:{self.ref.repository}:pull")
        request = urllib.request.Request(f"{fields['realm']}?{urllib.parse.urlencode(query)}")
        if user:
            basic = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            request.add_unredirected_header("Authorization", f"Basic {basic}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                answer = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise NovaError(f"registry {self.ref.registry}: getting a token from "
                            f"{fields['realm']} failed: {error}") from error
        token = answer.get("token") or answer.get("access_token")
        if not token:
            raise NovaError(f"registry {self.ref.registry}: the token service gave no token")
        self._authorization = f"Bearer {token}"

    def _http_error(self, error: urllib.error.HTTPError, what: str) -> NovaError:
        if error.code == 404:
            return NovaError(f"{what} not found in registry {self.ref.registry}",
                             hint="check the name and tag (nova image pull NAME:TAG)")
        if error.code in (401, 403):
            return NovaError(f"registry {self.ref.registry} refused access to {what} "
                             f"(HTTP {error.code})", hint="check the credentials in auth")
        return NovaError(f"registry {self.ref.registry} answered HTTP {error.code} for {what}")

    # -- API ---------------------------------------------------------------------
    def manifest(self, reference: str | None = None) -> tuple[str, bytes, str]:
        """Fetch a manifest or index: (media type, raw bytes, digest)."""
        reference = reference or self.ref.reference
        url = f"{self.base}{self.ref.repository}/manifests/{reference}"
        try:
            with self._open(url, ACCEPT) as response:
                body = response.read()
                media_type = response.headers.get("Content-Type", "").split(";")[0]
        except urllib.error.HTTPError as error:
            raise self._http_error(error, f"image {self.ref.repository}:{reference}") from error
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise NovaError(f"manifest digest mismatch for {self.ref}: asked {reference}, "
                            f"got {digest}", hint="the registry or a proxy altered the content")
        if not media_type or media_type == "application/json":
            media_type = json.loads(body).get("mediaType", OCI_MANIFEST)
        return media_type, body, digest

    def blob(self, digest: str, target: Path, progress: Callable[[int], None] | None = None) -> int:
        """Download blob ``digest`` to ``target`` (atomically), verifying its digest."""
        url = f"{self.base}{self.ref.repository}/blobs/{digest}"
        partial = target.with_name(target.name + ".partial")
        hasher = hashlib.sha256()
        size = 0
        try:
            with self._open(url) as response, open(partial, "wb") as out:
                while chunk := response.read(CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                    if progress:
                        progress(len(chunk))
        except urllib.error.HTTPError as error:
            partial.unlink(missing_ok=True)
            raise self._http_error(error, f"blob {digest}") from error
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            partial.unlink(missing_ok=True)
            raise NovaError(f"digest mismatch for a layer of {self.ref}: expected {digest}, "
                            f"got {actual}", hint="the registry or a proxy altered the content; "
                            "nothing was stored")
        os.replace(partial, target)
        return size
