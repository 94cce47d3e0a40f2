"""The fast path's packet protection against aioquic's own (the real library, both
directions): the same bytes, each opening the other's packets, key updates either way."""

from __future__ import annotations

import os

import pytest
from aioquic.quic.crypto import CryptoPair
from aioquic.tls import CipherSuite
from nova_quic.packets import Protection, scratch

CID = bytes.fromhex("0102030405060708")
SUITES = [CipherSuite.AES_128_GCM_SHA256, CipherSuite.AES_256_GCM_SHA384,
          CipherSuite.CHACHA20_POLY1305_SHA256]


def pairs(suite: CipherSuite) -> tuple[CryptoPair, CryptoPair]:
    """Two ends of one connection: what one sends with, the other receives with."""
    one, two = os.urandom(48), os.urandom(48)
    a, b = CryptoPair(), CryptoPair()
    for pair, send, recv in ((a, one, two), (b, two, one)):
        pair.send.setup(cipher_suite=suite, secret=send, version=1)
        pair.recv.setup(cipher_suite=suite, secret=recv, version=1)
    return a, b


def header(number: int, length: int = 4, phase: int = 0) -> bytes:
    return bytes((0x40 | phase << 2 | length - 1,)) + CID \
        + (number & (1 << 8 * length) - 1).to_bytes(length, "big")


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_sealed_packets_are_aioquics_bytes_and_open_both_ways(suite: CipherSuite) -> None:
    a, b = pairs(suite)
    twin, _ = pairs(suite)  # aioquic's pair with a's keys, to compare bytes
    twin.send.setup(cipher_suite=suite, secret=a.send.secret, version=1)
    sender, receiver = Protection(a, len(CID)), Protection(b, len(CID))
    for number in (0, 1, 255, 70000, (1 << 32) + 5):
        payload = b"\x30\x01" + os.urandom(60 + number % 50)
        packet = sender.seal(CID, number, payload)
        assert packet == twin.encrypt_packet(header(number), payload, number)
        assert b.decrypt_packet(packet, 1 + len(CID), number) == (header(number), payload, number)
        assert receiver.open(packet, number) == (header(number)[0], number, payload)
    # aioquic's own packets (2-byte packet numbers: ACKs, pings, streams) open too
    payload = b"\x02" + os.urandom(40)
    packet = a.encrypt_packet(header(300, 2), payload, 300)
    assert receiver.open(packet, 299) == (header(300, 2)[0], 300, payload)


@pytest.mark.parametrize("suite", SUITES[:1] + SUITES[2:], ids=lambda s: s.name)
def test_key_updates_either_way_are_followed(suite: CipherSuite) -> None:
    a, b = pairs(suite)
    sender, receiver = Protection(a, len(CID)), Protection(b, len(CID))
    payload = b"\x30\x01frame"
    assert receiver.open(sender.seal(CID, 1, payload), 1) == (header(1)[0], 1, payload)
    sender.update_key()
    packet = sender.seal(CID, 2, payload)
    assert receiver.open(packet, 2) is None  # the next phase: left to aioquic...
    assert b.decrypt_packet(packet, 1 + len(CID), 2) == (header(2, phase=1), payload, 2)
    assert b.recv.key_phase == 1  # ...which updated b's keys
    assert receiver.open(sender.seal(CID, 3, payload), 3) == (header(3, phase=1)[0], 3, payload)
    # b now sends in phase 1 too, which a opens
    reply = receiver.seal(CID, 7, payload)
    assert sender.open(reply, 7) == (header(7, phase=1)[0], 7, payload)
    # and an update b made (a's aioquic receive path follows it) is followed by a's fast path
    receiver.update_key()
    reply = receiver.seal(CID, 8, payload)
    assert sender.open(reply, 8) is None
    a.decrypt_packet(reply, 1 + len(CID), 8)
    assert a.send.key_phase == 0  # back to phase 0, with new keys
    packet = sender.seal(CID, 4, payload)
    assert receiver.open(packet, 4) == (header(4, phase=0)[0], 4, payload)
    # two updates between a's packets: the same phase bit again, with other keys
    for number in (9, 10):
        receiver.update_key()
        a.decrypt_packet(receiver.seal(CID, number, payload), 1 + len(CID), number)
    assert receiver.open(sender.seal(CID, 5, payload), 5) == (header(5, phase=0)[0], 5, payload)


def test_short_forged_and_foreign_packets_do_not_open_and_do_no_harm() -> None:
    a, b = pairs(CipherSuite.AES_128_GCM_SHA256)
    sender, receiver = Protection(a, len(CID)), Protection(b, len(CID))
    packet = sender.seal(CID, 9, b"\x30\x01" + bytes(64))
    forged = packet[:-1] + bytes((packet[-1] ^ 1,))
    assert receiver.open(forged, 9) is None
    assert receiver.open(packet[:28], 9) is None  # too short to sample: not fed to the mask
    stranger = Protection(pairs(CipherSuite.AES_128_GCM_SHA256)[0], len(CID))
    assert receiver.open(stranger.seal(CID, 9, b"\x30\x01x" * 10), 9) is None
    assert receiver.open(packet, 9) == (header(9)[0], 9, b"\x30\x01" + bytes(64))


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_scratch_keys_open_what_they_seal_and_nobody_elses(suite: CipherSuite) -> None:
    mine, other = scratch(suite, len(CID)), scratch(suite, len(CID))
    packet = mine.seal(CID, 5, b"\x30\x01warm")
    assert mine.open(packet, 5) == (header(5)[0], 5, b"\x30\x01warm")
    assert other.open(packet, 5) is None  # random keys each: never a real peer's
