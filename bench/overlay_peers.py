"""Baselines for bench/overlay.py: tinc (switch mode) and OpenVPN (dev tap).

What a user would pick instead of Nova's encrypted overlay for an encrypted mesh on a
kernel without WireGuard or IPsec: a TAP on each host joined to a Linux bridge, and a
userspace daemon carrying the frames, encrypted, between the hosts.

* tinc 1.0 with ``Mode = switch`` and its default crypto (Debian's tinc 1.0.36:
  AES-256-CBC, HMAC-SHA256 cut to 4 bytes), UDP port 655.
* OpenVPN 2.6 point-to-point over UDP, ``dev tap``, TLS with self-signed certificates
  pinned by ``--peer-fingerprint``, data channel cipher negotiated (AES-256-GCM).

Each baseline runs in its own pair of "hosts" (network namespaces joined by an
underlay, MTU 1500). In each host: the daemon, its TAP and a bridge, and one "client"
namespace on the bridge by a veth pair. iperf3 (1 and 4 TCP streams) and ping run
between the two client namespaces (:func:`measure`), so the path is veth, bridge, TAP,
daemon, underlay and back up on the other host.

    sudo .venv/bin/python bench/overlay.py --only tinc,openvpn

Needs root, tinc, openvpn, openssl and iperf3 (apt-get install tinc openvpn iperf3),
ping (iputils or busybox). Everything lives in namespaces it makes and removes; the
daemons bind to and connect to the underlay addresses only, no packet leaves the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from net_dataplane import in_ns, iperf, sh  # noqa: E402

UNDERLAY_MTU = 1500
IPV4_UDP = 20 + 8
ETHERNET = 14  # a TAP carries whole Ethernet frames (no VLAN tag here)

# tinc 1.0 UDP packet: [4-byte seqno + frame] encrypted with AES-256-CBC (PKCS#7 padding,
# always at least one byte, to a whole number of 16-byte blocks), then a 4-byte truncated
# HMAC. The largest frame that fits in 1500 - 28 bytes of UDP payload:
# (1472 - 4) rounded down to blocks = 1456; 1456 - 1 pad - 4 seqno = 1451 byte frame,
# so an inner MTU of 1451 - 14 = 1437.
TINC_BLOCK, TINC_MAC, TINC_SEQNO = 16, 4, 4
TINC_FRAME = ((UNDERLAY_MTU - IPV4_UDP - TINC_MAC) // TINC_BLOCK * TINC_BLOCK) - 1 - TINC_SEQNO
TINC_MTU = TINC_FRAME - ETHERNET  # 1437

# OpenVPN 2.6 data channel, AES-256-GCM (P_DATA_V2): 1 byte opcode + 3 byte peer id,
# 4-byte packet id (also the nonce tail), 16-byte tag, no compression byte (2.6 default
# allow-compression no). 1500 - 28 - 24 - 14 = 1434.
OPENVPN_OVERHEAD = 4 + 4 + 16
OPENVPN_MTU = UNDERLAY_MTU - IPV4_UDP - OPENVPN_OVERHEAD - ETHERNET  # 1434


def _client_name(host: str) -> str:
    return f"{host}c"


def _bridge_side(hosts: list[str], subnet: str, mtu: int) -> list[str]:
    """In each host: a persistent TAP ``ovtap`` (for the daemon to open) on bridge ``ovbr``, and a
    client namespace attached to the bridge by a veth pair, ``{subnet}.{10+i}/24`` on its eth0.
    TAP, bridge and both veth ends get the tunnel's inner ``mtu``."""
    paths = []
    for index, host in enumerate(hosts):
        ip = ["ip", "-n", host]
        sh(*ip, "link", "add", "ovbr", "mtu", str(mtu), "type", "bridge")
        sh(*ip, "tuntap", "add", "dev", "ovtap", "mode", "tap")
        sh(*ip, "link", "set", "ovtap", "mtu", str(mtu), "master", "ovbr", "up")
        client = _client_name(host)
        sh("ip", "netns", "add", client)
        sh(*ip, "link", "add", "ovv", "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
           "mtu", str(mtu), "netns", client)
        sh(*ip, "link", "set", "ovv", "master", "ovbr", "up")
        sh(*ip, "link", "set", "ovbr", "up")
        sh("ip", "-n", client, "addr", "add", f"{subnet}.{10 + index}/24", "dev", "eth0")
        sh("ip", "-n", client, "link", "set", "eth0", "up")
        sh("ip", "-n", client, "link", "set", "lo", "up")
        paths.append(f"/run/netns/{client}")
    return paths


def _remove_bridge_side(hosts: list[str]) -> None:
    for host in hosts:
        sh("ip", "netns", "del", _client_name(host), check=False)
        for link in ("ovv", "ovtap", "ovbr"):
            sh("ip", "-n", host, "link", "del", link, check=False)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s; always reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _kill_pidfile(pidfile: Path) -> None:
    """SIGKILL the process a daemon's PID file names, if any."""
    try:
        os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass


def _wait_for(what: str, ready: Callable[[], bool], processes: list[subprocess.Popen[bytes]],
              logs: list[Path], timeout: float = 30.0) -> None:
    """Poll ``ready`` until true; fail early (with the daemons' logs) if a daemon died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if any(p.poll() is not None for p in processes):
            break
        time.sleep(0.2)
    tails = "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-1500:]}" for log in logs
                      if log.exists())
    raise RuntimeError(f"timed out waiting for {what}\n{tails}")


def _pings(client: str, target: str) -> bool:
    return in_ns(client, *_ping_command(), "-c", "1", "-W", "1", target, check=False).returncode == 0


# -- tinc ------------------------------------------------------------------------------------
def tinc_overlay(hosts: list[str], underlay: str, subnet: str,
                 workdir: Path) -> tuple[list[str], str, Callable[[], None]]:
    """tinc 1.0 in switch mode between ``hosts``, each tincd on its host's TAP+bridge with a
    client namespace. Returns (client namespace paths, address of the second client, cleanup).

    Keys (RSA 2048) are made non-interactively with ``tincd -K`` into ``workdir``; each
    tincd runs in the foreground (``-D``) as our child and with its own pidfile, binds to its
    underlay address only and connects to the other host's underlay address, port 655."""
    names = [f"h{index}" for index in range(len(hosts))]
    confs = [workdir / f"tinc-{name}" for name in names]
    for index, conf in enumerate(confs):
        (conf / "hosts").mkdir(parents=True)
        others = [name for other, name in enumerate(names) if other != index]
        (conf / "tinc.conf").write_text("\n".join([
            f"Name = {names[index]}",
            "Mode = switch",
            "DeviceType = tap",
            "Device = /dev/net/tun",
            "Interface = ovtap",
            "AddressFamily = ipv4",
            f"BindToAddress = {underlay}.{index + 1} 655",
            "LocalDiscovery = no",
            # Path MTU discovery starts from this (largest frame that fits, see TINC_FRAME)
            # instead of 1514, so it settles within a few probes.
            f"PMTU = {TINC_FRAME}",
            *(f"ConnectTo = {other}" for other in others),
        ]) + "\n")
        (conf / "hosts" / names[index]).write_text(
            f"Address = {underlay}.{index + 1}\nPort = 655\n")
        # With stdin not a terminal, tincd -K saves to the default places without asking:
        # rsa_key.priv, and the public key appended to hosts/NAME.
        subprocess.run(["tincd", "-c", str(conf), "--generate-keys=2048"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, check=True)
    for index, conf in enumerate(confs):  # each host learns the others' Address and public key
        for other, name in enumerate(names):
            if other != index:
                shutil.copy(confs[other] / "hosts" / name, conf / "hosts" / name)

    processes: list[subprocess.Popen[bytes]] = []
    logs = [workdir / f"tinc-{name}.log" for name in names]

    def cleanup() -> None:
        for process in processes:
            _stop(process)
        for conf in confs:  # belt and braces: a tincd not (or no longer) our child
            _kill_pidfile(conf / "tinc.pid")
        _remove_bridge_side(hosts)

    try:
        paths = _bridge_side(hosts, subnet, TINC_MTU)
        for host, conf, log in zip(hosts, confs, logs, strict=True):
            with log.open("wb") as out:
                processes.append(subprocess.Popen(
                    ["nsenter", f"--net=/run/netns/{host}", "tincd", "-c", str(conf), "-D", "-d1",
                     f"--pidfile={conf / 'tinc.pid'}"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT))
        _wait_for("tinc tunnel", lambda: _pings(paths[0], f"{subnet}.11"), processes, logs)
        # Until PMTU discovery has confirmed full-size frames, tinc sends them over its TCP
        # meta connection: wait until each side's dump shows min == TINC_FRAME.
        for process, log in zip(processes, logs, strict=True):
            _wait_for("tinc path MTU",
                      lambda p=process, lg=log: _tinc_peer(p, lg).get("min", 0) >= TINC_FRAME,
                      processes, logs)
    except BaseException:
        cleanup()
        raise
    return paths, f"{subnet}.11", cleanup


NIDS = {91: "bf-cbc", 418: "aes-128-cbc", 427: "aes-256-cbc", 64: "sha1", 672: "sha256", 674: "sha512"}


def _tinc_peer(process: subprocess.Popen[bytes], log: Path) -> dict[str, int]:
    """Ask tincd for a node dump (SIGUSR2) and return the other node's numbers from its log
    (cipher/digest as OpenSSL NIDs, maclength, pmtu, min, max); {} if not dumped yet."""
    process.send_signal(signal.SIGUSR2)
    time.sleep(0.3)
    return _last_peer_line(log)


def _last_peer_line(log: Path) -> dict[str, int]:
    pattern = (r"^ \S+ at (?!MYSELF).*cipher (?P<cipher>\d+) digest (?P<digest>\d+) "
               r"maclength (?P<maclength>\d+) .* pmtu (?P<pmtu>\d+) \(min (?P<min>\d+) max (?P<max>\d+)\)")
    found = list(re.finditer(pattern, log.read_text(errors="replace"), re.MULTILINE))
    return {key: int(value) for key, value in found[-1].groupdict().items()} if found else {}


def tinc_summary(workdir: Path) -> str:
    """Cipher, digest, MAC length and path MTU host 0's tincd last reported for its peer."""
    peer = _last_peer_line(workdir / "tinc-h0.log")
    if not peer:
        return "?"
    cipher, digest = NIDS.get(peer["cipher"], peer["cipher"]), NIDS.get(peer["digest"], peer["digest"])
    return (f"cipher {cipher}, digest {digest} (MAC {peer['maclength']} bytes), "
            f"path MTU {peer['pmtu']} (min {peer['min']} max {peer['max']})")


def tinc_version() -> str:
    """``tinc version 1.0.36`` or so."""
    return sh("tincd", "--version").stdout.splitlines()[0].strip()


# -- OpenVPN ---------------------------------------------------------------------------------
def _self_signed(workdir: Path, name: str) -> tuple[Path, Path, str]:
    """A self-signed P-256 certificate and key (openssl CLI); returns (cert, key, SHA-256
    fingerprint as OpenVPN's --peer-fingerprint wants it)."""
    cert, key = workdir / f"{name}.crt", workdir / f"{name}.key"
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
       "-nodes", "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}", "-days", "2")
    text = sh("openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256").stdout
    return cert, key, text.strip().split("=", 1)[1]


def openvpn_overlay(hosts: list[str], underlay: str, subnet: str,
                    workdir: Path) -> tuple[list[str], str, Callable[[], None]]:
    """OpenVPN 2.6 point-to-point over UDP between ``hosts`` (``dev tap``), each on its host's
    TAP+bridge with a client namespace. Returns (client namespace paths, address of the second
    client, cleanup).

    TLS (host 0 is --tls-server, host 1 --tls-client) with self-signed certificates pinned by
    --peer-fingerprint (2.6 p2p mode, no CA); the data channel cipher is left to OpenVPN's
    negotiation (AES-256-GCM between two 2.6 peers). Each openvpn runs in the foreground as our
    child (plus --writepid), bound to its underlay address, --remote the other one, port 1194."""
    certs = [_self_signed(workdir, f"ovpn{index}") for index in range(len(hosts))]
    processes: list[subprocess.Popen[bytes]] = []
    logs = [workdir / f"openvpn-{index}.log" for index in range(len(hosts))]
    pidfiles = [workdir / f"openvpn-{index}.pid" for index in range(len(hosts))]

    def cleanup() -> None:
        for process in processes:
            _stop(process)
        for pidfile in pidfiles:
            _kill_pidfile(pidfile)
        _remove_bridge_side(hosts)

    try:
        paths = _bridge_side(hosts, subnet, OPENVPN_MTU)
        for index, host in enumerate(hosts):
            cert, key, _ = certs[index]
            peer_fingerprint = certs[1 - index][2]
            role = ["--tls-server", "--dh", "none"] if index == 0 else ["--tls-client"]
            argv = ["nsenter", f"--net=/run/netns/{host}", "openvpn",
                    "--dev", "ovtap", "--dev-type", "tap", "--disable-dco",
                    "--proto", "udp4", "--local", f"{underlay}.{index + 1}", "--lport", "1194",
                    "--remote", f"{underlay}.{2 - index}", "--rport", "1194",
                    *role, "--cert", str(cert), "--key", str(key),
                    "--peer-fingerprint", peer_fingerprint,
                    # tun-mtu: the TAP's MTU (set on the device above, this tells OpenVPN);
                    # the inner MTU already fits the underlay, so no MSS clamping.
                    "--tun-mtu", str(OPENVPN_MTU), "--mssfix", "0",
                    "--script-security", "1", "--verb", "3", "--writepid", str(pidfiles[index])]
            with logs[index].open("wb") as out:
                processes.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                  stderr=subprocess.STDOUT))
        _wait_for("OpenVPN handshake", lambda: all(
            "Initialization Sequence Completed" in log.read_text(errors="replace")
            for log in logs if log.exists()) and all(log.exists() for log in logs), processes, logs)
        _wait_for("OpenVPN tunnel", lambda: _pings(paths[0], f"{subnet}.11"), processes, logs)
    except BaseException:
        cleanup()
        raise
    return paths, f"{subnet}.11", cleanup


def openvpn_version() -> str:
    """``OpenVPN 2.6.14`` or so."""
    return " ".join(sh("openvpn", "--version", check=False).stdout.split()[:2])


def openvpn_cipher(workdir: Path) -> str:
    """The data channel cipher the first OpenVPN negotiated, from its log."""
    text = (workdir / "openvpn-0.log").read_text(errors="replace")
    found = re.search(r"Data Channel: [Cc]ipher '([^']+)'", text)
    return found.group(1) if found else "?"


# -- measurements ----------------------------------------------------------------------------
def _ping_command() -> list[str]:
    """iputils ping if installed, else busybox's."""
    found = shutil.which("ping")
    if found and not os.path.realpath(found).endswith("busybox"):
        return [found]
    return ["busybox", "ping"]


def ping_times(client_ns: str, target: str, count: int) -> list[float]:
    """Every round trip (ms) of ``count`` pings 10 ms apart, from the reply lines."""
    done = in_ns(client_ns, *_ping_command(), "-c", str(count), "-i", "0.01", target, check=False)
    times = [float(x) for x in re.findall(r"time[=<]([\d.]+) ?ms", done.stdout)]
    if not times:
        raise RuntimeError(f"no ping replies from {target}: {done.stdout[-300:]}{done.stderr[-300:]}")
    return times


def underlay_fragments(hosts: list[str]) -> int:
    """IPv4 fragments made plus reassemblies asked for, summed over the hosts' namespaces."""
    from nova_bridge.testing import snmp_counters

    total = 0
    for host in hosts:
        ip = snmp_counters(in_ns(f"/run/netns/{host}", "cat", "/proc/net/snmp").stdout, "Ip")
        total += ip["FragCreates"] + ip["ReasmReqds"]
    return total


def measure(hosts: list[str], paths: list[str], server_ip: str, seconds: float) -> dict[str, float]:
    """1 and 4 stream throughput, client 0 -> client 1, and the underlay's fragments."""
    before = underlay_fragments(hosts)
    result = {
        "1 stream": iperf(paths[1], paths[0], server_ip, seconds, 1),
        "4 streams": iperf(paths[1], paths[0], server_ip, seconds, 4),
    }
    result["frags"] = underlay_fragments(hosts) - before
    return result
