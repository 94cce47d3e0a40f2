"""The ``capsule`` compute driver: persistent system containers on crun/runc + conmon."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from nova_capsule import bundle as bundlemod
from nova_capsule import idmap
from nova_capsule.attached import CapsuleRun
from nova_capsule.capsules import (
    UID_COUNT,
    CapsuleFiles,
    CapsuleLock,
    CapsuleMeta,
    UidAllocator,
    capsule_files,
    capsule_id,
    exit_command,
    teardown,
)
from nova_capsule.cgroups import cgroup_path, prime_migration, read_host_facts, remove_cgroup
from nova_capsule.runtime import (
    Runtime,
    find_runtime,
    launch_attached,
    launch_with_conmon,
    run_root,
)

if TYPE_CHECKING:
    from nova_capsule.store import ImageConfig
from nova_core.drivers.base import DriverContext
from nova_core.drivers.compute import AttachedRun, ComputeDriver
from nova_core.drivers.models import (
    ContainerSpec,
    DriverOptions,
    InstanceSpec,
    Lifecycle,
    LogLine,
    LogRequest,
    RenderedDetail,
    ResourceKind,
    ResourceStatus,
    SnapshotInfo,
)
from nova_core.errors import NovaError
from nova_core.polling import Backoff

SPECIAL_NETWORKS = ("host", "none")  # as the NovaFile loader has them for containers


class CapsuleOptions(DriverOptions):
    """Keys the capsule driver adds to ``[container.NAME]``."""

    runtime: Literal["crun", "runc"] = "crun"


class CapsuleDriver(ComputeDriver):
    """Runs ``[container.NAME]`` tables as capsules."""

    instance_kinds: ClassVar[frozenset[ResourceKind]] = frozenset({ResourceKind.CONTAINER})
    options_model: ClassVar[type[DriverOptions]] = CapsuleOptions
    #: Fields that take effect at the next start (config.json is written at every start):
    #: a change restarts the capsule and keeps its writable layer and snapshots.
    updatable_fields: ClassVar[frozenset[str]] = frozenset({
        "init", "env", "command", "args", "workdir", "hostname", "user", "uid", "gid",
        "memory", "cpu", "pids", "stop_timeout", "healthcheck"})
    #: Of those, the ones only Nova reads (no restart needed).
    NOVA_ONLY_FIELDS: ClassVar[frozenset[str]] = frozenset({"stop_timeout", "healthcheck"})

    # -- helpers -----------------------------------------------------------------
    def files(self, spec: InstanceSpec) -> CapsuleFiles:
        """The capsule's folder (its paths, made once per driver: a command asks often)."""
        key = (spec.ref.project, spec.ref.name)
        if key not in self._files:
            self._files[key] = capsule_files(self.context.nova_home, *key)
        return self._files[key]

    def __init__(self, name: str, context: DriverContext) -> None:
        super().__init__(name, context)
        self._runtimes: dict[str, Runtime] = {}
        self._files: dict[tuple[str, str], CapsuleFiles] = {}

    @classmethod
    def warm_up(cls) -> None:
        """The host's cgroup layout, read once in the warm helper."""
        read_host_facts()

    def _runtime(self, spec: InstanceSpec) -> Runtime:
        """The runtime the capsule asks for, found once per driver (status is polled)."""
        preferred = getattr(spec.options, "runtime", "crun")
        if preferred not in self._runtimes:
            self._runtimes[preferred] = find_runtime(preferred, self.context.nova_home)
        return self._runtimes[preferred]

    def _uids(self) -> UidAllocator:
        return UidAllocator(self.context.driver_dir(self.name) / "uids.json")

    @staticmethod
    def _id(spec: InstanceSpec) -> str:
        return capsule_id(spec.ref.project, spec.ref.name)

    def _netns(self, spec: InstanceSpec) -> Path | None:
        """The pinned network namespace of a capsule on Nova networks (else None)."""
        from nova_core.hostinfo.netns import instance_netns

        if not [n for n in spec.networks if n not in SPECIAL_NETWORKS]:
            return None
        return instance_netns(self.context.nova_home, spec.ref.project, spec.ref.kind.value,
                              spec.ref.name)

    def _pin(self, spec: InstanceSpec, files: CapsuleFiles, uid_base: int) -> None:
        """Pin the capsule's user namespace and the network namespace it owns (idempotent).

        Network drivers plug interfaces into that namespace (``nova_core.hostinfo.netns``
        names it); the capsule joins both, so its root administers its own network.
        """
        netns = self._netns(spec)
        if netns is None or (idmap.is_pinned(files.userns) and idmap.is_pinned(netns)):
            return
        self._unpin(spec, files)
        files.run_dir.mkdir(parents=True, exist_ok=True)
        idmap.pin_namespaces(uid_base, UID_COUNT, files.userns, netns)

    def _unpin(self, spec: InstanceSpec, files: CapsuleFiles) -> None:
        netns = self._netns(spec)
        idmap.unpin(files.userns)
        if netns is not None:
            idmap.unpin(netns)

    def _image(self, spec: ContainerSpec, pull: bool):  # noqa: ANN202
        from nova_capsule.images import find_local
        from nova_capsule.images import pull as pull_image
        from nova_capsule.registry import Credentials

        if spec.build and not spec.image:
            raise NovaError(f"{spec.ref.key}: building images (build = ...) is not supported yet",
                            hint="build it elsewhere and nova image import it, then use capsule =")
        if not spec.image:
            raise NovaError(f"{spec.ref.key} needs an image", hint='add capsule = "busybox:latest"')
        record = find_local(self.context.nova_home, spec.image)
        if record is None and pull:
            auth = spec.registry_auth
            credentials = Credentials(auth.get("username"), auth.get("password"), auth.get("token"))
            record = pull_image(self.context.nova_home, spec.image, credentials)
        return record

    # -- contract ----------------------------------------------------------------
    def render(self, spec: InstanceSpec) -> list[RenderedDetail]:
        """The OCI config it would write (image defaults shown once the image is local)."""
        assert isinstance(spec, ContainerSpec)
        record = self._image(spec, pull=False) if spec.image else None
        argv, env, cwd = self._process(spec, self._image_config(record))
        config = bundlemod.oci_config(
            spec, rootfs="<capsule>/rootfs", argv=argv or ["<image default>"], env=env, cwd=cwd,
            uid=spec.uid or 0, gid=spec.gid or 0, uid_base=0, uid_count=UID_COUNT,
            cgroups_path=cgroup_path(self._id(spec)), mounts=self._mounts(spec),
            netns=None, host_network="host" in spec.networks,
            hostname=spec.hostname or spec.ref.name)
        config["linux"].pop("seccomp")
        config["linux"]["uidMappings"] = config["linux"]["gidMappings"] = "<allocated at create>"
        detail = [RenderedDetail(title="OCI runtime config",
                                 body=json.dumps(config, indent=1), format="json")]
        if "host" in spec.networks:
            detail.insert(0, RenderedDetail(title="warning", body="network = \"host\": this "
                                            "capsule shares the host's network; it is not "
                                            "isolated"))
        if record is None and spec.image:
            detail.insert(0, RenderedDetail(title="image", body=f"{spec.image} will be pulled"))
        return detail

    def _image_config(self, record) -> ImageConfig | None:  # noqa: ANN001
        from nova_capsule.images import image_store

        return image_store(self.context.nova_home).config(record) if record is not None else None

    @staticmethod
    def _process(spec: ContainerSpec,
                 image: ImageConfig | None) -> tuple[list[str], dict[str, str], str]:
        env = {"PATH": bundlemod.DEFAULT_PATH.split("=", 1)[1]}
        entrypoint: list[str] = []
        cmd: list[str] = []
        cwd = "/"
        if image is not None:
            env.update(image.env)
            entrypoint, cmd, cwd = image.entrypoint, image.cmd, image.workdir
        env.update(spec.env)
        argv = entrypoint + list(spec.command or cmd) + list(spec.args or [])
        return argv, env, spec.workdir or cwd

    @staticmethod
    def _mounts(spec: ContainerSpec, binds_dir: Path | None = None) -> list[dict[str, object]]:
        mounts = []
        for index, mount in enumerate(spec.volumes):
            source = str(binds_dir / str(index)) if binds_dir else (mount.host_path or mount.source)
            mounts.append({"destination": mount.target, "type": "bind", "source": source,
                           "options": ["rbind", "nosuid", "nodev",
                                       "ro" if mount.read_only else "rw"]})
        return mounts

    def create(self, spec: InstanceSpec) -> ResourceStatus:
        """Fetch the image, allocate the id range, make the writable layer and the bundle."""
        assert isinstance(spec, ContainerSpec)
        files = self.files(spec)
        if files.exists():
            return self.status(spec)
        prime_migration()  # the start follows: its cgroup move then waits less
        from nova_capsule.devices import device_edits

        device_edits(spec.devices, spec.gpu)  # every node exists (checked again at start)
        if spec.init:
            bundlemod.init_program()  # the host has one (found again at start)
        binds = []
        for mount in spec.volumes:
            source = Path(mount.host_path or mount.source)
            if not source.exists():
                raise NovaError(f"{spec.ref.key}: the mount source {source} does not exist",
                                hint="create it, or fix the path in volumes")
            binds.append({"source": str(source), "target": mount.target,
                          "read_only": mount.read_only, "type": mount.type})
        for limit, value in (("memory", spec.memory), ("pids", spec.pids)):
            if value is not None and value <= 0:
                raise NovaError(f"{spec.ref.key}: {limit} must be positive")
        if spec.memory is not None and spec.memory < 4 * 2**20:
            raise NovaError(f"{spec.ref.key}: memory {spec.memory} bytes is too small for a capsule",
                            hint="give at least 4Mi")
        runtime = self._runtime(spec)  # fail early if none is installed
        record = self._image(spec, pull=True)
        assert record is not None
        uids = self._uids()
        base = uids.allocate(self._id(spec))
        try:
            files.root.mkdir(parents=True, exist_ok=True)
            if spec.storage_size:
                files.make_sized_layer(spec.storage_size, base)
            with files.writable_layer():
                for folder in (files.upper, files.work):
                    folder.mkdir(exist_ok=True)
                    os.chown(folder, base, base)
            for bind in binds:  # a named volume still owned by root is handed to this capsule
                source = Path(str(bind["source"]))
                if bind["type"] == "volume" and source.is_dir() and source.stat().st_uid == 0:
                    os.chown(source, base, base)
            files.write(CapsuleMeta(id=self._id(spec), image=record.name, layers=record.layers,
                                    uid_base=base, restart=spec.restart, runtime=runtime.name,
                                    binds=binds, config_digest=record.config_digest))
            self._pin(spec, files, base)
        except BaseException:
            self._unpin(spec, files)
            files.remove()
            uids.release(self._id(spec))
            raise
        return ResourceStatus(ref=spec.ref, state=Lifecycle.CREATED,
                              data={"uid_base": str(base), "image": record.name})

    def _write_config(self, spec: ContainerSpec, files: CapsuleFiles, meta: CapsuleMeta) -> None:
        from nova_capsule.images import find_local, image_store

        store = image_store(self.context.nova_home)
        if meta.config_digest and store.blob_path(meta.config_digest).exists():
            image = store.config_from_digest(meta.config_digest)  # the image it was made from
        else:
            image = self._image_config(find_local(self.context.nova_home, meta.image))
        argv, env, cwd = self._process(spec, image)
        if not argv:
            raise NovaError(f"{spec.ref.key}: the image has no default command",
                            hint='set command = "..."')
        uid, gid = self._user(spec, files, image)
        netns = self._netns(spec)
        mounts = self._mounts(spec, files.binds) + self._network_files(spec, files)
        config = bundlemod.oci_config(
            spec, rootfs=str(files.rootfs), argv=argv, env=env, cwd=cwd, uid=uid, gid=gid,
            uid_base=meta.uid_base, uid_count=UID_COUNT, cgroups_path=cgroup_path(meta.id),
            mounts=mounts, netns=str(netns) if netns else None,
            userns=str(files.userns) if netns else None,
            host_network="host" in spec.networks, hostname=spec.hostname or spec.ref.name)
        # compact: json's C encoder (indent= takes the pure-Python one, ~1.5 ms per start here)
        (files.root / "config.json").write_text(json.dumps(config))

    @staticmethod
    def _network_files(spec: ContainerSpec, files: CapsuleFiles) -> list[dict[str, object]]:
        """/etc/hosts and /etc/resolv.conf for a capsule on networks (read-only binds)."""
        attached = [a for a in spec.attachments if a.endpoint == "netns"]
        if not attached:
            return []
        hostname = spec.hostname or spec.ref.name
        hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        for attachment in attached:
            for key in ("ip", "ip6"):
                if attachment.details.get(key):
                    hosts.append(f"{attachment.details[key]} {hostname}")
        texts = {"hosts": "\n".join(hosts) + "\n"}
        servers = [a.details["dns"] for a in attached if a.details.get("dns")]
        if not servers:  # no Nova DNS: the host's resolvers, except loopback ones (as docker)
            servers = [line.split()[1] for line in _host_resolv_conf().splitlines()
                       if line.startswith("nameserver") and len(line.split()) > 1
                       and not line.split()[1].startswith(("127.", "::1"))]
        if servers:
            domains = sorted({a.details["domain"] for a in attached
                              if a.details.get("dns") and a.details.get("domain")})
            texts["resolv.conf"] = ("".join(f"nameserver {s}\n" for s in dict.fromkeys(servers))
                                    + (f"search {' '.join(domains)}\n" if domains else ""))
        mounts: list[dict[str, object]] = []
        for name, text in texts.items():
            path = files.run_dir / name
            path.write_text(text)
            mounts.append({"destination": f"/etc/{name}", "type": "bind", "source": str(path),
                           "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})
        return mounts

    @staticmethod
    def _user(spec: ContainerSpec, files: CapsuleFiles,
              image: ImageConfig | None = None) -> tuple[int, int]:
        """(uid, gid) inside: ``uid``/``gid``, else ``user``, else the image's ``User``
        (each ``NAME`` or ``NAME:GROUP``, by number or looked up in the image's files)."""
        if spec.uid is not None or spec.gid is not None:
            return spec.uid or 0, spec.gid if spec.gid is not None else (spec.uid or 0)
        user = spec.user or (image.user if image else "")
        if not user:
            return 0, 0
        whose = "user" if spec.user else "the image's user"
        name, _, group = user.partition(":")
        if name.isdigit():
            uid, gid = int(name), int(name)
        else:
            uid, gid = _lookup(files, "etc/passwd", name, spec.ref.key, whose)
        if group.isdigit():
            gid = int(group)
        elif group:
            gid = _lookup(files, "etc/group", group, spec.ref.key, whose)[0]
        return uid, gid

    def _layer_dirs(self, meta: CapsuleMeta) -> list[Path]:
        from nova_capsule.images import image_store

        store = image_store(self.context.nova_home)
        dirs = [store.layer_path(digest) for digest in meta.layers]
        missing = [str(d) for d in dirs if not d.is_dir()]
        if missing:
            raise NovaError(f"image {meta.image} lost layers ({', '.join(missing)})",
                            hint=f"nova image pull {meta.image}")
        return dirs

    def start(self, spec: InstanceSpec) -> ResourceStatus:
        """Mount the root filesystem and start the capsule under a new conmon."""
        with CapsuleLock(self.context.nova_home, self._id(spec)):
            prepared = self._prepare_run(spec)
            if prepared is None:
                return self.status(spec)
            files, meta, runtime, run_id = prepared
            try:
                launch_with_conmon(runtime, meta.id, files.root, files.log, files.exits,
                                   run_root(self.context.nova_home) / "sock",
                                   exit_command=exit_command(self.context.nova_home,
                                                              spec.ref.project, spec.ref.name,
                                                              run_id))
                runtime.call("start", meta.id)
            except BaseException:
                self._abort_run(files, meta, runtime)
                raise
            return self.status(spec)

    def start_attached(self, spec: InstanceSpec) -> AttachedRun | None:
        """Run the capsule once as a child of this process, without conmon: the runtime's
        ``run``, its output relayed (and logged as conmon logs it), its exit code recorded
        and the capsule cleaned up by :meth:`CapsuleRun.wait`. Capsules with a restart
        policy keep their monitor (None: the caller starts them the usual way)."""
        assert isinstance(spec, ContainerSpec)
        if spec.restart != "no":
            return None
        with CapsuleLock(self.context.nova_home, self._id(spec)):
            prepared = self._prepare_run(spec, throwaway=True)
            if prepared is None:
                return None
            files, meta, runtime, run_id = prepared
            try:
                process = launch_attached(runtime, meta.id, files.root)
            except BaseException:
                self._abort_run(files, meta, runtime)
                raise
            status = ResourceStatus(ref=spec.ref, state=Lifecycle.RUNNING,
                                    data={"uid_base": str(meta.uid_base), "image": meta.image,
                                          "pid": (files.root / "pidfile").read_text().strip()})
            return CapsuleRun(self.context.nova_home, files, meta, runtime, run_id, process,
                              status)

    def _prepare_run(self, spec: InstanceSpec, throwaway: bool = False,
                     ) -> tuple[CapsuleFiles, CapsuleMeta, Runtime, str] | None:
        """Everything a start does before launching (the caller holds the capsule's lock):
        the root filesystem mounted (volatile for a ``throwaway`` run), namespaces pinned,
        the bundle's config written and a new run id recorded. None if the capsule is
        already running."""
        assert isinstance(spec, ContainerSpec)
        files = self.files(spec)
        if not files.exists():
            raise NovaError(f"{spec.ref.key} does not exist", hint="nova up creates it")
        prime_migration()
        meta = files.read()
        runtime = self._runtime(spec)
        state = runtime.state(meta.id)
        if state and state.get("status") == "running":
            return None
        if state is not None:
            runtime.remove(meta.id)
        try:
            files.mount(meta, self._layer_dirs(meta), volatile=throwaway)
            self._pin(spec, files, meta.uid_base)  # again after a reboot cleared /run
            self._write_config(spec, files, meta)
            files.stopping.unlink(missing_ok=True)
            run_id = os.urandom(8).hex()
            files.run_id.write_text(run_id)
            (files.root / "conmon.pid").unlink(missing_ok=True)  # not an earlier run's
        except BaseException:
            self._abort_run(files, meta, runtime)
            raise
        return files, meta, runtime, run_id

    def _abort_run(self, files: CapsuleFiles, meta: CapsuleMeta, runtime: Runtime) -> None:
        """Undo a start that failed part way: nothing of the run may stay behind."""
        files.run_id.unlink(missing_ok=True)  # any exit hook of this run is now stale
        self._kill_monitor(files)
        self._teardown(runtime, meta, files)

    def exec_argv(self, spec: InstanceSpec, command: list[str], tty: bool = False) -> list[str]:
        """The runtime command line that runs ``command`` in the running capsule."""
        files = self.files(spec)
        meta = files.read() if files.exists() else None
        runtime = self._runtime(spec)
        if meta is None or not self._running(runtime, meta.id):
            raise NovaError(f"{spec.ref.key} is not running", hint=f"nova run container {spec.ref.name}")
        process = json.loads((files.root / "config.json").read_text())["process"]
        user = process.get("user", {})
        return runtime.argv("exec", "--no-new-privs", *(["--tty"] if tty else []),
                            f"--cwd={process.get('cwd', '/')}",
                            f"--user={user.get('uid', 0)}:{user.get('gid', 0)}", meta.id,
                            *command)

    def check_health(self, spec: InstanceSpec) -> bool | None:
        """Run the healthcheck command inside the capsule once (its timeout applies)."""
        assert isinstance(spec, ContainerSpec)
        if spec.healthcheck is None:
            return None
        try:
            argv = self.exec_argv(spec, spec.healthcheck.command)
        except NovaError:
            return False
        try:
            done = subprocess.run(argv, capture_output=True, timeout=spec.healthcheck.timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    @staticmethod
    def _kill_monitor(files: CapsuleFiles, timeout: float = 2.0) -> None:
        """End this run's conmon (after a failed start nothing may stay behind)."""
        import signal

        pid = files.monitor_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            return
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _teardown(self, runtime: Runtime, meta: CapsuleMeta, files: CapsuleFiles) -> None:
        """Remove the runtime's container, the mounts and the cgroup."""
        teardown(runtime, meta.id, files)

    def update(self, spec: InstanceSpec, changed: frozenset[str]) -> ResourceStatus:
        """Restart with the new spec, unless only fields Nova itself reads changed."""
        assert isinstance(spec, ContainerSpec)
        if changed <= self.NOVA_ONLY_FIELDS:
            status = self.status(spec)  # asks the runtime: only when it can spare a restart
            if status.state == Lifecycle.RUNNING:
                return status
        if spec.init:
            bundlemod.init_program()  # before the stop: a missing one leaves it running
        return super().update(spec, changed)

    def stop(self, spec: InstanceSpec, timeout: float) -> ResourceStatus:
        """SIGTERM, then SIGKILL after ``timeout``; then unmount (the upper layer stays)."""
        with CapsuleLock(self.context.nova_home, self._id(spec)):
            if not self.files(spec).exists():
                return ResourceStatus(ref=spec.ref, state=Lifecycle.MISSING)
            self._halt(spec, timeout)
            return self.status(spec)

    def _halt(self, spec: InstanceSpec, timeout: float, mark: bool = True) -> None:
        """What :meth:`stop` does, without the status it returns (the caller holds the lock).

        It leaves a "stopping" file that tells the run's exit hook (or attached wait) that
        Nova stopped it, so that it neither restarts nor tears down the capsule once it gets
        the lock. :meth:`delete`, which removes the files before it lets go of the lock,
        passes ``mark=False``: then only a capsule with a restart policy gets the file (in
        case the removal fails).
        """
        files = self.files(spec)
        meta = files.read()
        runtime = self._runtime(spec)
        if mark or meta.restart != "no":
            files.stopping.write_text(str(time.time()))
        if files.exit_code(meta.id) is None and self._running(runtime, meta.id):
            if (runtime.state(meta.id) or {}).get("status") == "paused":
                runtime.call("resume", meta.id, check=False)  # a frozen task gets no signal
            runtime.call("kill", meta.id, "TERM", check=False)
            if not self._wait_stopped(runtime, meta.id, timeout):
                runtime.call("kill", meta.id, "KILL", check=False)
                self._wait_stopped(runtime, meta.id, 10)
        self._teardown(runtime, meta, files)

    def pause(self, spec: InstanceSpec) -> ResourceStatus:
        """Freeze every process of the capsule (the runtime's cgroup freezer)."""
        return self._freezer(spec, "pause", "running")

    def resume(self, spec: InstanceSpec) -> ResourceStatus:
        """Thaw a paused capsule."""
        return self._freezer(spec, "resume", "paused")

    def _existing(self, spec: InstanceSpec) -> tuple[CapsuleFiles, CapsuleMeta]:
        """The capsule's files and metadata, or a clear error if it was never created."""
        files = self.files(spec)
        if not files.exists():
            raise NovaError(f"{spec.ref.key} does not exist")
        return files, files.read()

    def _freezer(self, spec: InstanceSpec, command: str, needs: str) -> ResourceStatus:
        with CapsuleLock(self.context.nova_home, self._id(spec)):
            files, meta = self._existing(spec)
            runtime = self._runtime(spec)
            status = (runtime.state(meta.id) or {}).get("status")
            if status != needs:
                raise NovaError(f"{spec.ref.key} is {status or 'stopped'}, not {needs}",
                                hint=f"nova {'resume' if status == 'paused' else 'run'} "
                                     f"container {spec.ref.name}")
            runtime.call(command, meta.id)
            return self.status(spec)

    @staticmethod
    def _running(runtime: Runtime, capsule: str) -> bool:
        state = runtime.state(capsule)
        return bool(state and state.get("status") in ("running", "paused", "created"))

    def _wait_stopped(self, runtime: Runtime, capsule: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = runtime.state(capsule)
            if not state or state.get("status") == "stopped":
                return True
            time.sleep(0.02)
        return False

    def delete(self, spec: InstanceSpec) -> None:
        """Stop the capsule and remove its files, cgroup and id range (fine if missing)."""
        with CapsuleLock(self.context.nova_home, self._id(spec)):
            files = self.files(spec)
            capsule = self._id(spec)
            if files.exists():  # the stop tears down the runtime's state, mounts and cgroup
                self._halt(spec, spec.stop_timeout if spec.stop_timeout < 5 else 5, mark=False)
            else:
                self._runtime(spec).remove(capsule)
                remove_cgroup(capsule)
            self._unpin(spec, files)
            files.remove()
            self._uids().release(capsule)
            # conmon's link to the bundle, for a short attach-socket path: it leaves it
            try:
                (run_root(self.context.nova_home) / "sock" / capsule).unlink(missing_ok=True)
            except IsADirectoryError:  # not a conmon that links
                pass

    def status(self, spec: InstanceSpec) -> ResourceStatus:
        """running / paused / stopped (with the exit code) / created / missing."""
        files = self.files(spec)
        if not files.exists():
            return ResourceStatus(ref=spec.ref, state=Lifecycle.MISSING)
        meta = files.read()
        data = {"uid_base": str(meta.uid_base), "image": meta.image}
        code = files.exit_code(meta.id)  # conmon writes it once the main process is gone
        state = self._runtime(spec).state(meta.id) if code is None else None
        status = state.get("status") if state else None
        if status == "running":
            data["pid"] = str(state.get("pid"))
            return ResourceStatus(ref=spec.ref, state=Lifecycle.RUNNING, data=data)
        if status == "paused":
            return ResourceStatus(ref=spec.ref, state=Lifecycle.PAUSED, data=data)
        if code is None and not files.log.exists():
            return ResourceStatus(ref=spec.ref, state=Lifecycle.CREATED, data=data)
        if code is None and status == "stopped":  # just exited: conmon is about to record it
            code = files.await_exit_code(meta.id)
        detail = f"exited with code {code}" if code is not None else ""
        return ResourceStatus(ref=spec.ref, state=Lifecycle.STOPPED, detail=detail, data=data,
                              exit_code=code)

    def snapshot(self, spec: InstanceSpec, name: str) -> SnapshotInfo:
        """Copy the writable layer (reflink where possible) while the capsule is frozen."""
        import shutil

        with CapsuleLock(self.context.nova_home, self._id(spec)):
            files, meta = self._existing(spec)
            runtime = self._runtime(spec)
            target = files.snapshots / name
            if target.exists():
                raise NovaError(f"{spec.ref.key} already has a snapshot named {name}")
            files.snapshots.mkdir(exist_ok=True)
            frozen = (runtime.state(meta.id) or {}).get("status") == "running"
            if frozen:
                runtime.call("pause", meta.id)
            try:
                with files.writable_layer() as upper:
                    _copy_tree(upper, target)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
            finally:
                if frozen:
                    runtime.call("resume", meta.id, check=False)
            size = sum(p.stat().st_size for p in target.rglob("*")
                       if p.is_file() and not p.is_symlink())
            return SnapshotInfo(ref=spec.ref, name=name, created_at=datetime.now(UTC), size=size)

    def restore_snapshot(self, spec: InstanceSpec, name: str) -> ResourceStatus:
        """Replace the writable layer with a copy of the snapshot; restart if it was running."""
        with CapsuleLock(self.context.nova_home, self._id(spec)):
            import shutil

            files = self.files(spec)
            saved = files.snapshots / name
            if not files.exists() or not saved.is_dir():
                raise NovaError(f"{spec.ref.key} has no snapshot {name}")
            was_running = self.status(spec).state in (Lifecycle.RUNNING, Lifecycle.PAUSED)
            if self._running(self._runtime(spec), files.read().id) or was_running:
                self.stop(spec, spec.stop_timeout)  # never swap layers under a live overlay
            meta = files.read()
            try:
                with files.writable_layer():
                    fresh = files.layer_home / "upper.restore"  # same filesystem: renames work
                    shutil.rmtree(fresh, ignore_errors=True)
                    try:
                        _copy_tree(saved, fresh)
                    except BaseException:
                        shutil.rmtree(fresh, ignore_errors=True)
                        raise
                    old = files.layer_home / "upper.old"
                    os.rename(files.upper, old)
                    os.rename(fresh, files.upper)
                    shutil.rmtree(old, ignore_errors=True)
                    shutil.rmtree(files.work, ignore_errors=True)  # overlay needs it empty
                    files.work.mkdir()
                    os.chown(files.work, meta.uid_base, meta.uid_base)
            finally:
                if was_running:  # restored or not (a full sized layer, say), it runs again
                    self.start(spec)
            return self.status(spec)

    def delete_snapshot(self, spec: InstanceSpec, name: str) -> None:
        """Remove the snapshot's copy."""
        import shutil

        shutil.rmtree(self.files(spec).snapshots / name, ignore_errors=True)

    def logs(self, spec: InstanceSpec, request: LogRequest) -> Iterator[LogLine]:
        """The conmon log: stdout and stderr with their timestamps, also after exit."""
        files = self.files(spec)
        if not files.log.exists():
            return
        with open(files.log, errors="replace") as handle:
            lines = handle.read().splitlines()
            if request.tail is not None:
                lines = lines[-request.tail:] if request.tail else []
            for line in lines:
                yield _parse_log_line(line)
            backoff = Backoff()
            while request.follow:
                line = handle.readline()
                if line:
                    yield _parse_log_line(line.rstrip("\n"))
                    backoff.reset()
                    continue
                if self.status(spec).state is not Lifecycle.RUNNING:
                    # conmon writes the last lines before the exit code: read them too
                    for rest in handle.read().splitlines():
                        yield _parse_log_line(rest)
                    break
                backoff.wait()


def _host_resolv_conf() -> str:
    try:
        return Path("/etc/resolv.conf").read_text(errors="replace")
    except OSError:
        return ""


def _parse_log_line(line: str) -> LogLine:
    """``2026-11-22T16:47:06.293229947+00:00 stdout F text`` -> LogLine."""
    parts = line.split(" ", 3)
    if len(parts) < 3 or parts[1] not in ("stdout", "stderr"):
        return LogLine(text=line)
    stamp, stream = parts[0], parts[1]
    text = parts[3] if len(parts) > 3 else ""
    try:
        head, _, rest = stamp.partition(".")
        frac = rest[:6]
        zone = rest[rest.find("+"):] if "+" in rest else "+00:00"
        timestamp = datetime.fromisoformat(f"{head}.{frac}{zone}")
    except ValueError:
        timestamp = None
    return LogLine(text=text, stream=stream, timestamp=timestamp)  # type: ignore[arg-type]


def _lookup(files: CapsuleFiles, table: str, name: str, key: str, whose: str) -> tuple[int, int]:
    """(third, fourth) numeric field of ``name``'s line in the image's /etc/passwd or
    /etc/group (uid and gid, or gid and nothing): a clear error when missing or bad."""
    passwd = table == "etc/passwd"
    for line in _read_in_root(files.rootfs, table, key).splitlines():
        fields = line.split(":")
        if fields[0] == name:
            numbers = fields[2:4] if passwd else fields[2:3] * 2
            if len(numbers) != 2 or not all(number.isdigit() for number in numbers):
                raise NovaError(f"{key}: the image's /{table} has a bad line for {name!r}",
                                hint="give uid and gid instead of user")
            return int(numbers[0]), int(numbers[1])
    raise NovaError(f"{key}: {whose} {name!r} is not in the image's /{table}",
                    hint="give uid and gid instead of user")


def _read_in_root(root: Path, relative: str, what: str, limit: int = 1 << 20) -> str:
    """Read a regular file inside ``root`` without following any symbolic link in its path."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    parts = relative.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        file_fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
    except OSError as error:
        raise NovaError(f"{what}: cannot read /{relative} in the capsule ({error.strerror}); "
                        "it must be a regular file, not a link",
                        hint="give uid and gid instead of user") from error
    finally:
        os.close(fd)
    try:
        import stat as stat_module

        if not stat_module.S_ISREG(os.fstat(file_fd).st_mode):
            raise NovaError(f"{what}: /{relative} in the capsule is not a regular file",
                            hint="give uid and gid instead of user")
        return os.read(file_fd, limit).decode(errors="replace")
    finally:
        os.close(file_fd)


def _copy_tree(source: Path, target: Path) -> None:
    """``cp -a --reflink=auto`` (blocks are shared where the filesystem can); errors are clear."""
    done = subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(target)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise NovaError(f"copying {source} failed: {done.stderr.strip() or done.returncode}",
                        hint="check free space in NOVA_HOME")
