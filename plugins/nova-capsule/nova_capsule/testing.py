"""Helpers for tests and benchmarks: a local registry and a busybox image.

* :class:`LocalRegistry` starts Debian's ``docker-registry`` (the CNCF
  distribution registry) on 127.0.0.1 with its own config and storage in a
  temporary folder, and stops it.
* :func:`busybox_layer` builds a small rootfs layer from the host's
  ``busybox-static`` binary; :func:`push_image` uploads layers and a config to a
  registry over the distribution API (what ``docker push`` does).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

from nova_capsule.layers import ZSTD_MAGIC

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "true", "false", "echo", "cat", "ls", "sleep", "id", "ps", "hostname", "touch",
           "mkdir", "rm", "env", "grep", "head", "wc", "kill", "chown", "stat", "dd", "mount",
           "nc", "ping", "ip", "seq", "date", "printf", "test", "pwd", "uname", "whoami",
           "yes", "tail", "cut", "tr", "sort", "readlink", "ln", "cp", "mv", "chmod", "df",
           "httpd", "wget", "nslookup")


def capsule_leftovers(nova_home: Path) -> list[str]:
    """Mounts, conmon and runtime processes, and capsule cgroups that belong to
    ``nova_home``: after a test (or a failed command) this must be empty."""

    from nova_capsule.capsules import capsule_id
    from nova_capsule.cgroups import cgroup_dirs
    from nova_capsule.runtime import run_root
    from nova_core.hostinfo.processes import find_processes

    found = []
    markers = (str(nova_home.resolve()), str(run_root(nova_home)))  # root folders and rootfs
    with open("/proc/self/mountinfo") as handle:
        found += [point for line in handle
                  if any(marker in (point := line.split()[4]) for marker in markers)]
    for marker in markers:  # unshare: the hybrid-cgroup wrapper before it becomes crun
        found += [f"{program} pid {pid}" for pid, program in
                  find_processes(("conmon", "crun", "runc", "crun-hybrid", "unshare"), marker)]
    capsules = nova_home / "drivers" / "capsule" / "capsules"
    known = set()
    if capsules.is_dir():
        for project in capsules.iterdir():
            for name in project.iterdir():
                known.add(capsule_id(project.name, name.name))
                found += [str(p) for p in cgroup_dirs(capsule_id(project.name, name.name))]
    sockets = run_root(nova_home) / "sock"  # conmon's, per capsule: gone with the capsule
    if sockets.is_dir():
        found += [str(p) for p in sockets.iterdir() if p.name not in known]
    return found


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRegistry:
    """A distribution registry on 127.0.0.1:PORT with storage under ``folder``."""

    def __init__(self, folder: Path, htpasswd: Path | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        auth = (f"auth:\n  htpasswd:\n    realm: nova-test\n    path: {htpasswd}\n"
                if htpasswd else "")
        self.config = folder / "config.yml"
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
            f"  delete:\n    enabled: true\nhttp:\n  addr: {self.address}\n{auth}")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalRegistry:
        """Start and wait until /v2/ answers."""
        binary = shutil.which("docker-registry") or shutil.which("registry")
        if binary is None:
            raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
        self.process = subprocess.Popen([binary, "serve", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1)  # noqa: S310
                return self
            except urllib.error.HTTPError:
                return self  # 401 with auth on: it is up
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("docker-registry did not start")

    def stop(self) -> None:
        """Stop the registry."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, mode: int = 0o644,
         kind: bytes = tarfile.REGTYPE, link: str = "", uid: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = uid
    info.mtime = 1_700_000_000
    info.linkname = link
    if data is not None:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def busybox_layer(extra: dict[str, bytes] | None = None) -> bytes:
    """A gzipped tar layer: busybox-static, its applets, /etc/passwd, empty /tmp, /proc..."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "var", "run"):
            _add(tar, folder, kind=tarfile.DIRTYPE, mode=0o1777 if folder == "tmp" else 0o755)
        _add(tar, "bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
        for applet in APPLETS:
            _add(tar, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
        _add(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
        _add(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        for name, data in (extra or {}).items():
            _add(tar, name, data)
    return gzip.compress(buffer.getvalue(), mtime=0)


def layer_tar(entries: list[tuple[str, bytes | None]]) -> bytes:
    """A gzipped layer from (name, data) pairs; data None makes a directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in entries:
            if data is None:
                _add(tar, name, kind=tarfile.DIRTYPE, mode=0o755)
            else:
                _add(tar, name, data)
    return gzip.compress(buffer.getvalue(), mtime=0)


def image_config(cmd: list[str], env: list[str] | None = None, layers: list[bytes] = (),
                 user: str = "") -> bytes:
    """An OCI image config for ``layers`` (their uncompressed digests as diff_ids)."""
    diff_ids = ["sha256:" + hashlib.sha256(_uncompressed(layer)).hexdigest() for layer in layers]
    return json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd, "Env": env or ["PATH=/bin"], "WorkingDir": "/",
                   **({"User": user} if user else {})},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()


def _uncompressed(layer: bytes) -> bytes:
    if layer.startswith(ZSTD_MAGIC):
        return subprocess.run(["zstd", "-q", "-d", "-c"], input=layer, capture_output=True,
                              check=True).stdout
    return gzip.decompress(layer)


def _request(method: str, url: str, data: bytes | None = None,
             headers: dict[str, str] | None = None):  # noqa: ANN202
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    return urllib.request.urlopen(request, timeout=30)  # noqa: S310


def push_blob(registry: str, repository: str, data: bytes) -> str:
    """Upload one blob (monolithic upload); return its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with _request("POST", f"http://{registry}/v2/{repository}/blobs/uploads/") as response:
        location = response.headers["Location"]
    if location.startswith("/"):
        location = f"http://{registry}{location}"
    separator = "&" if "?" in location else "?"
    with _request("PUT", f"{location}{separator}digest={digest}", data,
                  {"Content-Type": "application/octet-stream"}):
        pass
    return digest


def push_image(registry: str, repository: str, tag: str, layers: list[bytes], config: bytes,
               platform_index: bool = False, docker: bool = False) -> str:
    """Push an image (optionally behind an index with two platforms); return the tag's digest.

    ``docker``: Docker's schema-2 media types (manifest, manifest list, config, gzip
    layers), as images made by docker are pushed, instead of the OCI ones."""
    if docker:
        kinds = {"manifest": "application/vnd.docker.distribution.manifest.v2+json",
                 "index": "application/vnd.docker.distribution.manifest.list.v2+json",
                 "config": "application/vnd.docker.container.image.v1+json",
                 "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip"}
    else:
        kinds = {"manifest": "application/vnd.oci.image.manifest.v1+json",
                 "index": "application/vnd.oci.image.index.v1+json",
                 "config": "application/vnd.oci.image.config.v1+json",
                 "gzip": "application/vnd.oci.image.layer.v1.tar+gzip"}
    config_digest = push_blob(registry, repository, config)
    layer_entries = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd"
                      if layer.startswith(ZSTD_MAGIC) else kinds["gzip"],
                      "digest": push_blob(registry, repository, layer), "size": len(layer)}
                     for layer in layers]
    manifest_type = kinds["manifest"]
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": kinds["config"], "digest": config_digest, "size": len(config)},
        "layers": layer_entries}).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    target_tag = manifest_digest if platform_index else tag
    with _request("PUT", f"http://{registry}/v2/{repository}/manifests/{target_tag}", manifest,
                  {"Content-Type": manifest_type}):
        pass
    if not platform_index:
        return manifest_digest
    other_config = config.replace(b'"amd64"', b'"arm64"')
    other = json.dumps({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": kinds["config"],
                   "digest": push_blob(registry, repository, other_config),
                   "size": len(other_config)},
        "layers": layer_entries}).encode()
    other_digest = "sha256:" + hashlib.sha256(other).hexdigest()
    with _request("PUT", f"http://{registry}/v2/{repository}/manifests/{other_digest}", other,
                  {"Content-Type": manifest_type}):
        pass
    index = json.dumps({
        "schemaVersion": 2, "mediaType": kinds["index"],
        "manifests": [
            {"mediaType": manifest_type, "digest": other_digest, "size": len(other),
             "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": manifest_type, "digest": manifest_digest, "size": len(manifest),
             "platform": {"os": "linux", "architecture": "amd64"}},
        ]}).encode()
    with _request("PUT", f"http://{registry}/v2/{repository}/manifests/{tag}", index,
                  {"Content-Type": kinds["index"]}):
        pass
    return "sha256:" + hashlib.sha256(index).hexdigest()
