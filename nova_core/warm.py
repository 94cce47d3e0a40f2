"""Warm start: a helper process that has Nova imported already and forks per command.

Starting Python and importing click, pydantic and the NovaFile models costs a
``nova`` command about 0.3 s, more than most commands' own work. So after a
command ran the usual way, ``nova`` leaves a *warm helper* behind: a process with
those modules imported that listens on a Unix socket and exits after
``NOVA_WARM_IDLE`` seconds (default 600) without work. The next command's
``nova`` process imports only this module, hands the helper its argv,
environment, working directory, umask and its stdin/stdout/stderr (file
descriptors over SCM_RIGHTS), and the helper forks a child that runs the command
exactly as ``nova`` would have, writing straight to the caller's terminal or
pipes. The caller forwards signals (Ctrl-C) to that child and exits with its
exit status.

The helper holds no state: state is in SQLite and files as always, and every
command works the same without it (``NOVA_WARM=0`` turns it off). A helper only
serves callers that would have run identically: same user and groups, Python,
how Python was started (the interpreter, its flags and ``PYTHON*`` variables),
namespaces, cgroup, capabilities, rlimits and umask; these make up its *key*,
and the socket's name is derived from it. Callers outside the host's network or
mount namespace (``ip netns exec``) never use one, so no helper keeps a namespace
alive. A helper whose modules changed on disk since it imported them refuses
work and exits. Interactive commands (``console``, ``exec``) always run in the
calling process, which owns the terminal.

This module is imported by every ``nova`` command before anything else: its
client part uses only built-in modules (``_socket``, ``_signal``).
"""

# no "from __future__ import annotations": the client imports only built-in modules (~0.2 ms)

import os
import sys

#: commands that need the calling process itself (its controlling terminal) or manage helpers
LOCAL_COMMANDS = frozenset({"console", "exec", "warm"})
IDLE_SECONDS = 600.0
_NAMESPACES = ("net", "mnt", "pid", "uts", "ipc", "user", "cgroup")


def enabled() -> bool:
    """False when ``NOVA_WARM=0`` (or ``no``/``false``/``off``)."""
    return os.environ.get("NOVA_WARM", "1").strip().lower() not in ("0", "no", "false", "off")


def eligible(args: list[str]) -> bool:
    """Whether a command may run in a warm helper (not interactive, not in another namespace)."""
    if not args or LOCAL_COMMANDS.intersection(args) or not enabled():
        return False
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            return False  # a closed stdio: nothing to hand over
    return not _elsewhere()


def _elsewhere() -> bool:
    """Whether this process runs in other network or mount namespaces than the host's
    (``ip netns exec``, ``unshare``): then a helper would keep those alive."""
    try:
        return any(os.stat(f"/proc/self/ns/{ns}").st_ino != os.stat(f"/proc/1/ns/{ns}").st_ino
                   for ns in ("net", "mnt"))
    except OSError:
        pass  # PID 1's namespaces are not ours to see: look for a named network namespace
    try:
        mine = os.stat("/proc/self/ns/net")
        names = os.listdir("/run/netns")
    except OSError:
        return False
    for name in names:
        try:
            named = os.stat(f"/run/netns/{name}")
        except OSError:
            continue
        if (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino):
            return True
    return False


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:
        return ""


def key() -> str:
    """Everything that makes two ``nova`` processes behave alike, as one text.

    The compiled client (``nova_core/warm_client.c``) computes the same text without
    Python, so the key holds only what a program can know before Python starts: the
    interpreter's path, how it was started (its command-line flags and first
    ``sys.path`` entry, the script's folder) and the ``PYTHON*`` variables and HOME,
    from which Python derives the rest of ``sys.path``. What changes on disk under
    ``sys.path`` (``pip install``) the helper notices itself (:class:`_Changes`)."""
    flags = sys.flags
    parts = [f"uid={os.getuid()} gid={os.getgid()} groups={sorted(os.getgroups())}",
             f"python={sys.executable}",
             f"path0={sys.path[0] if sys.path else ''}",
             f"flags=I{flags.isolated}E{flags.ignore_environment}S{flags.no_site}"
             f"s{flags.no_user_site}P{int(flags.safe_path)}",
             f"home={os.environ.get('HOME', '')}"]
    parts += sorted(f"env.{name}={value}" for name, value in os.environ.items()
                    if name.startswith("PYTHON"))
    for ns in _NAMESPACES:
        try:
            parts.append(f"ns.{ns}={os.stat(f'/proc/self/ns/{ns}').st_ino}")
        except OSError:
            parts.append(f"ns.{ns}=?")
    parts.append("cgroup=" + _read("/proc/self/cgroup").replace("\n", ";"))
    status = _read("/proc/self/status").splitlines()
    parts += [line.replace("\t", "") for line in status
              if line.startswith(("Cap", "NoNewPrivs", "Seccomp"))]
    parts.append("limits=" + " ".join(_read("/proc/self/limits").split()))
    umask = os.umask(0o022)
    os.umask(umask)
    parts.append(f"umask={umask:o}")
    return "\n".join(parts)


def print_key() -> bool:
    """With ``NOVA_WARM_PRINT_KEY`` set, write this caller's key to stdout (to compare it with
    the compiled client's) and say so."""
    if not os.environ.get("NOVA_WARM_PRINT_KEY"):
        return False
    sys.stdout.write(key() + "\n")
    return True


def folder() -> str:
    """Where helpers' sockets live: ``NOVA_WARM_DIR``, /run/nova-warm for root, else per user."""
    chosen = os.environ.get("NOVA_WARM_DIR")
    if chosen:
        return chosen
    if os.getuid() == 0:
        return "/run/nova-warm"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return f"{runtime}/nova-warm" if runtime else f"/tmp/nova-warm-{os.getuid()}"


def socket_path(text: str) -> str:
    """The socket of the helper for the key ``text``: a hash of it in the name (the key
    itself is checked by the helper). The key's bytes as one number modulo the prime
    2**61 - 1, computed by int's C code: importing zlib for a CRC took 0.5-0.8 ms here."""
    digest = int.from_bytes(text.encode(), "little") % ((1 << 61) - 1)
    return f"{folder()}/{digest:016x}.sock"


# ----------------------------------------------------------------------------- client

def _connect(path: str):  # -> _socket.socket | None
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def _encode(fields: list[str]) -> bytes:
    body = b"\0".join(os.fsencode(field) for field in fields)
    return len(body).to_bytes(8, "little") + body


class _Reply:
    """Lines the helper sends back: ``P<pid>``, ``X<status>``, ``R`` (refused), text."""

    def __init__(self, sock) -> None:  # noqa: ANN001 - a _socket.socket
        self.sock = sock
        self.buffer = b""

    def line(self) -> bytes | None:
        while b"\n" not in self.buffer:
            try:
                chunk = self.sock.recv(4096)
            except OSError:
                return None
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


def run(args: list[str], text: str) -> int | None:
    """Run ``nova ARGS`` in the warm helper of the key ``text``; its exit status, or None
    when no helper took it."""
    sock = _connect(socket_path(text))
    if sock is None:
        return None
    try:
        import _socket

        umask = os.umask(0o022)
        os.umask(umask)
        try:
            cwd = os.getcwd()
        except OSError:
            return None
        fields = [text, cwd, str(umask), str(len(args)), *args,
                  *(f"{name}={value}" for name, value in os.environ.items())]
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
        data = _encode(fields)
        try:
            sent = sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
            if sent < len(data):
                sock.sendall(data[sent:])
        except OSError:
            return None
        reply = _Reply(sock)
        first = reply.line()
        if first is None or not first.startswith(b"P"):
            return None  # refused (another key, or the helper's code changed): run here
        child = int(first[1:])
        forward = _forward_signals(child)
        try:
            last = reply.line()
        finally:
            forward()
        if last is None or not last.startswith(b"X"):
            sys.stderr.write("error: the warm helper ended without the command's exit status\n"
                             "  hint: run it again; NOVA_WARM=0 runs commands without the helper\n")
            return 1
        return int(last[1:])
    finally:
        sock.close()


def _forward_signals(child: int):  # -> Callable[[], None]
    """Pass Ctrl-C and friends on to the helper's child; returns the undo."""
    import _signal

    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(child, signum)
        except OSError:
            pass

    names = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")
    previous = {}
    for name in names:
        number = getattr(_signal, name)
        previous[number] = _signal.signal(number, forward)

    def undo() -> None:
        for number, handler in previous.items():
            _signal.signal(number, handler)

    return undo


def spawn(text: str) -> None:
    """Start a helper for the key ``text`` in the background, unless one is starting."""
    import time

    path = socket_path(text)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        marker = path + ".starting"
        try:
            if time.time() - os.stat(marker).st_mtime < 30:
                return  # another command is starting it
            os.unlink(marker)
        except FileNotFoundError:
            pass
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError:
        return
    import subprocess

    env = dict(os.environ, NOVA_WARM_SOCKET=path, NOVA_WARM_KEY=text,
               NOVA_WARM_SYSPATH=os.pathsep.join(sys.path))
    bootstrap = ("import os, sys; sys.path[:] = os.environ.pop('NOVA_WARM_SYSPATH').split(os.pathsep); "
                 "from nova_core.warm import serve; serve()")
    try:
        subprocess.Popen([sys.executable, "-P", "-c", bootstrap], env=env, start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, cwd="/")
    except OSError:
        try:
            os.unlink(marker)
        except OSError:
            pass


def control(command: str) -> str | None:
    """Ask this caller's helper for ``status`` or to ``stop``; its answer, or None if none runs."""
    sock = _connect(socket_path(key()))
    if sock is None:
        return None
    try:
        sock.sendall(_encode(["", command]))
        reply = _Reply(sock)
        lines = []
        while (line := reply.line()) is not None:
            lines.append(line.decode())
        return "\n".join(lines)
    finally:
        sock.close()


# ----------------------------------------------------------------------------- helper

#: modules to import before serving: what every command needs
PRELOAD = ("nova_core.cli.app", "nova_core.novafile.loader", "nova_core.engine.engine",
           "nova_core.drivers.compute", "nova_core.drivers.network", "nova_core.state.store",
           "nova_core.plugins")


def serve() -> None:
    """The helper's main loop (started by :func:`spawn`)."""
    import importlib

    path = os.environ.pop("NOVA_WARM_SOCKET")
    text = os.environ.pop("NOVA_WARM_KEY")
    idle = float(os.environ.get("NOVA_WARM_IDLE") or IDLE_SECONDS)
    try:
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a broken install: the child will say what
                pass
        _warm_up()
        _Helper(path, text, idle).loop()
    finally:
        try:
            os.unlink(path + ".starting")
        except OSError:
            pass


def _warm_up() -> None:
    """Do once here what every child would do again: scan entry points, build the plugin
    registry's hook manager and load the drivers children used, build models.

    Then freeze what the helper holds out of the garbage collector's reach: a child's
    collections would otherwise visit (and so write to, copying on write) every page
    of the helper's objects.
    """
    import gc

    from nova_core.plugins import get_registry, scan_entry_points

    scan_entry_points()
    try:
        try:
            shared = get_registry().preload()
        except Exception:  # noqa: BLE001 - a broken plugin: the child will say what
            shared = False
        if not shared:
            get_registry.cache_clear()  # a child makes its own and gives the warning itself
        _build_help_options()
        _build_models()
    finally:
        gc.collect()
        gc.freeze()


def _build_help_options() -> None:
    """Make each command's ``--help`` option, which click builds on first use and keeps on
    the command (a child would build it again for every command it parses, ~1 ms)."""
    try:
        import click

        from nova_core.cli.app import cli
    except ImportError:
        return
    pending = [(cli, cli.context_class(cli, info_name="nova", **cli.context_settings))]
    while pending:
        command, ctx = pending.pop()
        command.get_help_option(ctx)
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                pending.append((sub, sub.context_class(sub, parent=ctx, info_name=name,
                                                       **sub.context_settings)))


def _build_models() -> None:
    try:
        from pydantic import BaseModel
    except ImportError:
        return
    pending = list(BaseModel.__subclasses__())
    while pending:
        model = pending.pop()
        pending += model.__subclasses__()
        if getattr(model, "__pydantic_complete__", True) or getattr(
                model, "__pydantic_generic_metadata__", {}).get("parameters"):
            continue
        try:
            model.model_rebuild()  # models use defer_build: a cold command builds only its own
        except Exception:  # noqa: BLE001,S112 - one that needs names only a command has
            continue


class _Helper:
    def __init__(self, path: str, text: str, idle: float) -> None:
        import signal
        import socket
        import threading
        import time

        self.path, self.key, self.idle = path, text, idle
        self.children: dict[int, socket.socket] = {}
        self.served = 0
        self.started = time.time()
        self.last = time.monotonic()
        self.accepting = True
        self.learning = True
        self.listener: socket.socket | None = None
        self.spare: tuple[int, socket.socket] | None = None  # a child forked ahead of need
        self.spare_ready = False
        self.inode = 0
        self.mtimes = self._module_mtimes()
        self.folders = _folder_mtimes(sys.path)  # what is installed: pip adds and removes entries
        self.changes = _Changes(self.mtimes, self.folders)
        if threading.active_count() > 1:
            return  # forking a threaded process is unsafe: serve nothing
        probe = _connect(path)
        if probe is not None:
            probe.close()
            return  # another helper serves this key
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(64)
        self.listener = listener
        self.inode = os.stat(path).st_ino
        try:  # what goes wrong in the helper itself is kept beside its socket
            log = os.open(path + ".log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(log, 2)
            os.close(log)
        except OSError:
            pass
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.learn_r, self.learn_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: self._stop_accepting())
        try:
            os.unlink(path + ".starting")
        except OSError:
            pass

    @staticmethod
    def _module_mtimes() -> dict[str, int]:
        """mtimes of the files of every imported module outside the standard library."""
        import sysconfig

        stdlib = sysconfig.get_paths()["stdlib"]
        found = {}
        for module in list(sys.modules.values()):
            try:
                file = getattr(module, "__file__", None)
            except Exception:  # noqa: BLE001,S112 - a lazy module that imports on access
                continue
            if isinstance(file, str) and not file.startswith(stdlib):
                try:
                    found[file] = os.stat(file).st_mtime_ns
                except OSError:
                    pass
        return found

    def _stale(self) -> bool:
        if self.changes.available:
            return self.changes.seen()
        for file, mtime in self.mtimes.items():  # no inotify: look at each file
            try:
                if os.stat(file).st_mtime_ns != mtime:
                    return True
            except OSError:
                return True
        return _folder_mtimes(self.folders) != self.folders

    def _stop_accepting(self) -> None:
        if not self.accepting:
            return
        self.accepting = False
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass

    def loop(self) -> None:
        if self.listener is None:
            return
        self._loop()  # a failure leaves <socket>.log behind, with its traceback
        try:
            os.unlink(self.path + ".log")
        except OSError:
            pass

    def _loop(self) -> None:
        import select
        import time

        assert self.listener is not None
        while self.accepting or self.children:
            watch = [self.wake_r, self.learn_r] + ([self.listener] if self.accepting else [])
            if self.changes.available:
                watch.append(self.changes.fileno())
            if self.spare is not None and not self.spare_ready:
                watch.append(self.spare[1])
            timeout = None if self.children else max(0.0, min(60.0, self.last + self.idle - time.monotonic()))
            ready, _, _ = select.select(watch, [], [], timeout)
            if self.wake_r in ready:
                while True:
                    try:
                        if not os.read(self.wake_r, 512):
                            break
                    except BlockingIOError:
                        break
                self._guarded(self._reap)
            if self.learn_r in ready:
                self._guarded(self._learn)
            if self.changes.available and self.changes.fileno() in ready and self._stale():
                self._stop_accepting()  # code changed on disk: the next command starts a new helper
                self._drop_spare()
            if self.spare is not None and self.spare[1] in ready:
                self._guarded(self._spare_reports)
            if self.listener in ready:
                self._guarded(self._accept)
                self.last = time.monotonic()
            if self.accepting and not self.children and self.spare is None:
                self._guarded(self._fork_spare)
            if self.accepting and not self.children:
                if time.monotonic() - self.last >= self.idle:
                    self._stop_accepting()
                else:
                    try:
                        if os.stat(self.path).st_ino != self.inode:
                            self.accepting = False  # replaced or removed
                    except OSError:
                        self.accepting = False
        self._drop_spare()
        self.listener.close()
        self.changes.close()

    def _guarded(self, step) -> None:  # noqa: ANN001
        """Run one step of the loop; a failure goes to the helper's log and ends learning,
        never the helper while commands run in it."""
        try:
            step()
        except Exception:  # noqa: BLE001 - logged: <socket>.log
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            self.learning = False

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.spare is not None and pid == self.spare[0]:
                self.spare[1].close()
                self.spare = None
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            try:
                conn.sendall(b"X%d\n" % (code if code >= 0 else 128 - code))
            except OSError:
                pass
            conn.close()

    def _learn(self) -> None:
        """Import what children imported beyond the preload, for the next command."""
        import importlib
        import threading

        try:
            data = os.read(self.learn_r, 65536)
        except BlockingIOError:
            return
        if not self.learning:
            return
        for name in data.decode(errors="replace").split():
            if name in sys.modules or name == "__main__":
                continue
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - a module that needs the child's context
                continue
        _warm_up()
        self._drop_spare()  # forked before these imports: the loop forks a new one
        self.mtimes = {**self._module_mtimes(), **self.mtimes}
        self.changes.follow(self.mtimes)
        if threading.active_count() > 1:
            self._stop_accepting()  # an import started a thread: no more forks

    def _accept(self) -> None:
        import socket
        import struct

        assert self.listener is not None
        conn, _ = self.listener.accept()
        fds: list[int] = []
        try:
            uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            if uid != os.getuid():
                conn.close()
                return
            conn.settimeout(5)
            data, ancillary, _, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(3 * 4))
            fds += _passed_fds(ancillary)
            size = int.from_bytes(data[:8], "little")
            body = data[8:]
            while len(body) < size:
                chunk = conn.recv(min(1 << 20, size - len(body)))
                if not chunk:
                    raise OSError("short request")
                body += chunk
            conn.settimeout(None)
            fields = [os.fsdecode(field) for field in body.split(b"\0")]
        except (OSError, ValueError):
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        if fields[0] == "" and len(fields) == 2:
            self._control(conn, fields[1])
            return
        if len(fields) < 4 or fields[0] != self.key or len(fds) != 3 or self._stale():
            if fields[0] == self.key:
                self._stop_accepting()  # code changed on disk: the next command starts a new helper
            for fd in fds:
                os.close(fd)
            try:
                conn.sendall(b"R\n")
            except OSError:
                pass  # a probe (another helper checking that this one lives) does not wait
            conn.close()
            return
        command = _command(fields)
        pid = self._hand_to_spare(data[:8] + body, conn, fds)
        if pid is None:
            pid = os.fork()
            if pid == 0:
                self._child(conn, fds, *command)
        for fd in fds:
            os.close(fd)
        self.served += 1
        self.children[pid] = conn  # the child says P<pid> itself (see _child)

    # A command's child is forked ahead of need while the helper is idle, so a command
    # does not wait for the fork (a copy of this process's page tables, 1-2 ms): the
    # spare waits on a socket pair for the request, passed on as it came with the
    # caller's connection and stdio, and then runs it as a freshly forked child would.
    def _fork_spare(self) -> None:
        import socket

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            self._spare_child(theirs)
        theirs.close()
        self.spare = (pid, ours)
        self.spare_ready = False

    def _spare_reports(self) -> None:
        """The spare says it is ready (or, by closing its end, that it is gone)."""
        assert self.spare is not None
        if self.spare[1].recv(16) == b"ready":
            self.spare_ready = True
        else:
            self._drop_spare()

    def _drop_spare(self) -> None:
        """Let the spare go (it exits when its socket closes; :meth:`_reap` reaps it)."""
        if self.spare is not None:
            self.spare[1].close()
            self.spare = None

    def _hand_to_spare(self, request: bytes, conn, fds: list[int]) -> int | None:  # noqa: ANN001
        """Pass the request to the spare; its PID, or None if there is none (or it is gone)."""
        import socket

        if self.spare is None or not self.spare_ready:
            return None  # not there, or still getting ready: fork as usual
        pid, channel = self.spare
        self.spare = None
        try:
            channel.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                         b"".join(fd.to_bytes(4, sys.byteorder)
                                                  for fd in (conn.fileno(), *fds)))])
        except OSError:
            return None
        finally:
            channel.close()
        return pid

    def _spare_child(self, channel) -> None:  # noqa: ANN001
        """In the spare: wait for a request, then run it (exits when the helper lets go)."""
        import signal
        import socket

        try:
            signal.set_wakeup_fd(-1)
            for number in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(number, signal.SIG_DFL)
            assert self.listener is not None
            self.listener.close()
            _fault_in()
            channel.send(b"ready")
            data, ancillary, _, _ = channel.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 4))
            fds = _passed_fds(ancillary)
            channel.close()
            if not data or len(fds) != 4:
                os._exit(0)
            fields = [os.fsdecode(field) for field in data[8:].split(b"\0")]
            conn = socket.socket(fileno=fds[0])
            command = _command(fields)
        except BaseException:  # noqa: BLE001 - never back into the helper's loop
            os._exit(1)
        self._child(conn, fds[1:], *command)

    def _control(self, conn, command: str) -> None:  # noqa: ANN001
        import json
        import time

        if command == "stop":
            self._stop_accepting()
            conn.sendall(b"stopping\n")
        else:
            rss = 0
            for line in _read("/proc/self/status").splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
            conn.sendall(json.dumps({
                "pid": os.getpid(), "socket": self.path, "served": self.served,
                "busy": len(self.children), "uptime_seconds": round(time.time() - self.started, 1),
                "idle_timeout_seconds": self.idle, "rss_kib": rss,
                "modules": len(sys.modules)}).encode() + b"\n")
        conn.close()

    def _child(self, conn, fds: list[int], cwd: str, umask: int, args: list[str],  # noqa: ANN001
               env: dict[str, str]) -> None:
        """Run the command in the forked child, as the caller's ``nova`` process would."""
        import signal

        code = 1
        try:
            # the caller's first line, sent from here: a child (a ready spare, say) can
            # finish before the helper would have sent it, and the caller must read the
            # P line before the X line
            try:
                conn.sendall(b"P%d\n" % os.getpid())
            except OSError:
                pass  # the caller went away; the command still runs, as it would have
            signal.set_wakeup_fd(-1)
            for number in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(number, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            assert self.listener is not None
            self.listener.close()
            self._drop_spare()
            for other in self.children.values():
                other.close()
            for fd in (self.wake_r, self.wake_w, self.learn_r):
                os.close(fd)
            self.changes.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            before = set(sys.modules)
            os.environ.clear()
            os.environ.update(env)
            os.umask(umask)
            os.chdir(cwd)
            sys.argv = ["nova", *args]
            sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
            sys.stdout = open(1, "w", encoding="utf-8", closefd=False,  # noqa: SIM115
                              buffering=1 if os.isatty(1) else -1)
            sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                              closefd=False, buffering=1)
            from nova_core.cli.main import main

            code = main(args)
            learned = " ".join(sorted(set(sys.modules) - before))[:4000]
            if learned:
                try:
                    os.write(self.learn_w, learned.encode())
                except OSError:
                    pass
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        except BaseException:  # noqa: BLE001 - --debug re-raises: show it as nova would
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            import atexit

            later = sys.modules.get("nova_core.afterwards")
            try:
                finish = later.take_pending() if later is not None else None
            except BaseException:  # noqa: BLE001 - then it runs with the exit functions
                finish = None
            try:
                atexit._run_exitfuncs()  # what interpreter shutdown would have run
            except BaseException:  # noqa: BLE001,S110 - exiting anyway
                pass
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:  # noqa: BLE001,S110 - a closed pipe
                    pass
            _release_stdio()  # a caller reading our pipes sees their end now
            try:
                conn.sendall(b"X%d\n" % code)  # also if the helper is gone meanwhile
                conn.close()
            except BaseException:  # noqa: BLE001,S110 - the caller went away
                pass
            if finish is not None:
                try:
                    finish()  # nova_core.afterwards: work the caller need not wait for
                except BaseException:  # noqa: BLE001,S110 - exiting anyway
                    pass
            os._exit(code)


def _folder_mtimes(folders) -> dict[str, int]:  # noqa: ANN001 - an iterable of paths
    """The mtimes of these folders (0 for one that is not there): a folder's mtime changes
    when an entry is added, removed or renamed in it."""
    found = {}
    for folder in folders:
        try:
            found[folder] = os.stat(folder or ".").st_mtime_ns
        except OSError:
            found[folder] = 0
    return found


class _Changes:
    """Whether any of the helper's module files changed on disk since it imported them, or
    an entry was added to or removed from a ``sys.path`` folder (a package installed or
    removed), known from inotify on their folders: one read per request, where looking at
    each file took a stat of every one (about 150-650 of them, 0.5-1 ms per command here).
    ``available`` is False where inotify cannot be had; the helper then looks."""

    def __init__(self, files: dict[str, int], folders: dict[str, int]) -> None:
        self.watch = None
        self.names: dict[str, set[str]] = {}
        self.entries: set[str] = set()  # folders in which any added or removed entry counts
        self.changed = False
        try:
            from nova_core.hostinfo.inotify import Watch

            self.watch = Watch()
            self.follow(files)
            self.follow_entries(folders)
        except OSError:
            self.close()

    @property
    def available(self) -> bool:
        return self.watch is not None

    def fileno(self) -> int:
        assert self.watch is not None
        return self.watch.fileno()

    def follow(self, files: dict[str, int]) -> None:
        """Watch these files too (their folders)."""
        if self.watch is None:
            return
        try:
            for file in files:
                folder, _, name = file.rpartition("/")
                if folder not in self.names:
                    self.watch.add(folder)
                    self.names[folder] = set()
                self.names[folder].add(name)
        except OSError:
            self.close()  # the per-user limit, say: the helper looks at each file instead

    def follow_entries(self, folders) -> None:  # noqa: ANN001 - an iterable of paths
        """Count any entry added to, removed from or renamed in these folders as a change
        (not a file written there: the repository's folder is on ``sys.path`` in an
        editable install)."""
        from nova_core.hostinfo.inotify import ENTRIES

        if self.watch is None:
            return
        for folder in folders:
            if not folder or not os.path.isdir(folder) or folder in self.entries:
                continue
            try:
                if folder not in self.names:  # a module's folder is watched for more already
                    self.watch.add(folder, ENTRIES)
            except OSError:
                self.close()
                return
            self.entries.add(folder)

    def seen(self) -> bool:
        """Whether a watched file (or its folder) changed; stays True once it did."""
        from nova_core.hostinfo.inotify import ENTRIES, IN_Q_OVERFLOW

        if self.watch is None:
            return self.changed
        for event in self.watch.read():  # read also once seen: a full queue wakes the loop
            if (event.mask & IN_Q_OVERFLOW or not event.name
                    or event.name in self.names.get(event.folder, ())
                    or (event.folder in self.entries and event.mask & ENTRIES)):
                self.changed = True
        return self.changed

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None


def _passed_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The file descriptors an SCM_RIGHTS message carried (``recvmsg``'s ancillary data)."""
    import socket

    return [int.from_bytes(payload[i:i + 4], sys.byteorder)
            for level, kind, payload in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
            for i in range(0, len(payload) - len(payload) % 4, 4)]


def _command(fields: list[str]) -> tuple[str, int, list[str], dict[str, str]]:
    """(cwd, umask, args, environment) of a request's fields (after the key)."""
    count = int(fields[3])
    env = dict(item.partition("=")[::2] for item in fields[4 + count:])
    return fields[1], int(fields[2]), fields[4:4 + count], env


def _fault_in() -> None:
    """Copy (on write) the pages of the helper's objects into this spare child now, while
    nobody waits: a command's child otherwise takes ~1700 page faults as it first touches
    them (3 ms here); afterwards ~800. Listing every object the collector tracks bumps
    each one's reference count, a write to each page that holds one. Costs the spare
    ~10 MiB of memory of its own and ~12 ms, both while idle."""
    import gc

    gc.unfreeze()
    everything = gc.get_objects()
    del everything
    gc.freeze()


def _release_stdio() -> None:
    """Point this process's stdin, stdout and stderr at /dev/null: the caller's pipes then end
    when the caller's own copies close, not when this process has finished exiting."""
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    for fd in (0, 1, 2):
        try:
            os.dup2(null, fd)
        except OSError:
            pass
    os.close(null)
