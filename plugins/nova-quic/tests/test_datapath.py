"""The compiled data path (nova_quic/datapath.c) on real objects: its thread, the keys of
aioquic connections that completed a mutual-TLS handshake with the overlay's
certificates, and UDP sockets on loopback.

The TAP of each side is a SOCK_SEQPACKET socket pair: the thread reads and writes one
frame per call on it exactly as on a TAP (test_overlay.py runs the real TAPs, bridges and
capsules end to end); the pair lets a test write a frame in and read what came out.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aioquic.quic.events import DatagramFrameReceived
from aioquic.tls import CipherSuite, Epoch
from nova_quic import datapath as compiled
from nova_quic.endpoint import CID_LENGTH, ETHERNET, PIECE_HEADER, VNET, _Connection
from nova_quic.packets import Protection
from nova_quic.testing import connected

MAX_FRAME = 1380 + ETHERNET + 4
PIECE = MAX_FRAME + VNET + 1 - PIECE_HEADER  # as the endpoint's
BROADCAST, A_MAC, B_MAC = b"\xff" * 6, bytes.fromhex("020000000a0a"), bytes.fromhex("020000000b0b")


def _frame(dst: bytes, src: bytes, body: bytes, vnet: bytes = bytes(VNET)) -> bytes:
    return vnet + dst + src + b"\x08\x00" + body


class Side:
    """One host's data path: its thread, its "TAP" (``tap`` is the test's end) and UDP."""

    def __init__(self, update_every: int = 1 << 22, address: str = "127.0.0.1") -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.setblocking(False)
        self.tap, self._tap_theirs = ours, theirs
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.udp = socket.socket(family, socket.SOCK_DGRAM)
        self.udp.bind((address, 0))
        self.udp.setblocking(False)
        self.addr = self.udp.getsockname()[:2]
        self.dp = compiled.Datapath(theirs.fileno(), self.udp.fileno(), True, MAX_FRAME, PIECE,
                                    update_every=update_every)
        self.dp.start()

    def attach(self, quic: _Connection, to: tuple[str, int], fast: bool = True) -> int:
        """A link for ``quic``, its packets going to ``to`` (as the endpoint's _attach)."""
        pair, space = quic._cryptos[Epoch.ONE_RTT], quic._spaces[Epoch.ONE_RTT]
        slot = self.dp.add_link(fast, pair.send, pair.recv, quic._packet_number,
                                space.largest_received_packet)
        for cid in [c.cid for c in quic._host_cids]:
            self.dp.cid(slot, cid)
        self.dp.peer(slot, quic._peer_cid.cid, to)
        return slot

    def frames(self, timeout: float = 2.0, wanted: int = 1) -> list[bytes]:
        """What the thread wrote to the TAP: ``wanted`` frames, or what came in time."""
        found: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(found) < wanted and select.select([self.tap], [], [],
                                                    max(0, deadline - time.monotonic()))[0]:
            found.append(self.tap.recv(1 << 17))
        return found

    def messages(self, timeout: float = 2.0, kinds: bytes = b"UAKTE") -> list[bytes]:
        """Messages on the channel to the endpoint of the given kinds (waits for one)."""
        found: list[bytes] = []
        deadline = time.monotonic() + timeout
        while not found and select.select([self.dp.channel], [], [],
                                          max(0, deadline - time.monotonic()))[0]:
            while True:
                try:
                    message = self.dp.channel.recv(1 << 17)
                except BlockingIOError:
                    break
                if message[:1] in kinds:
                    found.append(message)
        return found

    def close(self) -> None:
        self.dp.close()
        for end in (self.tap, self._tap_theirs, self.udp):
            end.close()


@contextmanager
def sides(count: int = 2, **options: int | str) -> Iterator[list[Side]]:
    made: list[Side] = []
    try:
        for _ in range(count):
            made.append(Side(**options))
        yield made
    finally:
        for side in made:
            side.close()


def _capture() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    return sock


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_frames_cross_both_ways_whole_and_in_pieces(tmp_path: Path) -> None:
    client, server = connected(tmp_path)
    threads = _threads()
    with sides() as (a, b):
        assert _threads() == threads + 2  # one thread per data path
        slot_a, slot_b = a.attach(client, b.addr), b.attach(server, a.addr)
        first = a.dp.pn(slot_a)
        small = _frame(BROADCAST, A_MAC, b"hello" * 20)
        a.tap.send(small)
        assert b.frames() == [small]
        reply = _frame(A_MAC, B_MAC, b"back" * 30)
        b.tap.send(reply)
        assert a.frames() == [reply]
        # a TCP super-frame (virtio-net header asking for segmentation) crosses whole
        gso = bytes([1, 1]) + (54).to_bytes(2, "little") + (1448).to_bytes(2, "little") \
            + bytes(4)
        big = _frame(B_MAC, A_MAC, os.urandom(64000), vnet=gso)
        a.tap.send(big)
        assert b.frames() == [big]
        pieces = -(-len(big) // PIECE)
        assert a.dp.pn(slot_a) == first + 1 + pieces  # one number per packet sealed
        # the receiver hands every number it opened to aioquic's ACKs: it says so once
        assert [m[:2] for m in b.messages(kinds=b"A")] == [b"A" + bytes([slot_b])]
        ranges, largest, _when, last = b.dp.drain(slot_b)
        assert ranges == [(first, first + 1 + pieces)] and largest == first + pieces
        assert last > 0
        assert b.dp.drain(slot_b)[0] == []
        tx = a.dp.stats(slot_a)
        assert tx[0] == 2 and tx[1] == len(small) + len(big) - 2 * VNET and tx[4] == 0
        rx = b.dp.stats(slot_b)
        assert rx[2] == 2 and rx[3] == tx[1]
        assert a.dp.local_macs() == {A_MAC}  # a broadcast destination is no address
    assert _threads() == threads  # closed: the threads are gone


def test_aioquic_opens_what_the_thread_seals_and_the_thread_what_python_seals(
        tmp_path: Path) -> None:
    """The packets are QUIC: the peer's aioquic reads them as DATAGRAM frames, and the
    Python fast path (nova_quic.packets, a host without the compiled path) interoperates."""
    client, server = connected(tmp_path)
    capture = _capture()
    with sides(1) as (a,):
        a.attach(client, capture.getsockname())
        frame = _frame(B_MAC, A_MAC, b"x" * 100)
        a.tap.send(frame)
        packet, _ = capture.recvfrom(65536)
        server.receive_datagram(packet, a.addr, now=time.monotonic())
        events = [e for e in iter(server.next_event, None) if isinstance(e, DatagramFrameReceived)]
        assert [e.data for e in events] == [b"\x01" + frame]  # fast path kind 1: vnet + frame
        sealed = Protection(server._cryptos[Epoch.ONE_RTT], CID_LENGTH).seal(
            client.host_cid, 7, b"\x30\x01" + _frame(A_MAC, B_MAC, b"y" * 100))
        capture.sendto(sealed, a.addr)
        assert a.frames() == [_frame(A_MAC, B_MAC, b"y" * 100)]
    capture.close()


@pytest.mark.parametrize("suite", [CipherSuite.AES_128_GCM_SHA256, CipherSuite.AES_256_GCM_SHA384,
                                   CipherSuite.CHACHA20_POLY1305_SHA256], ids=lambda s: s.name)
def test_every_tls_13_cipher_suite_seals_what_aioquic_opens(tmp_path: Path,
                                                           suite: CipherSuite) -> None:
    """Each suite a peer may pick (AES-GCM with AES header protection, ChaCha20-Poly1305
    with ChaCha20 header protection): the peer's aioquic opens what the thread seals,
    and the thread opens what the Python fast path seals."""
    client, server = connected(tmp_path, suite)
    assert client._cryptos[Epoch.ONE_RTT].send.cipher_suite == suite
    capture = _capture()
    with sides(1) as (a,):
        a.attach(client, capture.getsockname())
        for size in (60, 1300):
            frame = _frame(B_MAC, A_MAC, os.urandom(size))
            a.tap.send(frame)
            server.receive_datagram(capture.recvfrom(65536)[0], a.addr, now=time.monotonic())
            events = [e for e in iter(server.next_event, None)
                      if isinstance(e, DatagramFrameReceived)]
            assert [e.data for e in events] == [b"\x01" + frame]
        sender = Protection(server._cryptos[Epoch.ONE_RTT], CID_LENGTH)
        reply = _frame(A_MAC, B_MAC, os.urandom(200))
        capture.sendto(sender.seal(client.host_cid, 9, b"\x30\x01" + reply), a.addr)
        assert a.frames() == [reply]
    capture.close()


def test_replayed_forged_and_foreign_packets_never_reach_the_tap(tmp_path: Path) -> None:
    client, server = connected(tmp_path)
    capture = _capture()
    with sides(2) as (a, b):
        a.attach(client, capture.getsockname())
        b.attach(server, a.addr)
        sealed = []
        for index in range(3):
            a.tap.send(_frame(B_MAC, A_MAC, bytes([index]) * 80))
            sealed.append(capture.recvfrom(65536)[0])
        capture.sendto(sealed[1], b.addr)
        assert len(b.frames()) == 1
        for packet in (sealed[1], sealed[1]):  # the same packet again: dropped
            capture.sendto(packet, b.addr)
        capture.sendto(sealed[0], b.addr)  # late, not replayed: delivered
        assert b.frames(timeout=0.5, wanted=3) == [_frame(B_MAC, A_MAC, bytes([0]) * 80)]
        forged = bytearray(sealed[2])
        forged[-3] ^= 1
        capture.sendto(bytes(forged), b.addr)  # fails to open: aioquic's to judge
        assert b.frames(timeout=0.3) == []
        messages = b.messages(kinds=b"U")
        assert [m[2 + m[1]:] for m in messages] == [bytes(forged)]
        assert compiled.from_sockaddr(messages[0][2:2 + messages[0][1]]) == capture.getsockname()
        capture.sendto(b"\x40" + os.urandom(8) + sealed[2][9:], b.addr)  # no such connection
        assert b.frames(timeout=0.3) == []
        capture.sendto(sealed[2], b.addr)
        assert len(b.frames()) == 1
    capture.close()


def test_packets_only_aioquic_can_read_go_to_the_endpoint(tmp_path: Path) -> None:
    """Handshake packets and aioquic's own 1-RTT packets (a PING) reach the endpoint's
    channel with their source address, not the TAP; aioquic then reads them."""
    client, server = connected(tmp_path)
    with sides(2) as (a, b):
        slot_a = a.attach(client, b.addr)
        b.attach(server, a.addr)
        long_header = b"\xc0" + os.urandom(1250)
        a.udp.sendto(long_header, b.addr)
        with a.dp.locked():  # as the endpoint's _flush: numbers from the thread
            client._packet_number = a.dp.pn(slot_a)
            client.send_ping(1)
            built = client.datagrams_to_send(now=time.monotonic())
            a.dp.set_pn(slot_a, client._packet_number)
        assert len(built) == 1
        a.udp.sendto(built[0][0], b.addr)
        messages = b.messages(kinds=b"U", timeout=2)
        if len(messages) < 2:
            messages += b.messages(kinds=b"U", timeout=2)
        payloads = [m[2 + m[1]:] for m in messages]
        assert payloads == [long_header, built[0][0]]
        assert b.frames(timeout=0.2) == []
        server.receive_datagram(payloads[1], a.addr, now=time.monotonic())
        assert server._spaces[Epoch.ONE_RTT].largest_received_packet == client._packet_number - 1
        # the next frame takes the number after aioquic's packet
        before = a.dp.pn(slot_a)
        assert before == client._packet_number
        a.tap.send(_frame(B_MAC, A_MAC, b"z" * 60))
        assert len(b.frames()) == 1 and a.dp.pn(slot_a) == before + 1


def test_key_updates_both_ways_lose_no_frame(tmp_path: Path) -> None:
    """After ``update_every`` packets the thread asks for a key update; the endpoint's
    aioquic makes it and the peer's aioquic follows; both threads take the new keys, and
    a packet of the old phase that arrives late still opens."""
    client, server = connected(tmp_path)
    with sides(2, update_every=4) as (a, b):
        slot_a, slot_b = a.attach(client, b.addr), b.attach(server, a.addr)
        for index in range(4):
            a.tap.send(_frame(B_MAC, A_MAC, bytes([index]) * 70))
        assert len(b.frames(wanted=4)) == 4
        assert [m[:2] for m in a.messages(kinds=b"K")] == [b"K" + bytes([slot_a])]
        # the endpoint: aioquic's key update, with a packet that carries it
        pair = client._cryptos[Epoch.ONE_RTT]
        with a.dp.locked():
            pair.update_key()
            client._packet_number = a.dp.pn(slot_a)
            client.send_ping(2)
            built = client.datagrams_to_send(now=time.monotonic())
            a.dp.set_pn(slot_a, client._packet_number)
            assert pair.send.key_phase == 1
            for send, context in ((True, pair.send), (False, pair.recv)):
                _suite, phase, key, iv, _hp = compiled.packet_keys(context)
                a.dp.keys(slot_a, send, phase, key, iv)
        b.tap.send(_frame(A_MAC, B_MAC, b"late" * 20))  # sealed in phase 0 by b
        assert a.frames() == [_frame(A_MAC, B_MAC, b"late" * 20)]  # a still opens phase 0
        a.tap.send(_frame(B_MAC, A_MAC, b"new" * 20))  # phase 1: b's thread cannot open it
        for data, _ in built:
            a.udp.sendto(data, b.addr)
        forwarded = b.messages(kinds=b"U")
        if len(forwarded) < 2:
            forwarded += b.messages(kinds=b"U")
        assert len(forwarded) == 2 and b.frames(timeout=0.2) == []
        for message in forwarded:  # the peer's aioquic follows the update
            server.receive_datagram(message[2 + message[1]:], a.addr, now=time.monotonic())
        server_pair = server._cryptos[Epoch.ONE_RTT]
        assert server_pair.recv.key_phase == 1 and server_pair.send.key_phase == 1
        for send, context in ((True, server_pair.send), (False, server_pair.recv)):
            _suite, phase, key, iv, _hp = compiled.packet_keys(context)
            b.dp.keys(slot_b, send, phase, key, iv)
        a.tap.send(_frame(B_MAC, A_MAC, b"after" * 20))
        assert b.frames() == [_frame(B_MAC, A_MAC, b"after" * 20)]
        b.tap.send(_frame(A_MAC, B_MAC, b"reply" * 20))
        assert a.frames() == [_frame(A_MAC, B_MAC, b"reply" * 20)]
        assert b.messages(timeout=0.2, kinds=b"U") == []


def test_frames_go_to_the_peer_behind_their_mac_or_to_every_peer(tmp_path: Path) -> None:
    """Two peers: unicast to a learned MAC crosses to its peer only, broadcast and unknown
    MACs to both; a peer without the fast path gets its frames through the endpoint."""
    for name in "123":
        (tmp_path / name).mkdir()
    first, second, third = (connected(tmp_path / name) for name in "123")
    c_mac = bytes.fromhex("020000000c0c")
    with sides(4) as (a, b, c, d):
        slot_b = a.attach(first[0], b.addr)
        slot_c = a.attach(second[0], c.addr)
        slot_d = a.attach(third[0], d.addr, fast=False)
        b.attach(first[1], a.addr)
        c.attach(second[1], a.addr)
        a.tap.send(_frame(BROADCAST, A_MAC, b"all" * 30))
        assert len(b.frames()) == len(c.frames()) == 1
        assert [m[:2] for m in a.messages(kinds=b"T")] == [b"T" + bytes([compiled.ALL])]
        c.tap.send(_frame(A_MAC, c_mac, b"from c" * 10))  # a learns where c_mac lives
        assert len(a.frames()) == 1
        a.tap.send(_frame(c_mac, A_MAC, b"to c" * 20))
        assert len(c.frames()) == 1 and b.frames(timeout=0.3) == []
        a.dp.mac(B_MAC, slot_b)  # announced by b's endpoint
        a.tap.send(_frame(B_MAC, A_MAC, b"to b" * 20))
        assert len(b.frames()) == 1 and c.frames(timeout=0.3) == []
        a.dp.mac(B_MAC, slot_d)  # moved behind the peer without the fast path
        a.tap.send(_frame(B_MAC, A_MAC, b"to d" * 20))
        message = a.messages(kinds=b"T")
        assert [m[:2] for m in message] == [b"T" + bytes([slot_d])]
        assert message[0][2:] == _frame(B_MAC, A_MAC, b"to d" * 20)
        a.dp.remove(slot_c)  # a peer that left: its MACs go with it, frames to it flood
        a.tap.send(_frame(c_mac, A_MAC, b"again" * 20))
        assert len(b.frames()) == 1 and c.frames(timeout=0.3) == []
        assert a.dp.stats(slot_b)[0] == 3  # broadcast, to b, the flood


def test_without_the_library_the_endpoint_says_why(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "_LIBRARY", None)
    monkeypatch.setattr(compiled, "HERE", tmp_path)
    assert compiled.load() is None
    with pytest.raises(OSError, match="was not built"):
        compiled.Datapath(0, 0, True, MAX_FRAME, PIECE)


def test_the_library_is_built() -> None:
    """setup.sh installs gcc and libssl-dev: pip builds the library with nova-quic."""
    assert compiled.library_path() is not None and compiled.load() is not None


def test_a_full_channel_drops_and_counts_and_frames_keep_crossing(tmp_path: Path) -> None:
    """The channel to the endpoint is bounded (4 MiB): while the endpoint does not read
    it, what does not fit is dropped and counted (``channel_drops`` in the status), the
    frames between TAP and peer keep flowing, and once read it carries messages again."""
    client, server = connected(tmp_path)
    with sides(2) as (a, b):
        a.attach(client, b.addr)
        b.attach(server, a.addr)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        handshake = b"\xc0" + bytes(1250)
        for _ in range(8000):  # far more than fits (each message holds about 2 KiB)
            sender.sendto(handshake, b.addr)
            time.sleep(0)
        deadline = time.monotonic() + 5
        while b.dp.stats(-1)[4] == 0:
            assert time.monotonic() < deadline, "nothing dropped: the channel is unbounded?"
            time.sleep(0.05)
        a.tap.send(_frame(B_MAC, A_MAC, b"still" * 20))
        assert b.frames() == [_frame(B_MAC, A_MAC, b"still" * 20)]
        queued = 0
        while True:
            try:
                b.dp.channel.recv(1 << 17)
            except BlockingIOError:
                break
            queued += 1
        dropped = b.dp.stats(-1)[4]
        assert queued > 100 and queued + dropped <= 8000 + 2  # (and an 'A' or two)
        sender.sendto(handshake, b.addr)
        assert b.messages(kinds=b"U") and b.dp.stats(-1)[4] == dropped
        sender.close()


def test_an_ipv6_underlay(tmp_path: Path) -> None:
    """Peers at IPv6 addresses: the thread sends to and reports sockaddr_in6 sources."""
    client, server = connected(tmp_path)
    with sides(2, address="::1") as (a, b):
        a.attach(client, b.addr)
        b.attach(server, a.addr)
        frame = _frame(B_MAC, A_MAC, b"six" * 40)
        a.tap.send(frame)
        assert b.frames() == [frame]
        a.udp.sendto(b"\xc0" + bytes(1250), b.addr)  # for aioquic: with its source
        [message] = b.messages(kinds=b"U")
        assert compiled.from_sockaddr(message[2:2 + message[1]]) == a.addr


def test_a_tap_that_fails_stops_the_thread_and_says_why() -> None:
    """The endpoint hears 'E' with the reason (and exits; its supervisor restarts it)."""
    threads = _threads()
    with sides(1) as (a,):
        a.tap.close()  # the stand-in's end of the TAP goes: the thread reads end of file
        [message] = a.messages(kinds=b"E")
        assert message.startswith(b"Eread from the TAP: ") and b"pipe" in message.lower()
        deadline = time.monotonic() + 2
        while _threads() != threads:  # the thread returned by itself
            assert time.monotonic() < deadline
            time.sleep(0.01)
