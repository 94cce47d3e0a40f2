"""The overlay endpoint: one process per overlay network and host.

    python -m nova_quic.endpoint CONFIG.json

It opens a TAP, puts it on the network's bridge, and carries every Ethernet frame
the TAP gives to the other hosts as QUIC DATAGRAM frames (RFC 9221: unreliable, no
head-of-line blocking), over one UDP socket that both listens and dials. One QUIC
connection per peer, full mesh: a frame crosses one hop and is never forwarded
again, so flooding cannot loop. Each connection's bidirectional stream 0 carries the
control messages, one JSON object per line:

    hello    {"t": "hello", "name", "boot", "port"}    first message either way
    peers    {"t": "peers", "addrs": [...]}            the other members, to dial
    records  {"t": "records", "lines": [...]}          this host's DNS records
    macs     {"t": "macs", "macs": [...]}              MACs behind this host's TAP
    crl      {"t": "crl", "pem": "..."}                the newest revocation list
    bye      {"t": "bye"}                              leaving for good (nova down)

Data path: where nova_quic/datapath.c was built (pip builds it with the package), a
thread in C carries the frames between the TAP and the socket as sealed 1-RTT packets
and hands everything else to this process's aioquic (nova_quic.datapath); elsewhere,
or with NOVA_QUIC_DATAPATH=python, the Python fast path below does the same work.

Trust: mutual TLS 1.3 with certificates from the network's CA (nova_quic.pki). The
library checks that each side holds its certificate's key; :func:`verify_peer`
then checks issuer, validity and revocation before a single frame or message of
the peer is used. Refusals are logged and kept for ``nova net inspect``.

Robustness: dialing retries with exponential backoff (0.5 s .. 15 s); pings every
2 s and a 10 s idle timeout find dead peers; a peer that restarted (new ``boot``)
replaces its stale connection at once; datagrams wait in a bounded queue per peer
(tail drop, counted); frames larger than the inner MTU allows are dropped, counted.
Learned peers are kept in ``peers.json`` so a restarted endpoint finds them again.
The endpoint writes ``status.json`` every second for ``nova net inspect``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import END_STATES, QuicConnection
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    DatagramFrameReceived,
    HandshakeCompleted,
    StreamDataReceived,
)
from aioquic.quic.packet import PACKET_TYPE_INITIAL, pull_quic_header
from aioquic.quic.recovery import MAX_ACK_RANGES
from aioquic.tls import Epoch
from nova_bridge.supervise import find_processes

from nova_core.errors import NovaError
from nova_core.files import replace_file
from nova_quic import datapath as compiled
from nova_quic.loop import KeepWarm, Loop, Timer
from nova_quic.packets import Protection, scratch
from nova_quic.pki import OverlayStore, PeerRefused, utcnow, verify_peer

if TYPE_CHECKING:
    from cryptography import x509

LOG = logging.getLogger("nova-quic")
ALPN = "nova-overlay/1"
CID_LENGTH = 8
# What a frame costs beyond its own bytes in one UDP payload: QUIC short header
# (1 + CID + packet number 4), AEAD tag 16, DATAGRAM frame type and length <= 5 (or
# type, kind and virtio-net header: 12 on the fast path).
QUIC_OVERHEAD = 1 + CID_LENGTH + 4 + 16 + 12
ETHERNET = 14
PING_EVERY = 2.0
IDLE_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 3.0
BACKOFF = (0.5, 15.0)
RECHECK_EVERY = 60.0  # seconds between re-judging connected peers' certificates
QUEUE = 512  # datagrams waiting per peer before new ones are dropped
BATCH = 64  # reads per readiness event, before flushing
ACK_DELAY = 0.025  # as aioquic's max_ack_delay
UDP_SEGMENT, UDP_GRO = 103, 104  # linux/udp.h
GSO_SEGMENTS, GSO_BYTES = 64, 65000  # kernel limits of one UDP GSO write
KEY_UPDATE_EVERY = 1 << 22  # packets per 1-RTT key (AES-GCM's limit is 2^23)
# Sparse traffic (a ping, a request) finds the data path cold: keep it warm with a
# 1 ms tick for 100 ms after each packet (nova_quic.loop.KeepWarm; docs/networks.md).
WARM_EVERY, WARM_FOR = 0.001, 0.1
SCRATCH_CID, SCRATCH_FRAME = bytes(CID_LENGTH), b"\x30\x01" + bytes(108)

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
VNET = 10  # struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start/offset
NO_VNET = bytes(VNET)  # a frame needing nothing: checksum complete, no segmentation
# What the fast path puts after the DATAGRAM frame type (0x30):
WHOLE, WHOLE_VNET, PIECE = 0, 1, 2  # a frame; virtio-net header + frame; a piece of one
PIECE_HEADER = 5  # kind, message id (2 bytes), index, count


def open_tap(name: str, offload: bool = True) -> tuple[int, bool]:
    """A non-persistent TAP (it goes away with this process), non-blocking.

    With ``offload`` the TAP takes TCP segmentation and checksum offload (as a
    virtio-net device does): every frame comes and goes with a 10-byte virtio-net
    header, and a TCP flow's frames arrive as super-frames of up to 64 KiB that the
    receiving host's kernel cuts into segments only where it must (if at all).
    Returns the descriptor and whether offload is on.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    if offload:
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        except OSError:
            os.close(fd)
            return open_tap(name, offload=False)
    return fd, offload


def waiting(fd: int) -> Callable[[int], list[tuple[int, int]]]:
    """``waiting(fd)(0)`` is true when ``fd`` has something to read, without waiting."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return poller.poll


def parse_addr(text: str, default_port: int = 4433) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``, or a bare host) as a socket address."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


def format_addr(addr: tuple[str, int] | tuple) -> str:  # type: ignore[type-arg]
    """The inverse of :func:`parse_addr`."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Connection(QuicConnection):
    """aioquic's connection, asking the client for its certificate (mutual TLS).

    aioquic's TLS sends a CertificateRequest only when ``_request_client_certificate``
    is set; it checks the client's CertificateVerify signature, and the endpoint
    checks the certificate itself (:func:`verify_peer`).
    """

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self._is_client:
            self.tls._request_client_certificate = True


@dataclass(eq=False)  # identity: links are kept in sets
class Link:
    """One QUIC connection to a peer (dialed or accepted)."""

    quic: _Connection
    addr: tuple[str, int]
    dialed: bool
    started: float
    name: str | None = None  # verified host name, once the handshake completed
    boot: str | None = None  # the peer's run id, from its hello
    port: int | None = None  # the peer's listening port, from its hello
    ready: bool = False  # hello received: frames and messages flow
    fast: bool = False  # the peer takes DATAGRAM-only packets we seal ourselves
    protection: Protection | None = None  # the fast path's keys, once ready
    sealed: int = 0  # packets sealed under the current 1-RTT key
    out: list[bytes] = field(default_factory=list)  # sealed packets waiting to be sent
    pieces: list[bytes] = field(default_factory=list)  # of the super-frame coming in
    piece_id: bytes = b""
    inbox: bytes = b""
    stream: int | None = None
    timer: Timer | None = None
    timer_at: float | None = None
    received_at: float = 0.0  # the fast path's last packet, not yet given to aioquic's idle timer
    unacked: list[int] = field(default_factory=list)  # numbers opened, not yet told to aioquic
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    drops: int = 0
    cids: set[bytes] = field(default_factory=set)
    slot: int | None = None  # in the compiled data path, once ready
    installed: tuple[object, object, bytes, tuple[str, int]] | None = None  # what it was given

    @property
    def advertised(self) -> str:
        """Where the peer listens, as seen from here."""
        return format_addr((self.addr[0], self.port or self.addr[1]))


@dataclass
class Target:
    """An address to keep a connection to."""

    addr: str
    configured: bool
    attempts: int = 0
    next_at: float = 0.0
    last_error: str = ""


class Endpoint:
    """The endpoint of one overlay network on this host."""

    def __init__(self, config: dict[str, object]) -> None:
        self.config = config
        self.network = str(config["network"])
        self.store = OverlayStore(Path(str(config["nova_home"])))
        self.identity = self.store.identity(self.network)
        self.name = self.identity.hostname
        self.boot = os.urandom(6).hex()
        self.state_dir = Path(str(config["state_dir"]))
        self.mtu = int(config["mtu"])  # type: ignore[call-overload]
        self.max_frame = self.mtu + ETHERNET + 4  # a VLAN tag fits
        self.piece = self.max_frame + VNET + 1 - PIECE_HEADER  # bytes of a message per piece
        self.message_id = 0
        self.hosts_dir = Path(str(config["hosts_dir"])) if config.get("hosts_dir") else None
        self.dnsmasq_conf = str(config.get("dnsmasq_conf") or "")
        self.listen = parse_addr(str(config["listen"]))
        self.links: dict[bytes, Link] = {}  # by every connection id the link uses
        self.all_links: set[Link] = set()  # type: ignore[misc]
        self.peers: dict[str, Link] = {}  # ready links by host name
        self.targets: dict[str, Target] = {}
        self.own_addrs: set[str] = set()
        self.refused: dict[str, dict[str, object]] = {}
        self.macs: dict[bytes, Link] = {}
        self.local_macs: set[bytes] = set()
        self.sent_macs: frozenset[bytes] = frozenset()
        self.records: list[str] = []
        self.peer_records: dict[str, list[str]] = {}
        self.crl_mtime = 0.0
        self.recheck_at = 0.0  # monotonic time of the next _recheck_peers
        self.stopping = False
        self.fast_path = bool(config.get("fast_path", True))
        # the compiled data path (nova_quic.datapath) when built, else the Python one
        self.wanted_datapath = str(config.get("datapath")
                                   or os.environ.get("NOVA_QUIC_DATAPATH") or "compiled")
        self.datapath: compiled.Datapath | None = None
        self.failure = ""  # the data path (the thread in C, or on_tap) stopped on this
        self.gso = True  # until the kernel refuses UDP_SEGMENT
        self.vnet = False  # the TAP's frames carry virtio-net headers (offload)
        self.tap_fd = -1
        self.sock: socket.socket | None = None
        # Is more waiting? Asked after each read: the failing read that would tell costs a
        # BlockingIOError, 40 µs with cold caches (as every packet of a ping finds them).
        self._tap_waiting = self._sock_waiting = select.poll().poll
        self.loop: Loop | None = None
        self._dirty: set[Link] = set()  # type: ignore[misc]  # aioquic has work
        self._sealed: set[Link] = set()  # type: ignore[misc]  # fast-path packets to send
        self._acking: set[Link] = set()  # type: ignore[misc]  # fast-path packets to acknowledge
        self._ack_round: Timer | None = None
        self._warm: KeepWarm | None = None  # made by run(), with the loop
        self._scratch: Protection | None = None
        self._scratch_number = 0
        self._last_ping = self._last_status = 0.0  # when _periodic last did them
        for addr in [*self.identity.peers, *(str(p) for p in config.get("peers", []))]:  # type: ignore[attr-defined]
            self.targets.setdefault(addr, Target(addr, configured=True))
        for addr in self._load_learned():
            self.targets.setdefault(addr, Target(addr, configured=False))

    # -- set-up -----------------------------------------------------------------------------
    def _quic_config(self, is_client: bool) -> QuicConfiguration:
        configuration = QuicConfiguration(
            is_client=is_client, alpn_protocols=[ALPN], connection_id_length=CID_LENGTH,
            idle_timeout=IDLE_TIMEOUT, max_datagram_frame_size=65536,
            max_datagram_size=self.max_frame + QUIC_OVERHEAD,
            verify_mode=ssl.CERT_NONE)  # verify_peer checks the certificate, both ways
        configuration.load_cert_chain(self.identity.cert_path, self.identity.key_path)
        return configuration

    def open(self) -> None:
        """The TAP on the bridge, and the UDP socket."""
        tap, bridge = str(self.config["tap"]), str(self.config["bridge"])
        self.tap_fd, self.vnet = open_tap(tap, offload=self.fast_path)
        subprocess.run(["ip", "link", "set", tap, "mtu", str(self.mtu), "master", bridge, "up"],
                       check=True, capture_output=True)
        family = socket.AF_INET6 if ":" in self.listen[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.bind(self.listen)
        self.sock.setblocking(False)
        try:  # several datagrams of one peer per read (UDP GRO, Linux 5.0+)
            self.sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
        except OSError:
            pass
        self._tap_waiting, self._sock_waiting = waiting(self.tap_fd), waiting(self.sock.fileno())
        if self.fast_path and self.wanted_datapath == "compiled":
            if compiled.load() is not None:
                self.datapath = compiled.Datapath(self.tap_fd, self.sock.fileno(), self.vnet,
                                                  self.max_frame, self.piece)
            else:
                LOG.warning("%s: the compiled data path was not built (gcc and libssl-dev "
                            "when nova-quic is installed): frames go through Python, "
                            "slower", self.network)
        LOG.info("%s: endpoint %s listening on %s, TAP %s on %s (mtu %d, %s data path)",
                 self.network, self.name, format_addr(self.listen), tap, bridge, self.mtu,
                 self.datapath_name)

    @property
    def datapath_name(self) -> str:
        """Which data path carries the frames: compiled, python (the fast path) or aioquic."""
        return "compiled" if self.datapath is not None else \
            "python" if self.fast_path else "aioquic"

    # -- the data path ----------------------------------------------------------------------
    def on_tap(self) -> None:
        """Frames from the bridge: to the peer behind the destination MAC, else to all."""
        if self._warm is not None:
            self._warm.packet(time.monotonic())
        peers, more = self.peers, self._tap_waiting
        skip = VNET if self.vnet else 0
        for index in range(BATCH):
            try:
                data = os.read(self.tap_fd, 65536 + VNET)
            except BlockingIOError:  # epoll said readable; rare
                break
            except OSError as error:  # the TAP was deleted under us (EBADFD), or worse:
                self._fail(f"reading TAP {self.config['tap']}: {error}")  # the supervisor
                return  # restarts the endpoint with a new one
            self.local_macs.add(data[skip + 6:skip + 12])
            link = None if data[skip] & 1 else self.macs.get(data[skip:skip + 6])
            for target in (link,) if link is not None else tuple(peers.values()):
                target.tx_packets += 1
                target.tx_bytes += len(data) - skip
                if target.fast:
                    self._seal_message(target, data)
                else:
                    self._to_aioquic(target, data, skip)
            if not index:  # the first read leaves before the check for more: a lone frame
                self._flush_dirty()  # (a ping, an ACK) waits for no poll
            if not more(0):
                break
        self._flush_dirty()

    def _to_aioquic(self, link: Link, data: bytes, skip: int) -> None:
        """A frame for a peer without the fast path, as aioquic's DATAGRAM frame."""
        frame = data[skip:]
        if len(frame) > self.max_frame or (skip and data[:2] != b"\0\0"):
            link.drops += 1  # offloaded frames go to fast-path peers only
            return
        quic = link.quic
        if len(quic._datagrams_pending) >= QUEUE:
            link.drops += 1
            return
        quic.send_datagram_frame(frame)
        self._dirty.add(link)

    def _seal_message(self, link: Link, data: bytes) -> None:
        """One read from the TAP as sealed 1-RTT packets (the fast path): whole, or in
        pieces of equal size (a super-frame), which one UDP GSO write then sends together.

        aioquic's packet builder costs more per packet than the encryption itself;
        for a DATAGRAM-only packet the header and frame are fixed, so the endpoint
        builds it here: short header, 4-byte packet number from the connection's
        counter, frame type 0x30 (DATAGRAM running to the end of the packet), AEAD and
        header protection with the connection's keys (nova_quic.packets). The peer
        acknowledges these packets like any other; they are not congestion controlled
        (as in tinc, OpenVPN or WireGuard: the tunnelled TCP flows have their own control).
        """
        if not self.vnet:
            frames: list[bytes] = [b"\x30\x00" + data]
        elif len(data) <= self.max_frame + VNET:
            frames = [b"\x30\x01" + data]
        else:
            self.message_id = (self.message_id + 1) & 0xFFFF
            size = self.piece
            count = -(-len(data) // size)
            head = b"\x30\x02" + self.message_id.to_bytes(2, "big")
            frames = [head + bytes((index, count)) + data[index * size:(index + 1) * size]
                      for index in range(count)]
        quic, protection, out = link.quic, link.protection, link.out
        assert protection is not None
        cid, number = quic._peer_cid.cid, quic._packet_number
        for frame in frames:
            out.append(protection.seal(cid, number, frame))
            number += 1
        quic._packet_number = number
        link.sealed += len(frames)
        if link.sealed >= KEY_UPDATE_EVERY:  # stay far below AES-GCM's 2^23 packet limit
            protection.update_key()
            link.sealed = 0
        self._sealed.add(link)

    def _open(self, link: Link, data: bytes, now: float) -> bool | None:
        """Deliver a DATAGRAM-only 1-RTT packet to the TAP without aioquic's receive
        path: True once it is taken, None for a duplicate (dropped before it counts for
        anything, as aioquic drops one), False for any other packet (aioquic takes it).

        Its number is checked against duplicates and recorded for acknowledgement as
        aioquic does, but the record in aioquic's structures (a range set and a window,
        three Python calls per packet) waits for :meth:`_record_received`.
        """
        quic = link.quic
        space = quic._spaces[Epoch.ONE_RTT]
        opened = None if link.protection is None else \
            link.protection.open(data, space.expected_packet_number)
        if opened is None:  # the peer's next key phase (aioquic's pair moves both ends on)...
            try:
                header, payload, number = quic._cryptos[Epoch.ONE_RTT].decrypt_packet(
                    data, 1 + CID_LENGTH, space.expected_packet_number)
            except Exception:  # noqa: BLE001 - ...or not ours to judge: aioquic drops it
                return False
            first = header[0]
        else:
            first, number, payload = opened
        if payload[:1] != b"\x30" or first & 0x18:
            return False
        if link.slot is not None and self.datapath is not None:
            # one replay window, the compiled path's: it opens this link's other packets
            if not self.datapath.received(link.slot, number):
                return None
        elif number <= space.largest_received_packet and (
                number in link.unacked or number in space.received_packets):
            return None  # a duplicate (RFC 9000 section 12.3)
        if number > space.largest_received_packet:  # in order (the usual case): new
            space.largest_received_packet = number
            space.largest_received_time = now
        if number >= space.expected_packet_number:
            space.expected_packet_number = number + 1
        link.unacked.append(number)  # for aioquic's ACKs: _record_received
        if space.ack_at is None:
            space.ack_at = now + quic._ack_delay
        kind = payload[1]
        if kind == WHOLE_VNET:
            message = payload[2:]
        elif kind == PIECE:
            message = self._reassemble(link, payload)
            if message is None:
                return True
        elif kind == WHOLE:
            message = NO_VNET + payload[2:]
        else:
            link.drops += 1
            return True
        self._learn(message[VNET + 6:VNET + 12], link)
        link.rx_packets += 1
        link.rx_bytes += len(message) - VNET
        if not self.vnet:
            if message[:2] != b"\0\0":  # needs offload this TAP does not have
                link.drops += 1
                return True
            message = message[VNET:]
        try:
            os.write(self.tap_fd, message)
        except OSError:
            link.drops += 1
        return True

    def _learn(self, mac: bytes, link: Link) -> None:
        """Frames to ``mac`` go to ``link``'s peer (from now on, in either data path)."""
        self.macs[mac] = link
        if link.slot is not None and self.datapath is not None and len(mac) == 6:
            self.datapath.mac(mac, link.slot)

    def _reassemble(self, link: Link, payload: bytes) -> bytes | None:
        """Collect the pieces of a super-frame (they come in order on one path); a gap
        drops the message (the TCP flow inside resends), never a later one."""
        message_id = payload[2:4]
        index, count = payload[4], payload[5]
        if index == 0:
            link.pieces = [payload[6:]]
            link.piece_id = message_id
        elif message_id == link.piece_id and index == len(link.pieces):
            link.pieces.append(payload[6:])
        else:
            if link.pieces:
                link.drops += 1
            link.pieces = []
            return None
        if len(link.pieces) < count:
            return None
        message = b"".join(link.pieces)
        link.pieces = []
        return message

    def on_socket(self) -> None:
        """Datagrams from the underlay, to their connection (by connection id)."""
        assert self.sock is not None
        now = time.monotonic()
        if self._warm is not None:
            self._warm.packet(now)
        opened: set[Link] = set()  # type: ignore[misc]
        sock, space, more = self.sock, socket.CMSG_SPACE(4), self._sock_waiting
        for _ in range(BATCH):
            try:
                buffer, ancillary, _flags, addr = sock.recvmsg(1 << 16, space)
            except BlockingIOError:  # epoll said readable; rare
                break
            except OSError as error:  # ICMP unreachable from an earlier send
                if error.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                raise
            segment = len(buffer)
            for level, kind, value in ancillary:  # UDP GRO: several datagrams in one buffer
                if level == socket.SOL_UDP and kind == UDP_GRO:
                    segment = struct.unpack("i", value[:4])[0] or segment
            if segment >= len(buffer):
                self._datagram(buffer, addr, now, opened)
            else:
                for offset in range(0, len(buffer), segment):
                    self._datagram(buffer[offset:offset + segment], addr, now, opened)
            if not more(0):
                break
        for link in opened:  # aioquic's part: the idle timer, and an ACK within 25 ms
            link.received_at = now
            self._ack_soon(link)
        self._flush_dirty()

    def _ack_soon(self, link: Link) -> None:
        """Let aioquic acknowledge the link's fast-path packets within ACK_DELAY."""
        if link not in self._dirty and link not in self._acking:
            self._acking.add(link)  # one timer for all: get_timer per packet costs
            if self._ack_round is None:
                assert self.loop is not None
                self._ack_round = self.loop.call_later(ACK_DELAY, self._send_acks)

    def on_channel(self) -> None:
        """Messages of the compiled data path's thread (datapath.c says which)."""
        assert self.datapath is not None
        channel, now = self.datapath.channel, time.monotonic()
        opened: set[Link] = set()  # type: ignore[misc]
        slots = {link.slot: link for link in self.peers.values() if link.slot is not None}
        for _ in range(BATCH):
            try:
                message = channel.recv(1 << 17)
            except BlockingIOError:
                break
            kind = message[:1]
            if kind == b"U":  # a datagram for aioquic
                size = message[1]
                self._datagram(message[2 + size:], compiled.from_sockaddr(message[2:2 + size]),
                               now, opened)
                continue
            if kind == b"E":
                self._fail(message[1:].decode(errors="replace"))
                return
            slot = message[1] if len(message) > 1 else -1
            link = slots.get(slot)
            if kind == b"A" and link is not None:  # it opened packets: ACK them soon
                self._ack_soon(link)
            elif kind == b"K" and link is not None:  # time for a key update
                link.quic._cryptos[Epoch.ONE_RTT].update_key()
                link.quic.send_ping(0)  # a packet that takes the new keys at once
                self._dirty.add(link)
            elif kind == b"T":  # a frame for peers without the fast path
                targets = [link] if link is not None else \
                    [p for p in self.peers.values() if not p.fast] if slot == compiled.ALL else []
                for target in targets:  # (counted by the thread)
                    self._to_aioquic(target, message[2:], VNET if self.vnet else 0)
        for link in opened:
            link.received_at = now
            self._ack_soon(link)
        for link in slots.values():
            self._sync(link)  # aioquic may have taken the peer's key update
        self._flush_dirty()

    def _attach(self, link: Link) -> None:
        """Give a link whose peer said hello to the compiled data path: its 1-RTT keys,
        our connection ids, its next packet number, the peer's connection id and address."""
        assert self.datapath is not None
        quic, dp = link.quic, self.datapath
        pair, space = quic._cryptos[Epoch.ONE_RTT], quic._spaces[Epoch.ONE_RTT]
        with dp.locked():
            link.slot = dp.add_link(link.fast, pair.send, pair.recv, quic._packet_number,
                                    space.largest_received_packet)
            for cid in link.cids:
                dp.cid(link.slot, cid)
            link.installed = None
            self._sync(link)

    def _sync(self, link: Link) -> None:
        """Give the compiled data path what changed in aioquic: keys after a key update,
        the peer's connection id, its address."""
        if link.slot is None or self.datapath is None:
            return
        quic, dp = link.quic, self.datapath
        pair = quic._cryptos[Epoch.ONE_RTT]
        cid, addr = quic._peer_cid.cid, quic._network_paths[0].addr
        installed = link.installed
        if installed is not None and installed[0] is pair.send.secret \
                and installed[1] is pair.recv.secret and installed[2] == cid \
                and installed[3] == addr:
            return
        with dp.locked():
            if installed is not None and installed[0] is not pair.send.secret:
                _suite, phase, key, iv, _hp = compiled.packet_keys(pair.send)
                dp.keys(link.slot, True, phase, key, iv)
            if installed is not None and installed[1] is not pair.recv.secret:
                _suite, phase, key, iv, _hp = compiled.packet_keys(pair.recv)
                dp.keys(link.slot, False, phase, key, iv)
            dp.peer(link.slot, cid, addr)
        link.installed = (pair.send.secret, pair.recv.secret, cid, addr)

    def _exercise(self) -> None:
        """What a packet of the data path runs, with throwaway keys (KeepWarm): seal, open,
        and the two readiness checks."""
        if self._scratch is not None:
            number = self._scratch_number = self._scratch_number + 1
            self._scratch.open(self._scratch.seal(SCRATCH_CID, number, SCRATCH_FRAME), number)
        self._tap_waiting(0)
        self._sock_waiting(0)

    def _send_acks(self) -> None:
        """Let aioquic acknowledge what the fast path received (and re-arm its timers)."""
        self._ack_round = None
        acking, self._acking = self._acking, set()
        for link in acking:
            if link.cids:
                self._record_received(link)
                self._idle_from_fast_path(link)
                self._flush(link)

    def _record_received(self, link: Link) -> None:
        """Record the fast path's packets in aioquic's ACK queue and duplicate window, as
        its receive path does for each of its own; done before aioquic looks at them
        (before it takes a packet, before it sends), not per packet. The compiled data
        path keeps its own duplicate window; its numbers go to the ACK queue."""
        numbers, link.unacked = link.unacked, []
        space = link.quic._spaces[Epoch.ONE_RTT]
        if space.discarded:
            return
        queue, window = space.ack_queue, space.received_packets
        for number in numbers:
            queue.add(number)
            window.add(number)
            if len(queue) > MAX_ACK_RANGES:
                queue.shift()
        if link.slot is None or self.datapath is None:
            return
        ranges, largest, largest_time, last = self.datapath.drain(link.slot)
        if last:
            link.received_at = max(link.received_at, last)
        if not ranges:
            return
        for start, stop in ranges:
            queue.add(start, stop)
        while len(queue) > MAX_ACK_RANGES:
            queue.shift()
        if largest > space.largest_received_packet:
            space.largest_received_packet = largest
            space.largest_received_time = largest_time
        space.expected_packet_number = max(space.expected_packet_number, largest + 1)
        if space.ack_at is None:
            space.ack_at = time.monotonic()  # ACK_DELAY has passed for the first of them

    @staticmethod
    def _idle_from_fast_path(link: Link) -> None:
        """Move aioquic's idle timeout on for the fast path's packets, as its receive path
        does for each of its own; done before aioquic looks at it (timers, the ACK round),
        not per packet."""
        quic, received = link.quic, link.received_at
        if received and quic._close_at is not None and quic._state not in END_STATES \
                and not quic._close_pending:
            quic._close_at = max(quic._close_at, received + quic._idle_timeout())
        link.received_at = 0.0

    def _datagram(self, data: bytes, addr: tuple[str, int], now: float,
                  opened: set[Link]) -> None:
        """One UDP datagram: the fast path for sealed DATAGRAM packets, else aioquic."""
        if not data:
            return
        if data[0] & 0x80:  # long header: handshake
            try:
                header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
            except ValueError:
                return
            link = self.links.get(header.destination_cid)
            if link is None:
                if header.packet_type != PACKET_TYPE_INITIAL or len(data) < 1200 \
                        or self.stopping:
                    return
                link = self._accept(addr, header.destination_cid)
        else:
            link = self.links.get(data[1:1 + CID_LENGTH])
            if link is None:
                return
            if link.ready:
                taken = self._open(link, data, now)
                if taken:
                    opened.add(link)  # its ACK and idle timer: after the batch
                if taken is not False:
                    return
        if link.unacked or link.slot is not None:
            self._record_received(link)  # aioquic's duplicate check sees them
        link.quic.receive_datagram(data, addr, now)
        self._events(link)
        self._dirty.add(link)

    def _flush_dirty(self) -> None:
        """Send what is waiting: sealed packets as they are, aioquic's only for links
        aioquic had work on (its datagrams_to_send costs more than a whole fast packet)."""
        sealed, self._sealed = self._sealed, set()
        for link in sealed:
            if link.out and link not in self._dirty:
                self._send_sealed(link, link.quic._network_paths[0].addr)
        dirty, self._dirty = self._dirty, set()
        for link in dirty:
            self._flush(link)

    def _flush(self, link: Link) -> None:
        assert self.sock is not None and self.loop is not None
        sock = self.sock
        if link.out:
            self._send_sealed(link, link.quic._network_paths[0].addr)
        if link.unacked or link.slot is not None:
            self._record_received(link)  # the ACK aioquic builds covers them
        quic, dp = link.quic, self.datapath
        if link.slot is not None and dp is not None:
            with dp.locked():  # aioquic's packets take their numbers from the thread's
                quic._packet_number = dp.pn(link.slot)
                datagrams = quic.datagrams_to_send(now=time.monotonic())
                dp.set_pn(link.slot, quic._packet_number)
                self._sync(link)  # a key update aioquic just made
        else:
            datagrams = quic.datagrams_to_send(now=time.monotonic())
        for data, addr in datagrams:
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, OSError):
                link.drops += 1
        self._schedule(link)

    def _schedule(self, link: Link) -> None:
        """Arm the link's timer for aioquic's next deadline (ACK, loss, idle)."""
        assert self.loop is not None
        at = link.quic.get_timer()
        if at != link.timer_at:
            if link.timer is not None:
                link.timer.cancel()
            link.timer_at = at
            link.timer = None if at is None else self.loop.call_at(at, self._on_timer, link)

    def _send_sealed(self, link: Link, addr: tuple[str, int]) -> None:
        """Send the sealed packets, runs of equal size as one UDP GSO write each.

        With UDP_SEGMENT the kernel (or the NIC) cuts one buffer into datagrams of the
        given size, the last one may be shorter: one system call and one trip through
        the stack for up to 64 packets instead of one each.
        """
        assert self.sock is not None
        packets, link.out = link.out, []
        sock, count, start = self.sock, len(packets), 0
        while start < count:
            size = len(packets[start])
            limit = min(count, start + min(GSO_SEGMENTS, GSO_BYTES // size))
            end = start + 1
            while end < limit and len(packets[end]) == size:
                end += 1
            if end < limit and len(packets[end]) < size:
                end += 1  # a shorter packet may close the run
            try:
                if end - start > 1 and self.gso:
                    sock.sendmsg([b"".join(packets[start:end])],
                                 [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("H", size))], 0, addr)
                else:
                    for packet in packets[start:end]:
                        sock.sendto(packet, addr)
            except BlockingIOError:
                link.drops += end - start
            except OSError as error:
                if error.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT) and self.gso:
                    self.gso = False  # no GSO on this path: one packet per call from now on
                    link.out = packets[start:]
                    self._send_sealed(link, addr)
                    return
                link.drops += end - start
            start = end

    def _on_timer(self, link: Link) -> None:
        link.timer = link.timer_at = None
        if link.slot is not None:
            self._record_received(link)  # the compiled path's packets: the idle timer too
        self._idle_from_fast_path(link)
        link.quic.handle_timer(now=time.monotonic())
        self._events(link)
        self._flush(link)

    # -- connections ------------------------------------------------------------------------
    def _accept(self, addr: tuple[str, int], original_cid: bytes) -> Link:
        quic = _Connection(configuration=self._quic_config(is_client=False),
                           original_destination_connection_id=original_cid)
        link = Link(quic=quic, addr=(addr[0], addr[1]), dialed=False, started=time.monotonic())
        self._register(link, original_cid)
        self._register(link, quic.host_cid)
        return link

    def _dial(self, target: Target) -> None:
        host, port = parse_addr(target.addr)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except socket.gaierror as error:
            target.last_error = f"cannot resolve {host}: {error.strerror}"
            self._backoff(target)
            return
        addr = infos[0][4][:2]
        if self.sock is not None and self.sock.family == socket.AF_INET6 and ":" not in addr[0]:
            addr = ("::ffff:" + addr[0], addr[1])
        quic = _Connection(configuration=self._quic_config(is_client=True))
        link = Link(quic=quic, addr=(addr[0], addr[1]), dialed=True, started=time.monotonic())
        self._register(link, quic.host_cid)
        target.attempts += 1
        quic.connect(link.addr, now=time.monotonic())
        self._events(link)
        self._flush(link)

    def _register(self, link: Link, cid: bytes) -> None:
        self.links[cid] = link
        link.cids.add(cid)
        self.all_links.add(link)
        if link.slot is not None and self.datapath is not None:
            self.datapath.cid(link.slot, cid)

    def _forget(self, link: Link) -> None:
        for cid in link.cids:
            if self.links.get(cid) is link:
                del self.links[cid]
        link.cids.clear()
        self.all_links.discard(link)
        if link.timer is not None:
            link.timer.cancel()
            link.timer = None
        if self._cut(link):
            LOG.info("%s: peer %s (%s) left", self.network, link.name, link.advertised)

    def _cut(self, link: Link, records: bool = True) -> bool:
        """No frame goes to or comes from ``link`` any more, from now on, while its
        connection closes (revoked, replaced, gone): out of the peers and the compiled
        data path, its MACs and (with ``records``) its DNS records forgotten. True if it
        was a peer."""
        link.ready = False
        if link.slot is not None and self.datapath is not None:
            self.datapath.remove(link.slot)  # its connection ids and MACs go with it
            link.slot = None
        if not link.name or self.peers.get(link.name) is not link:
            return False
        del self.peers[link.name]
        for mac in [m for m, owner in self.macs.items() if owner is link]:
            del self.macs[mac]
        if records:
            self._write_peer_records(link.name, None)
        return True

    def _events(self, link: Link) -> None:
        quic = link.quic
        while (event := quic.next_event()) is not None:
            if isinstance(event, DatagramFrameReceived):
                if link.ready:
                    frame = event.data
                    self._learn(frame[6:12], link)
                    link.rx_packets += 1
                    link.rx_bytes += len(frame)
                    try:
                        os.write(self.tap_fd, NO_VNET + frame if self.vnet else frame)
                    except OSError:
                        link.drops += 1
                else:
                    link.drops += 1
            elif isinstance(event, StreamDataReceived):
                link.inbox += event.data  # kept until the peer's certificate is verified
                link.stream = event.stream_id
                self._read_inbox(link)
            elif isinstance(event, HandshakeCompleted):
                self._handshake_done(link)
            elif isinstance(event, ConnectionIdIssued):
                self._register(link, event.connection_id)
            elif isinstance(event, ConnectionIdRetired):
                link.cids.discard(event.connection_id)
                if self.links.get(event.connection_id) is link:
                    del self.links[event.connection_id]
                if link.slot is not None and self.datapath is not None:
                    self.datapath.cid(link.slot, event.connection_id, add=False)
            elif isinstance(event, ConnectionTerminated):
                self._terminated(link, event)

    def _read_inbox(self, link: Link) -> None:
        while link.name is not None and b"\n" in link.inbox and link.cids:
            line, link.inbox = link.inbox.split(b"\n", 1)
            self._message(link, line)

    def _handshake_done(self, link: Link) -> None:
        where = format_addr(link.addr)
        try:
            name = verify_peer(link.quic.tls._peer_certificate, self.identity.ca,
                               self.identity.crl)
        except PeerRefused as refusal:
            LOG.warning("%s: refused %s: %s", self.network, where, refusal)
            self.refused[where] = {"addr": where, "reason": str(refusal), "at": time.time(),
                                   "by": "us"}
            if link.quic._is_client and self.loop is not None:
                # Let our Finished reach the server first: it then judges our certificate
                # too (and logs it), and our reason arrives in a 1-RTT packet: a close
                # during the handshake carries no reason phrase (RFC 9000 10.2.3).
                self.loop.call_later(0.1, self._refuse, link, str(refusal))
            else:
                self._refuse(link, str(refusal))
            return
        self.refused.pop(where, None)
        self._recheck_by(link.quic.tls._peer_certificate)
        if name == self.name:  # our own address, learned from a peer
            self.own_addrs.add(where)
            self.targets.pop(where, None)
            link.quic.close(error_code=0, reason_phrase="self")
            return
        link.name = name
        if link.dialed:
            link.stream = link.quic.get_next_available_stream_id()
            self._send(link, {"t": "hello", "name": self.name, "boot": self.boot,
                              "port": self.listen[1], "fast": 1})
        self._read_inbox(link)

    def _refuse(self, link: Link, reason: str) -> None:
        link.quic.close(error_code=0x100, reason_phrase=f"refused: {reason}")
        self._flush(link)

    def _terminated(self, link: Link, event: ConnectionTerminated) -> None:
        where = format_addr(link.addr)
        reason = event.reason_phrase or f"error {event.error_code:#x}"
        if reason.startswith("refused:") and self.refused.get(where, {}).get("by") != "us":
            self.refused[where] = {"addr": where, "reason": reason[len("refused:"):].strip(),
                                   "at": time.time(), "by": "peer"}
            LOG.warning("%s: %s refused us: %s", self.network, where, reason)
        target = self.targets.get(where)
        if link.dialed and target is not None and not link.ready:
            target.last_error = reason
            self._backoff(target)
        elif target is not None and link.ready and self.peers.get(link.name or "") is link:
            target.attempts, target.next_at = 0, time.monotonic() + BACKOFF[0]
        self._forget(link)

    def _backoff(self, target: Target) -> None:
        delay = min(BACKOFF[1], BACKOFF[0] * 2 ** max(0, target.attempts - 1))
        target.next_at = time.monotonic() + delay

    # -- control messages -------------------------------------------------------------------
    def _send(self, link: Link, message: dict[str, object]) -> None:
        if link.stream is None:
            return
        link.quic.send_stream_data(link.stream, json.dumps(message).encode() + b"\n")
        self._dirty.add(link)

    def _message(self, link: Link, line: bytes) -> None:
        try:
            message = json.loads(line)
            kind = message["t"]
        except (ValueError, KeyError, TypeError):
            LOG.warning("%s: bad control message from %s", self.network, link.name)
            return
        if kind == "hello":
            self._hello(link, message)
        elif not link.ready:
            return
        elif kind == "peers":
            for addr in message.get("addrs", []):
                if isinstance(addr, str) and addr not in self.own_addrs \
                        and addr not in self.targets and not self._connected_to(addr):
                    self.targets[addr] = Target(addr, configured=False)
                    LOG.info("%s: learned peer address %s from %s", self.network, addr, link.name)
        elif kind == "records":
            lines = [str(x) for x in message.get("lines", [])][:4096]
            self._write_peer_records(str(link.name), lines)
        elif kind == "macs":
            for mac in message.get("macs", []):
                try:
                    self._learn(bytes.fromhex(mac), link)
                except ValueError:
                    continue
        elif kind == "crl":
            if self.store.accept_crl(self.network, str(message.get("pem", "")).encode()):
                self._reload_crl(announce=True)
        elif kind == "bye":
            target = self.targets.get(link.advertised)
            if target is not None and not target.configured:
                del self.targets[link.advertised]

    def _hello(self, link: Link, message: dict[str, object]) -> None:
        if message.get("name") != link.name:
            link.quic.close(error_code=0x101, reason_phrase="hello names another host")
            return
        link.boot = str(message.get("boot"))
        port = message.get("port")
        link.port = int(port) if isinstance(port, int) else link.addr[1]
        name = link.name
        existing = self.peers.get(name)
        if existing is not None and existing is not link:
            if existing.boot == link.boot:  # both dialed at once: keep the one min(name) dialed
                dialer = min(self.name, name)
                if (self.name if link.dialed else name) != dialer:
                    link.quic.close(error_code=0, reason_phrase="duplicate")
                    self._dirty.add(link)
                    return
            self._cut(existing, records=False)  # the new connection brings them again
            existing.quic.close(error_code=0, reason_phrase="replaced")
            self._dirty.add(existing)
        if not link.dialed:
            self._send(link, {"t": "hello", "name": self.name, "boot": self.boot,
                              "port": self.listen[1], "fast": 1})
        link.ready = True
        link.fast = message.get("fast") == 1 and self.fast_path
        if self.datapath is not None:
            if link.slot is None:
                self._attach(link)
        elif link.protection is None:  # before any key update (nova_quic.packets)
            pair = link.quic._cryptos[Epoch.ONE_RTT]
            link.protection = Protection(pair, CID_LENGTH)
            if self._scratch is None and pair.send.cipher_suite is not None:
                self._scratch = scratch(pair.send.cipher_suite, CID_LENGTH)
        self.peers[name] = link
        target = self.targets.get(link.advertised)
        if target is not None:
            target.attempts, target.last_error = 0, ""
        elif not link.dialed:
            self.targets[link.advertised] = Target(link.advertised, configured=False)
        LOG.info("%s: peer %s connected (%s, %s)", self.network, name, link.advertised,
                 "dialed" if link.dialed else "accepted")
        self._send(link, {"t": "records", "lines": self.records})
        self._send(link, {"t": "macs", "macs": sorted(m.hex() for m in self.local_macs)})
        crl = self.store.folder(self.network) / "crl.pem"
        if crl.exists():
            self._send(link, {"t": "crl", "pem": crl.read_text()})
        self._announce_peers()

    def _announce_peers(self) -> None:
        for link in self.peers.values():
            others = [p.advertised for p in self.peers.values() if p is not link]
            self._send(link, {"t": "peers", "addrs": others})

    def _connected_to(self, addr: str, dialing: bool = True) -> bool:
        """A verified link to ``addr`` exists (or, with ``dialing``, a dial is under way)."""
        return any(link.advertised == addr or format_addr(link.addr) == addr
                   for link in self.all_links
                   if link.name is not None or (dialing and link.dialed))

    # -- DNS records ------------------------------------------------------------------------
    def _local_records(self) -> list[str]:
        if self.hosts_dir is None or not self.hosts_dir.is_dir():
            return []
        lines: list[str] = []
        for path in sorted(self.hosts_dir.iterdir()):
            if path.name.startswith(("peer.", ".")):
                continue
            try:
                lines += [x for x in path.read_text().splitlines() if x.strip()]
            except OSError:
                continue
        return lines

    def _write_peer_records(self, peer: str, lines: list[str] | None) -> None:
        if lines:
            self.peer_records[peer] = lines
        else:
            self.peer_records.pop(peer, None)
        self._sync_records()

    def _sync_records(self) -> None:
        """``hosts/peer.NAME`` for each connected peer's records, and no other peer file.

        Called again every tick: the folder appears only once dnsmasq runs, and a
        previous run of the endpoint may have left files of peers that are gone.
        """
        if self.hosts_dir is None or not self.hosts_dir.is_dir():
            return
        wanted = {f"peer.{name}": "\n".join(lines) + "\n"
                  for name, lines in self.peer_records.items() if name in self.peers}
        removed = False
        for path in self.hosts_dir.iterdir():
            if path.name.startswith("peer.") and path.name not in wanted:
                path.unlink(missing_ok=True)
                removed = True
        for name, text in wanted.items():
            path = self.hosts_dir / name
            try:
                if path.read_text() == text:
                    continue
            except OSError:
                pass
            replace_file(path, text, mode=0o644,
                         tmp=self.hosts_dir.parent / f".{name}.tmp")  # outside the watched folder
            removed = True  # a changed file may have lost names too
        if removed:
            self._reload_dnsmasq()

    def _reload_dnsmasq(self) -> None:
        """dnsmasq adds names from hostsdir by itself but forgets removed ones only on SIGHUP."""
        if not self.dnsmasq_conf:
            return
        # not `dnsmasq --test` of the same file (nova up checks it): a SIGHUP would end it
        for pid in find_processes(f"--conf-file={self.dnsmasq_conf}", "dnsmasq", ("--test",)):
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    # -- housekeeping -----------------------------------------------------------------------
    def _reload_crl(self, announce: bool) -> None:
        self.identity.crl = self.store.crl(self.network)
        path = self.store.folder(self.network) / "crl.pem"
        self.crl_mtime = path.stat().st_mtime if path.exists() else 0.0
        self._recheck_peers()
        if announce and path.exists():
            pem = path.read_text()
            for link in self.peers.values():
                self._send(link, {"t": "crl", "pem": pem})

    def _recheck_by(self, cert: x509.Certificate) -> None:
        """Re-judge the peers no later than just after ``cert`` expires."""
        left = (cert.not_valid_after_utc - utcnow()).total_seconds()
        self.recheck_at = min(self.recheck_at, time.monotonic() + max(0.0, left) + 0.1)

    def _recheck_peers(self) -> None:
        """Judge every connected peer's certificate again (revoked, or expired since its
        handshake) and drop those it no longer admits. The next time: in RECHECK_EVERY
        seconds, or just after the first remaining certificate expires."""
        self.recheck_at = time.monotonic() + RECHECK_EVERY
        for name, link in list(self.peers.items()):
            try:
                verify_peer(link.quic.tls._peer_certificate, self.identity.ca, self.identity.crl)
            except PeerRefused as refusal:
                LOG.warning("%s: dropping peer %s: %s", self.network, name, refusal)
                self.refused[format_addr(link.addr)] = {
                    "addr": format_addr(link.addr), "reason": str(refusal), "at": time.time(),
                    "by": "us"}
                self._cut(link)  # at once, not when the close is done
                link.quic.close(error_code=0x100, reason_phrase=f"refused: {refusal}")
                self._dirty.add(link)
            else:
                self._recheck_by(link.quic.tls._peer_certificate)

    def tick(self) -> None:
        """Every half second: dial, ping, exchange records and MACs, write status."""
        now = time.monotonic()
        for target in list(self.targets.values()):
            if target.addr in self.own_addrs or self._connected_to(target.addr):
                continue
            if now >= target.next_at and not self.stopping:
                self._backoff(target)  # the next try, unless this one succeeds first
                self._dial(target)
        for link in list(self.all_links):
            if link.name is None and now - link.started > HANDSHAKE_TIMEOUT:
                link.quic.close(error_code=0, reason_phrase="handshake timed out")
                self._dirty.add(link)
        path = self.store.folder(self.network) / "crl.pem"
        mtime = path.stat().st_mtime if path.exists() else 0.0
        if mtime != self.crl_mtime:
            self._reload_crl(announce=True)
        elif now >= self.recheck_at:  # a certificate may have expired since its handshake
            self._recheck_peers()
        self._sync_records()
        records = self._local_records()
        if records != self.records:
            self.records = records
            for link in self.peers.values():
                self._send(link, {"t": "records", "lines": records})
        if self.datapath is not None:
            self.local_macs = self.datapath.local_macs()
        macs = frozenset(self.local_macs)
        if macs != self.sent_macs:
            self.sent_macs = macs
            for link in self.peers.values():
                self._send(link, {"t": "macs", "macs": sorted(m.hex() for m in macs)})
        self._flush_dirty()

    def ping(self) -> None:
        """Keepalive: one PING per peer (its ACK also refreshes the RTT estimate)."""
        for link in self.peers.values():
            link.quic.send_ping(0)
            self._dirty.add(link)
        self._flush_dirty()

    def status(self) -> dict[str, object]:
        """What ``nova net inspect`` shows."""
        peers = []
        for name, link in sorted(self.peers.items()):
            counts = [link.tx_packets, link.tx_bytes, link.rx_packets, link.rx_bytes, link.drops]
            if link.slot is not None and self.datapath is not None:
                counts = [a + b for a, b in zip(counts, self.datapath.stats(link.slot),
                                                strict=True)]
            peers.append({"name": name, "addr": link.advertised, "state": "connected",
                          "dialed": link.dialed,
                          "rtt_ms": round(link.quic._loss._rtt_smoothed * 1000, 3),
                          "tx_packets": counts[0], "tx_bytes": counts[1],
                          "rx_packets": counts[2], "rx_bytes": counts[3], "drops": counts[4],
                          "since": round(time.time() - (time.monotonic() - link.started), 3)})
        for target in self.targets.values():  # a dial under way is still "connecting"
            if target.addr in self.own_addrs or self._connected_to(target.addr, dialing=False):
                continue
            state = "refused" if target.addr in self.refused else "connecting"
            peers.append({"name": None, "addr": target.addr, "state": state,
                          "attempts": target.attempts, "error": target.last_error,
                          "configured": target.configured})
        return {"network": self.network, "hostname": self.name, "index": self.identity.index,
                "boot": self.boot, "pid": os.getpid(), "listen": format_addr(self.listen),
                "tap": self.config["tap"], "mtu": self.mtu, "updated": time.time(),
                "datapath": self.datapath_name,
                "channel_drops": self.datapath.stats(-1)[4] if self.datapath is not None else 0,
                "peers": peers, "refused": list(self.refused.values())}

    def write_status(self) -> None:
        """status.json (for inspect) and peers.json (learned addresses, for a restart)."""
        _write_json(self.state_dir / "status.json", self.status())
        learned = sorted(t.addr for t in self.targets.values() if not t.configured)
        _write_json(self.state_dir / "peers.json", learned)

    def _load_learned(self) -> list[str]:
        try:
            found = json.loads((self.state_dir / "peers.json").read_text())
        except (OSError, ValueError):
            return []
        return [x for x in found if isinstance(x, str)] if isinstance(found, list) else []

    # -- running ----------------------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        """The data path cannot go on: stop the loop; :meth:`run` raises with ``reason``."""
        self.failure = reason
        LOG.error("%s: the %s data path stopped: %s", self.network,
                  "compiled" if self.datapath is not None else "python", reason)
        assert self.loop is not None
        self.loop.stop()

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then say bye to every peer and close."""
        self.loop = loop = Loop()
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, loop.stop)
            self.open()
            assert self.sock is not None
            if self.datapath is not None:  # its thread reads the TAP and the socket
                loop.add_reader(self.datapath.channel.fileno(), self.on_channel)
                self.datapath.start()
            else:
                self._warm = KeepWarm(loop, self._exercise, WARM_EVERY, WARM_FOR)
                loop.add_reader(self.tap_fd, self.on_tap)
                loop.add_reader(self.sock.fileno(), self.on_socket)
            self._periodic()
            loop.run()
            if self.failure:
                raise OSError(f"the data path stopped: {self.failure}")
            self.shutdown()
        finally:
            if self.datapath is not None:
                self.datapath.close()
            loop.close()

    def _periodic(self) -> None:
        """Every half second: :meth:`tick`; :meth:`ping` and the status file less often."""
        assert self.loop is not None
        self.loop.call_later(0.5, self._periodic)  # first: a failing tick is logged, not fatal
        self.tick()
        now = time.monotonic()
        if now - self._last_ping >= PING_EVERY:
            self._last_ping = now
            self.ping()
        if now - self._last_status >= 1.0:
            self._last_status = now
            self.write_status()

    def shutdown(self) -> None:
        """Tell every peer we leave, close the connections, remove what we wrote."""
        assert self.loop is not None
        self.stopping = True
        for link in list(self.peers.values()):
            self._send(link, {"t": "bye"})
        self._flush_dirty()
        for link in list(self.all_links):
            link.quic.close(error_code=0, reason_phrase="endpoint stopped")
            self._flush(link)
        self.loop.run(duration=0.05)  # let the CONNECTION_CLOSE frames leave
        self.peers.clear()
        self._sync_records()
        (self.state_dir / "status.json").unlink(missing_ok=True)
        LOG.info("%s: endpoint stopped", self.network)


def _write_json(path: Path, data: object) -> None:
    replace_file(path, json.dumps(data, indent=1))


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m nova_quic.endpoint CONFIG.json``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m nova_quic.endpoint CONFIG.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("quic").setLevel(logging.WARNING)
    config = json.loads(Path(args[0]).read_text())
    try:
        Endpoint(config).run()
    except Exception as error:  # noqa: BLE001 - the log says why; the supervisor restarts us
        LOG.error("%s: %s", config.get("network"), error,
                  exc_info=not isinstance(error, OSError | NovaError))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
