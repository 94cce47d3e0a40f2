"""Packet protection for the endpoint's fast path: 1-RTT short-header packets sealed
and opened with a connection's keys in as few steps as possible (RFC 9001 5.3, 5.4).

aioquic's ``CryptoPair`` does the same work through five Python layers per packet
(pair, context, AEAD wrapper, nonce, header protection). That costs little while the
caches are warm (7 µs to seal and open a packet here, 3 µs this way), but a ping's
packet finds the endpoint after 10 ms of idle, when every page it touches is cold:
then sealing took 137 µs through aioquic and 107-111 µs this way, opening 36-40 and
24-27 µs (docs/networks.md says where the rest of a round trip goes).

The keys come from the connection's own ``CryptoContext``: its secret, cipher suite and
version, through aioquic's key derivation. A key update gives the context a new
secret, which :class:`Protection` notices by identity and derives the packet keys again.
A packet in the next key phase fails to open here (:meth:`open` answers None) and is
left to aioquic, which then performs the update.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from aioquic.quic.crypto import CIPHER_SUITES, CryptoContext, CryptoPair, derive_key_iv_hp
from aioquic.quic.packet import decode_packet_number
from aioquic.tls import CipherSuite
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

SAMPLE = 16  # bytes of ciphertext that header protection samples
PN_MAX = 4  # the sample starts this far after the packet number's first byte
SHORT_HEADER = 0x40  # fixed bit set, header form short; low bits: packet number length - 1


class Keys:
    """One direction's 1-RTT keys, derived from a :class:`CryptoContext`.

    A key update changes the packet key and IV only, never the header protection key
    (RFC 9001 6), so an update's keys take ``mask`` from the keys they follow.
    """

    __slots__ = ("secret", "key_phase", "aead", "iv", "mask")  # noqa: RUF023 - reading order

    def __init__(self, context: CryptoContext, previous: Keys | None = None) -> None:
        assert context.secret is not None and context.cipher_suite is not None
        key, iv, hp = derive_key_iv_hp(cipher_suite=context.cipher_suite,
                                       secret=context.secret, version=context.version)
        self.secret = context.secret  # identity: a key update replaces it
        self.key_phase: int = context.key_phase
        self.iv = int.from_bytes(iv, "big")
        chacha = CIPHER_SUITES[context.cipher_suite][1] == b"chacha20-poly1305"
        self.aead: AESGCM | ChaCha20Poly1305 = ChaCha20Poly1305(key) if chacha else AESGCM(key)
        self.mask: Callable[[bytes], bytes]
        if previous is not None:
            self.mask = previous.mask
        elif chacha:
            self.mask = lambda sample: Cipher(algorithms.ChaCha20(hp, sample), mode=None) \
                .encryptor().update(bytes(5))
        else:
            self.mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update


class Protection:
    """Seal and open 1-RTT packets of one connection, with the keys of its ``pair``
    (aioquic's, which keeps doing everything else: handshake, key updates, ACKs).

    Make it once the handshake is complete and before the first key update: the header
    protection key is derived from the first 1-RTT secrets.
    """

    __slots__ = ("pair", "cid_length", "_send", "_recv", "_update")

    def __init__(self, pair: CryptoPair, cid_length: int) -> None:
        self.pair = pair
        self.cid_length = cid_length  # of our own connection ids: where the number starts
        self._send = Keys(pair.send)
        self._recv = Keys(pair.recv)
        self._update = False

    def update_key(self) -> None:
        """Go to the next keys with the next packet sealed (as QuicConnection's
        request_key_update, which aioquic's own packets then follow too)."""
        self.pair.update_key()
        self._update = True

    def seal(self, cid: bytes, number: int, payload: bytes) -> bytes:
        """``payload`` (frames) as a protected packet to ``cid`` with a 4-byte packet number:
        the bytes aioquic's ``pair.encrypt_packet`` makes of the same header."""
        pair, keys = self.pair, self._send
        truncated = number & 0xFFFFFFFF
        # A key update, asked for (update_key) or made (the peer's, through aioquic's
        # receive path): aioquic's own path applies it, then the new keys are taken.
        updating = self._update or keys.secret is not pair.send.secret
        first = SHORT_HEADER | (pair.key_phase if updating else keys.key_phase) << 2 | PN_MAX - 1
        header = bytes((first,)) + cid + truncated.to_bytes(PN_MAX, "big")
        if updating:
            packet = pair.encrypt_packet(header, payload, number)
            self._send, self._update = Keys(pair.send, keys), False
            return packet
        body = keys.aead.encrypt((keys.iv ^ number).to_bytes(12, "big"), payload, header)
        mask = keys.mask(body[:SAMPLE])  # the sample starts PN_MAX bytes after the number
        return bytes((first ^ mask[0] & 0x1F,)) + cid \
            + (truncated ^ int.from_bytes(mask[1:5], "big")).to_bytes(PN_MAX, "big") + body

    def open(self, packet: bytes, expected: int) -> tuple[int, int, bytes] | None:
        """``(first byte, packet number, payload)`` of a protected short-header packet, or
        None if it does not open with these keys: too short, forged, or in the next key
        phase (aioquic, given it, then updates the keys)."""
        offset = 1 + self.cid_length
        if len(packet) < offset + PN_MAX + SAMPLE:
            return None
        keys = self._recv
        if keys.secret is not self.pair.recv.secret:
            keys = self._recv = Keys(self.pair.recv, keys)
        mask = keys.mask(packet[offset + PN_MAX:offset + PN_MAX + SAMPLE])
        first = packet[0] ^ mask[0] & 0x1F
        length = (first & 3) + 1
        truncated = int.from_bytes(packet[offset:offset + length], "big") \
            ^ int.from_bytes(mask[1:1 + length], "big")
        number = decode_packet_number(truncated, length * 8, expected)
        header = bytes((first,)) + packet[1:offset] + truncated.to_bytes(length, "big")
        try:
            payload = keys.aead.decrypt((keys.iv ^ number).to_bytes(12, "big"),
                                        packet[offset + length:], header)
        except InvalidTag:
            return None
        return first, number, payload


def scratch(suite: CipherSuite, cid_length: int) -> Protection:
    """A :class:`Protection` with random keys of ``suite`` that opens what it seals: for
    keeping the code path warm (nova_quic.loop.KeepWarm), never for a packet that leaves."""
    pair, secret = CryptoPair(), os.urandom(48)
    for context in (pair.send, pair.recv):
        context.setup(cipher_suite=suite, secret=secret, version=1)
    return Protection(pair, cid_length)
