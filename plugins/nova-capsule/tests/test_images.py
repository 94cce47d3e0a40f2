"""Image references, the registry client and the store, against a real local registry."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest
from nova_capsule.layers import LayerError, extract_layer
from nova_capsule.reference import parse_reference
from nova_capsule.registry import RegistryClient
from nova_capsule.store import ImageStore
from nova_capsule.testing import busybox_layer, image_config, layer_tar

from nova_core.errors import NovaError


@pytest.mark.parametrize(("text", "registry", "repository", "tag"), [
    ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04"),
    ("postgres", "docker.io", "library/postgres", "latest"),
    ("bolt://nginx:latest", "reg.local:5000", "nginx", "latest"),
    ("127.0.0.1:5000/team/app:1.2", "127.0.0.1:5000", "team/app", "1.2"),
    ("localhost/app", "localhost", "app", "latest"),
])
def test_references(text: str, registry: str, repository: str, tag: str) -> None:
    default = "reg.local:5000" if text.startswith("bolt://") else "docker.io"
    ref = parse_reference(text, default)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)


@pytest.mark.parametrize("bad", ["", "UPPER/case", "a:b:c", "x@sha256:123", "bolt://"])
def test_bad_references(bad: str) -> None:
    with pytest.raises(NovaError):
        parse_reference(bad)


def test_pull_verifies_and_extracts(tmp_path: Path, registry) -> None:
    store = ImageStore(tmp_path / "images")
    ref = parse_reference(f"{registry.address}/test/busybox:1")
    seen: list[int] = []
    record = store.pull(ref, RegistryClient(ref), lambda what, done, total: seen.append(done))
    assert record.name == f"{registry.address}/test/busybox:1" and len(record.layers) == 1
    layer = store.layer_path(record.layers[0])
    assert (layer / "bin" / "busybox").stat().st_size == Path("/bin/busybox").stat().st_size
    assert os.readlink(layer / "bin" / "sh") == "busybox"
    assert seen and seen[-1] == record.size
    for blob in store.blobs.iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    assert store.config(record).cmd == ["/bin/sh"]


def test_index_picks_linux_amd64(tmp_path: Path, registry) -> None:
    store = ImageStore(tmp_path / "images")
    ref = parse_reference(f"{registry.address}/test/busybox:multi")
    record = store.pull(ref, RegistryClient(ref))
    config = json.loads(store.blob_path(record.config_digest).read_text())
    assert config["architecture"] == "amd64"


def test_docker_schema2_manifests_and_manifest_lists(tmp_path: Path, registry) -> None:
    """Images pushed with Docker's media types (as docker pushes them): a schema-2
    manifest, and a manifest list from which linux/amd64 is picked."""
    from nova_capsule.testing import push_image

    layer = busybox_layer({"etc/made-by": b"docker"})
    config = image_config(["/bin/sh"], layers=[layer])
    push_image(registry.address, "test/dockerish", "1", [layer], config, docker=True)
    push_image(registry.address, "test/dockerish", "list", [layer], config, platform_index=True,
               docker=True)
    store = ImageStore(tmp_path / "images")
    for tag in ("1", "list"):
        ref = parse_reference(f"{registry.address}/test/dockerish:{tag}")
        record = store.pull(ref, RegistryClient(ref))
        assert (store.layer_path(record.layers[0]) / "etc/made-by").read_bytes() == b"docker"
        config_seen = json.loads(store.blob_path(record.config_digest).read_text())
        assert config_seen["architecture"] == "amd64" and store.config(record).cmd == ["/bin/sh"]


def test_layers_are_shared_and_removed_only_when_unused(tmp_path: Path, registry) -> None:
    store = ImageStore(tmp_path / "images")
    one = store.pull(parse_reference(f"{registry.address}/test/busybox:1"),
                     RegistryClient(parse_reference(f"{registry.address}/test/busybox:1")))
    multi_ref = parse_reference(f"{registry.address}/test/busybox:multi")
    multi = store.pull(multi_ref, RegistryClient(multi_ref))
    assert one.layers == multi.layers and len(list(store.layers.iterdir())) == 1
    store.remove(one.name, in_use=set())
    assert store.layer_path(multi.layers[0]).exists()
    removed = store.remove(multi.name, in_use=set(multi.layers))
    assert multi.layers[0] not in removed and store.layer_path(multi.layers[0]).exists()


def test_unknown_image_and_unreachable_registry(tmp_path: Path, registry) -> None:
    store = ImageStore(tmp_path / "images")
    ref = parse_reference(f"{registry.address}/test/nothing:1")
    with pytest.raises(NovaError, match="not found in registry"):
        store.pull(ref, RegistryClient(ref))
    from nova_capsule.testing import free_port

    dead = parse_reference(f"127.0.0.1:{free_port()}/test/busybox:1")
    with pytest.raises(NovaError, match="cannot reach registry"):
        store.pull(dead, RegistryClient(dead, timeout=2))
    assert store.images() == []


def _image_parts(layer_digest: str | None = None) -> tuple[bytes, bytes, dict[str, bytes], bytes]:
    """(layer, config, blobs by digest, manifest) of a busybox image, for the small
    in-process registries below; ``layer_digest`` overrides the digest the manifest claims."""
    layer = busybox_layer()
    config = image_config(["/bin/sh"], layers=[layer])
    blobs = {"sha256:" + hashlib.sha256(b).hexdigest(): b for b in (layer, config)}
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest or "sha256:" + hashlib.sha256(layer).hexdigest(),
                    "size": len(layer)}]}).encode()
    return layer, config, blobs, manifest


def test_digest_mismatch_stores_nothing(tmp_path: Path) -> None:
    """A registry (a tiny HTTP server on 127.0.0.1) that serves a layer unlike its digest."""
    import http.server
    import threading

    claimed = "sha256:" + hashlib.sha256(busybox_layer() + b"x").hexdigest()
    layer, config, _blobs, manifest = _image_parts(layer_digest=claimed)

    class Liar(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if "/manifests/" in self.path:
                body, kind = manifest, "application/vnd.oci.image.manifest.v1+json"
            elif self.path.endswith(claimed):
                body, kind = layer, "application/octet-stream"
            else:
                body, kind = config, "application/octet-stream"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Liar)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = ImageStore(tmp_path / "images")
        ref = parse_reference(f"127.0.0.1:{server.server_address[1]}/liar/image:1")
        with pytest.raises(NovaError, match="digest mismatch"):
            store.pull(ref, RegistryClient(ref))
    finally:
        server.shutdown()
    assert store.images() == []
    assert not store.blob_path(claimed).exists()
    assert [p.name for p in store.blobs.iterdir() if p.name.endswith(".partial")] == []
    assert list(store.layers.iterdir()) == []


def _tar(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info in entries:
            payload = (data or {}).get(info.name)
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buffer.getvalue()


def test_whiteouts_and_opaque_dirs_become_overlay_ones(tmp_path: Path) -> None:
    blob = tmp_path / "layer.tar.gz"
    blob.write_bytes(layer_tar([("etc", None), ("etc/.wh.shadow", b""), ("var", None),
                                ("var/.wh..wh..opq", b""), ("var/new", b"n")]))
    extract_layer(blob, tmp_path / "out")
    whiteout = os.lstat(tmp_path / "out/etc/shadow")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(tmp_path / "out/var", "trusted.overlay.opaque") == b"y"
    assert (tmp_path / "out/var/new").read_bytes() == b"n"
    assert not (tmp_path / "out/var/.wh..wh..opq").exists()


def test_layers_cannot_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = tarfile.TarInfo("escape")
    link.type, link.linkname = tarfile.SYMTYPE, str(outside)
    through = tarfile.TarInfo("escape/pwned")
    for name, entries, payload in (
        ("dotdot", [tarfile.TarInfo("../pwned")], {"../pwned": b"x"}),
        ("symlink", [link, through], {"escape/pwned": b"x"}),
    ):
        blob = tmp_path / f"{name}.tar"
        blob.write_bytes(_tar(entries, payload))
        with pytest.raises(LayerError):
            extract_layer(blob, tmp_path / f"out-{name}")
        assert not (tmp_path / f"out-{name}").exists()
        assert not (tmp_path / f"out-{name}.partial").exists()
    assert list(outside.iterdir()) == [] and not (tmp_path / "pwned").exists()


def test_import_rootfs_tarball_and_oci_archive(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    rootfs = tmp_path / "rootfs.tar.gz"
    rootfs.write_bytes(busybox_layer())
    record = store.import_archive(rootfs, "local/busybox:imported")
    assert (store.layer_path(record.layers[0]) / "bin/busybox").exists()
    assert store.config(record).cmd == ["/bin/sh"]
    # an OCI archive made from the store's own blobs
    oci = tmp_path / "oci"
    (oci / "blobs" / "sha256").mkdir(parents=True)
    for digest in (record.digest, record.config_digest, *record.layers):
        (oci / "blobs/sha256" / digest[7:]).write_bytes(store.blob_path(digest).read_bytes())
    (oci / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (oci / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": record.digest,
         "size": store.blob_path(record.digest).stat().st_size}]}))
    archive = tmp_path / "image.oci.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(oci, arcname=".")
    other = ImageStore(tmp_path / "images2").import_archive(archive, "local/busybox:oci")
    assert other.layers == record.layers
    with pytest.raises(NovaError, match="not a tar archive"):
        store.import_archive(Path(__file__), "x:y")


def test_bearer_and_basic_auth_protocols(tmp_path: Path) -> None:
    """A registry (127.0.0.1, in-process) that answers 401 with a Bearer challenge; its token
    service wants Basic credentials, as Docker Hub-style registries do."""
    import base64
    import http.server
    import threading

    _layer, _config, blobs, manifest = _image_parts()
    seen: list[str] = []

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            port = self.server.server_address[1]
            if self.path.startswith("/token"):
                expected = "Basic " + base64.b64encode(b"me:pw").decode()
                seen.append(self.path)
                if self.headers.get("Authorization") != expected:
                    return self._send(401, b"{}")
                return self._send(200, json.dumps({"token": "tok-123"}).encode())
            if self.headers.get("Authorization") != "Bearer tok-123":
                self.send_response(401)
                self.send_header("WWW-Authenticate", f'Bearer realm="http://127.0.0.1:{port}/token"'
                                 ',service="test",scope="repository:auth/image:pull"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if "/manifests/" in self.path:
                return self._send(200, manifest, "application/vnd.oci.image.manifest.v1+json")
            return self._send(200, blobs[self.path.rsplit("/", 1)[1]])

        def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    from nova_capsule.registry import Credentials

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ref = parse_reference(f"127.0.0.1:{server.server_address[1]}/auth/image:1")
        store = ImageStore(tmp_path / "images")
        with pytest.raises(NovaError, match="getting a token"):
            store.pull(ref, RegistryClient(ref))  # no credentials: the token service says no
        record = store.pull(ref, RegistryClient(ref, Credentials("me", "pw")))
    finally:
        server.shutdown()
    assert record.layers and store.layer_path(record.layers[0]).is_dir()
    assert seen and "service=test" in seen[-1] and "scope=repository%3Aauth%2Fimage%3Apull" in seen[-1]


def test_credentials_do_not_follow_redirects(tmp_path: Path) -> None:
    """Blob downloads redirected to another host (as registries do to object storage) must not
    carry the registry's token. Two servers on 127.0.0.1 play registry and storage."""
    import http.server
    import threading

    from nova_capsule.registry import Credentials

    _layer, _config, blobs, manifest = _image_parts()
    storage_saw: list[str | None] = []

    class Storage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            storage_saw.append(self.headers.get("Authorization"))
            body = blobs[self.path.rsplit("/", 1)[1]]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    storage = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Storage)

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.headers.get("Authorization") != "Bearer secret-token":
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if "/manifests/" in self.path:
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                self.send_header("Content-Length", str(len(manifest)))
                self.end_headers()
                self.wfile.write(manifest)
                return
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{storage.server_address[1]}"
                                         f"/bucket/{self.path.rsplit('/', 1)[1]}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    registry = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    for server in (storage, registry):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ref = parse_reference(f"127.0.0.1:{registry.server_address[1]}/redirect/image:1")
        record = ImageStore(tmp_path / "images").pull(
            ref, RegistryClient(ref, Credentials(token="secret-token")))
    finally:
        registry.shutdown()
        storage.shutdown()
    assert record.layers
    assert storage_saw and all(header is None for header in storage_saw)


def _member(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = "",
            uid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.uid = kind, mode, link, uid
    return info


def test_directory_metadata_never_follows_a_later_symlink(tmp_path: Path) -> None:
    host_file = tmp_path / "host-file"
    host_file.write_text("x")
    host_file.chmod(0o644)
    host_dir = tmp_path / "host-dir"
    (host_dir / "v").mkdir(parents=True)
    before = [(p.stat().st_mode, p.stat().st_uid) for p in (host_file, host_dir / "v")]
    blob = tmp_path / "evil.tar"
    blob.write_bytes(_tar([
        _member("x", tarfile.DIRTYPE, 0o4777),
        _member("x", tarfile.SYMTYPE, 0o777, str(host_file)),
        _member("a", tarfile.DIRTYPE, 0o755),
        _member("a/v", tarfile.DIRTYPE, 0o777, uid=1234),
        _member("a", tarfile.SYMTYPE, 0o777, str(host_dir)),
    ]))
    extract_layer(blob, tmp_path / "out")
    after = [(p.stat().st_mode, p.stat().st_uid) for p in (host_file, host_dir / "v")]
    assert after == before
    assert os.readlink(tmp_path / "out" / "x") == str(host_file)


def test_bad_whiteouts_and_links_are_refused(tmp_path: Path) -> None:
    sibling = tmp_path / "sibling"
    sibling.mkdir()
    cases = {
        "dots": [_member(".wh...")],
        "nested": [_member("d", tarfile.DIRTYPE), _member("d/.wh...")],
        "link-to-root": [_member("l", tarfile.LNKTYPE, link=".")],
        "link-to-dir": [_member("d", tarfile.DIRTYPE), _member("l", tarfile.LNKTYPE, link="d")],
    }
    for name, members in cases.items():
        blob = tmp_path / f"{name}.tar"
        blob.write_bytes(_tar(members, {m.name: b"" for m in members if m.isreg()}))
        with pytest.raises(LayerError):
            extract_layer(blob, tmp_path / "layers" / name)
        assert not (tmp_path / "layers" / name).exists()
    assert sibling.is_dir()


@pytest.mark.parametrize("digest", ["sha256:" + "../" * 7 + "Q" * 43, "sha256:" + "A" * 64,
                                    "md5:" + "a" * 64, "sha256:" + "a" * 63])
def test_digests_that_are_not_hex_are_refused(tmp_path: Path, digest: str) -> None:
    store = ImageStore(tmp_path / "images")
    with pytest.raises(NovaError, match="invalid or unsupported digest"):
        store.blob_path(digest)


def test_oci_import_writes_nothing_outside_the_store(tmp_path: Path) -> None:
    outside = tmp_path / "ABS_WRITTEN"
    archive = tmp_path / "evil.oci.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in (("oci-layout", b"{}"), (str(outside), b"pwned"),
                           ("../escape", b"x"), ("index.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    store = ImageStore(tmp_path / "images")
    with pytest.raises(NovaError, match="is not a usable OCI archive"):
        store.import_archive(archive, "evil:1")
    assert not outside.exists() and not (tmp_path / "escape").exists()
    assert store.images() == []


def test_zstd_layers_are_pulled_and_extracted(tmp_path: Path, registry) -> None:
    """A tar+zstd layer (made with the real zstd tool) pulls and unpacks like a gzip one."""
    import gzip
    import subprocess

    from nova_capsule.testing import push_image

    plain = gzip.decompress(busybox_layer())
    layer = subprocess.run(["zstd", "-q", "-c"], input=plain, capture_output=True,
                           check=True).stdout
    push_image(registry.address, "test/zstd", "1", [layer], image_config(["/bin/sh"], layers=[layer]))
    store = ImageStore(tmp_path / "images")
    ref = parse_reference(f"{registry.address}/test/zstd:1")
    record = store.pull(ref, RegistryClient(ref), lambda *_: None)
    extracted = store.layer_path(record.layers[0])
    assert (extracted / "bin" / "busybox").stat().st_size == Path("/bin/busybox").stat().st_size
    assert [p.name for p in extracted.parent.iterdir() if p.name.endswith(".tar")] == []
    broken = tmp_path / "broken.zst"
    broken.write_bytes(layer[:200])
    with pytest.raises(LayerError, match="zstd could not decompress"):
        extract_layer(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tar").exists()


def test_plain_http_only_for_loopback_and_listed_registries(tmp_path: Path) -> None:
    """Registries on loopback addresses, and those listed in insecure_registries, are
    spoken to over HTTP (as docker and podman do); every other one over HTTPS."""
    from nova_capsule.config import load_settings
    from nova_capsule.reference import parse_reference
    from nova_capsule.registry import RegistryClient

    (tmp_path / "config.toml").write_text(
        '[images]\ndefault_registry = "registry.example:5000"\n'
        'insecure_registries = ["198.18.90.1:5000"]\n')
    settings = load_settings(tmp_path)
    assert settings.insecure_registries == ("198.18.90.1:5000",)

    def scheme(reference: str) -> str:
        ref = parse_reference(reference, settings.default_registry)
        return RegistryClient(ref, None, settings.insecure_registries).base.split(":", 1)[0]

    assert scheme("198.18.90.1:5000/app:1") == "http"
    assert scheme("198.18.90.1:5001/app:1") == "https"  # another port is another registry
    assert scheme("app:1") == "https"  # the default registry, not listed
    for loopback in ("127.0.0.1:5000", "127.0.0.2:5000", "localhost:5000", "[::1]:5000"):
        assert scheme(f"{loopback}/app:1") == "http", loopback
    (tmp_path / "config.toml").write_text('[images]\ninsecure_registries = "198.18.90.1:5000"\n')
    with pytest.raises(NovaError, match="insecure_registries a list"):
        load_settings(tmp_path)


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for an htpasswd file, from the system's libcrypt (docker-registry accepts
    only bcrypt)."""
    import ctypes

    libcrypt = ctypes.CDLL("libcrypt.so.1")
    libcrypt.crypt.restype = ctypes.c_char_p
    alphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    salt = "".join(alphabet[byte % 64] for byte in os.urandom(21)) + "u"  # 22 characters, 128 bits
    hashed = libcrypt.crypt(password.encode(), f"$2b$05${salt}".encode())
    assert hashed and hashed.startswith(b"$2b$05$"), hashed
    return hashed.decode()


def test_basic_auth_against_the_real_registry(registry, tmp_path: Path) -> None:  # noqa: ANN001
    """Debian's docker-registry with htpasswd auth, serving the session registry's storage:
    without credentials and with a wrong password a clear error and nothing stored; with the
    right ones the image."""
    from nova_capsule.registry import Credentials
    from nova_capsule.testing import LocalRegistry

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"me:{bcrypt_hash('pw')}\n")
    folder = tmp_path / "guarded"
    folder.mkdir()
    (folder / "data").symlink_to(registry.folder / "data")
    guarded = LocalRegistry(folder, htpasswd=htpasswd).start()
    store = ImageStore(tmp_path / "images")
    try:
        ref = parse_reference(f"{guarded.address}/test/busybox:1")
        with pytest.raises(NovaError, match="needs a username and password"):
            store.pull(ref, RegistryClient(ref))
        with pytest.raises(NovaError, match="401") as wrong:
            store.pull(ref, RegistryClient(ref, Credentials("me", "not-pw")))
        assert "not-pw" not in str(wrong.value)
        assert store.images() == []
        record = store.pull(ref, RegistryClient(ref, Credentials("me", "pw")))
    finally:
        guarded.stop()
    assert record.layers and store.layer_path(record.layers[0]).is_dir()
