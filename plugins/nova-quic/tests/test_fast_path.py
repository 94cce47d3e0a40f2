"""Pieces of the endpoint's fast path on real objects: aioquic connections that
completed a mutual-TLS handshake in memory with certificates from the overlay's CA,
and real file descriptors."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from aioquic.buffer import Buffer
from aioquic.tls import Epoch
from nova_quic.endpoint import CID_LENGTH, VNET, Endpoint, Link, _Connection, waiting
from nova_quic.packets import Protection
from nova_quic.testing import ADDR, connected


def test_fast_path_packets_move_aioquics_idle_timeout_when_it_looks(tmp_path: Path) -> None:
    client, _server = connected(tmp_path)
    link = Link(quic=client, addr=ADDR, dialed=True, started=1000.0)
    armed = client._close_at
    assert armed is not None
    Endpoint._idle_from_fast_path(link)  # nothing came by the fast path: left alone
    assert client._close_at == armed
    link.received_at = armed + 5.0  # fast-path packets kept coming
    Endpoint._idle_from_fast_path(link)
    assert client._close_at == armed + 5.0 + client._idle_timeout()
    assert link.received_at == 0.0
    moved = client._close_at
    link.received_at = armed - 1.0  # older than what aioquic saw since: never back
    Endpoint._idle_from_fast_path(link)
    assert client._close_at == moved
    client.close(error_code=0, reason_phrase="done")  # closing: its own deadlines stand
    pending = client._close_at
    link.received_at = armed + 30.0
    Endpoint._idle_from_fast_path(link)
    assert client._close_at == pending
    client.datagrams_to_send(now=armed + 6.0)  # the close goes out: CLOSING
    closing = client._close_at
    link.received_at = closing + 60.0
    Endpoint._idle_from_fast_path(link)
    assert client._close_at == closing


def test_waiting_tells_whether_a_read_would_find_something() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, theirs:
        more = waiting(ours.fileno())
        assert not more(0)
        theirs.send(b"one")
        theirs.send(b"two")
        assert more(0)
        ours.recv(16)
        assert more(0)
        ours.recv(16)
        assert not more(0)


def test_a_frame_in_the_peers_next_key_phase_reaches_the_tap_whole(tmp_path: Path) -> None:
    """The first packet after the peer's key update does not open with the current keys;
    aioquic's pair opens it and moves on, and the frame goes to the TAP as sent (through
    aioquic's receive path it would have been a DATAGRAM frame of the wrong shape).
    The TAP is a pipe here: the endpoint writes one frame per write either way."""
    client, server = connected(tmp_path)
    sender = Protection(client._cryptos[Epoch.ONE_RTT], CID_LENGTH)
    receiving = Link(quic=server, addr=ADDR, dialed=False, started=1000.0,
                     protection=Protection(server._cryptos[Epoch.ONE_RTT], CID_LENGTH))
    read_end, write_end = os.pipe()
    endpoint = Endpoint.__new__(Endpoint)  # only what _open uses: no TAP, socket or loop
    endpoint.vnet, endpoint.tap_fd, endpoint.macs, endpoint.datapath = True, write_end, {}, None
    try:
        frame = bytes(VNET) + bytes.fromhex("020000000002" "020000000001" "0800") + b"x" * 50
        expected = server._spaces[Epoch.ONE_RTT].expected_packet_number
        for number, update in ((expected, False), (expected + 1, True), (expected + 2, False)):
            if update:
                sender.update_key()
            packet = sender.seal(server.host_cid, number, b"\x30\x01" + frame)
            assert endpoint._open(receiving, packet, now=1000.0) is True
            assert os.read(read_end, 4096) == frame
        assert server._cryptos[Epoch.ONE_RTT].recv.key_phase == 1
        assert receiving.rx_packets == 3 and receiving.drops == 0
    finally:
        os.close(read_end)
        os.close(write_end)


def _receiving(server: _Connection) -> tuple[Endpoint, Link, int, int]:
    """An endpoint with only what the receive path uses; its "TAP" is a datagram socket
    pair (read end, write end), which keeps each frame the endpoint writes apart."""
    link = Link(quic=server, addr=ADDR, dialed=False, started=1000.0,
                protection=Protection(server._cryptos[Epoch.ONE_RTT], CID_LENGTH))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    read_end, write_end = ours.detach(), theirs.detach()
    os.set_blocking(read_end, False)
    endpoint = Endpoint.__new__(Endpoint)  # no TAP, socket or loop of its own
    endpoint.vnet, endpoint.tap_fd, endpoint.macs, endpoint.datapath = True, write_end, {}, None
    return endpoint, link, read_end, write_end


def _frame(marker: bytes) -> bytes:
    return bytes(VNET) + bytes.fromhex("020000000002" "020000000001" "0800") + marker * 50


def _tap_frames(read_end: int) -> list[bytes]:
    frames = []
    while True:
        try:
            frames.append(os.read(read_end, 4096))
        except BlockingIOError:
            return frames


def test_a_replayed_packet_never_reaches_the_tap(tmp_path: Path) -> None:
    """The fast path keeps the numbers it opened for aioquic's records until aioquic next
    looks; a replay (same number, valid seal) is dropped (None: it counts for nothing)
    before that and after it, a packet that arrives late but new is delivered."""
    client, server = connected(tmp_path)
    sender = Protection(client._cryptos[Epoch.ONE_RTT], CID_LENGTH)
    endpoint, link, read_end, write_end = _receiving(server)
    try:
        first = server._spaces[Epoch.ONE_RTT].expected_packet_number
        packets = {n: sender.seal(server.host_cid, n, b"\x30\x01" + _frame(bytes([65 + n - first])))
                   for n in range(first, first + 4)}
        for number in (first, first + 1, first + 3, first + 2):  # the third arrives late
            assert endpoint._open(link, packets[number], now=1000.0) is True
        assert [f[-1:] for f in _tap_frames(read_end)] == [b"A", b"B", b"D", b"C"]
        assert endpoint._open(link, packets[first + 1], now=1000.0) is None  # not yet recorded
        assert endpoint._open(link, packets[first + 3], now=1000.0) is None  # the largest
        assert _tap_frames(read_end) == []
        endpoint._record_received(link)
        assert link.unacked == []
        assert endpoint._open(link, packets[first + 2], now=1000.0) is None  # recorded now
        assert _tap_frames(read_end) == []
        assert link.rx_packets == 4
    finally:
        os.close(read_end)
        os.close(write_end)


def test_aioquics_next_packet_acknowledges_what_the_fast_path_opened(tmp_path: Path) -> None:
    """The ACK frame aioquic builds when the endpoint flushes the link covers the packets
    the fast path opened (sent over loopback UDP and opened with the client's keys)."""
    from aioquic.quic.packet import pull_ack_frame
    from nova_quic.loop import Loop

    client, server = connected(tmp_path)
    sender = Protection(client._cryptos[Epoch.ONE_RTT], CID_LENGTH)
    endpoint, link, read_end, write_end = _receiving(server)
    loop = Loop()  # the endpoint's own: _flush arms the link's timer on it
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        out.bind(("127.0.0.1", 0))
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5)
        server._network_paths[0].addr = peer.getsockname()
        endpoint.sock, endpoint.loop, endpoint._dirty = out, loop, set()
        first = server._spaces[Epoch.ONE_RTT].expected_packet_number
        numbers = [first, first + 1, first + 2, first + 5]
        for number in numbers:
            packet = sender.seal(server.host_cid, number, b"\x30\x01" + _frame(b"x"))
            assert endpoint._open(link, packet, now=1000.0) is True
        assert len(_tap_frames(read_end)) == 4
        endpoint._flush(link)
        data = peer.recv(65536)
        expected = client._spaces[Epoch.ONE_RTT].expected_packet_number
        _header, payload, _number = client._cryptos[Epoch.ONE_RTT].decrypt_packet(
            data, 1 + CID_LENGTH, expected)
        assert payload[0] in (0x02, 0x03), "no ACK frame first in aioquic's packet"
        acked, _delay = pull_ack_frame(Buffer(data=payload[1:]))
        assert all(number in acked for number in numbers)
        assert first + 3 not in acked and first + 4 not in acked
    finally:
        for fd in (read_end, write_end):
            os.close(fd)
        out.close()
        peer.close()
        loop.close()
