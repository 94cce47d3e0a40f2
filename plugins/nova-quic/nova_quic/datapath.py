"""The compiled data path (``datapath.c``), bound with ctypes.

A thread in C carries the frames between the TAP and the UDP socket as sealed 1-RTT
packets, without Python and without the GIL; the endpoint (aioquic) keeps the
handshake, streams, ACKs, pings and key updates, and hears from the thread through
:attr:`Datapath.channel` (messages described in ``datapath.c``). On these machines the
Python fast path spent 50-130 µs of Python per traversal of a ping, four traversals per
round trip (docs/networks.md); this path spends a few µs.

pip builds the library with the package (``setup.py``: gcc and libssl-dev). Where it
was not built, :func:`load` answers None and the endpoint uses its Python fast path.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aioquic.quic.crypto import CryptoContext, derive_key_iv_hp

HERE = Path(__file__).resolve().parent
MAX_RANGES = 128  # as RANGES in datapath.c
ALL = 255  # 'T' for every peer without the fast path
_LIBRARY: ctypes.CDLL | None = None


def library_path() -> Path | None:
    """Where pip put the built library (``_datapath`` with the interpreter's suffix)."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = HERE / f"_datapath{suffix}"
        if path.exists():
            return path
    return None


def load() -> ctypes.CDLL | None:
    """The library, or None if it was not built (the endpoint then runs its Python path)."""
    global _LIBRARY  # noqa: PLW0603 - loaded once per process
    if _LIBRARY is None:
        path = library_path()
        if path is None:
            return None
        lib = ctypes.CDLL(str(path))
        p, i, i64, u64, buf = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_uint64,
                               ctypes.c_char_p)
        for name, restype, argtypes in (
                ("dp_open", p, [i, i, i, i, i]),
                ("dp_channel", i, [p]), ("dp_start", i, [p]), ("dp_stop", None, [p]),
                ("dp_close", None, [p]), ("dp_lock", None, [p]), ("dp_unlock", None, [p]),
                ("dp_link_add", i, [p, i, i, buf, buf, i64, i64, u64]),
                ("dp_link_keys", i, [p, i, i, i, buf, buf]),
                ("dp_link_peer", None, [p, i, buf, buf, i]),
                ("dp_cid", i, [p, i, buf, i]), ("dp_link_remove", None, [p, i]),
                ("dp_pn", i64, [p, i]), ("dp_set_pn", None, [p, i, i64]),
                ("dp_received", i, [p, i, i64]),
                ("dp_drain", i, [p, i, ctypes.POINTER(i64), i, ctypes.POINTER(ctypes.c_double)]),
                ("dp_stats", None, [p, i, ctypes.POINTER(u64)]),
                ("dp_mac", None, [p, buf, i]), ("dp_local_macs", i, [p, buf, i])):
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
        _LIBRARY = lib
    return _LIBRARY


def sockaddr(addr: tuple[str, int] | tuple) -> bytes:  # type: ignore[type-arg]
    """``struct sockaddr_in`` or ``sockaddr_in6`` of a socket address."""
    host, port = addr[0], addr[1]
    if ":" in host:
        return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) \
            + socket.inet_pton(socket.AF_INET6, host) + struct.pack("=I", 0)
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) \
        + socket.inet_aton(host) + bytes(8)


def from_sockaddr(raw: bytes) -> tuple[str, int]:
    """The inverse of :func:`sockaddr` (host, port)."""
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return socket.inet_ntoa(raw[4:8]), port


def packet_keys(context: CryptoContext) -> tuple[int, int, bytes, bytes, bytes]:
    """(cipher suite, key phase, key, iv, header protection key) of a 1-RTT context."""
    assert context.secret is not None and context.cipher_suite is not None
    key, iv, hp = derive_key_iv_hp(cipher_suite=context.cipher_suite, secret=context.secret,
                                   version=context.version)
    return int(context.cipher_suite), context.key_phase, key, iv, hp


class Datapath:
    """The C thread of one endpoint: its TAP, its UDP socket and its links.

    ``update_every``: packets sealed under one key before the thread asks for a key
    update (AES-GCM's limit is 2^23; tests make it small).
    """

    def __init__(self, tap_fd: int, sock_fd: int, vnet: bool, max_frame: int, piece: int,
                 update_every: int = 1 << 22) -> None:
        lib = load()
        if lib is None:
            raise OSError("the compiled data path was not built (nova_quic/_datapath*.so)")
        self._lib = lib
        self._dp = lib.dp_open(tap_fd, sock_fd, int(vnet), max_frame, piece)
        if not self._dp:
            raise OSError("the compiled data path could not start (out of memory?)")
        self.update_every = update_every
        self.channel = socket.socket(fileno=lib.dp_channel(self._dp))  # closed by dp_close
        self.channel.setblocking(False)
        self._ranges = (ctypes.c_int64 * (2 * MAX_RANGES))()
        self._info = (ctypes.c_double * 3)()
        self._stats = (ctypes.c_uint64 * 5)()

    def start(self) -> None:
        if self._lib.dp_start(self._dp) != 0:
            raise OSError("the compiled data path's thread did not start")

    def close(self) -> None:
        """Stop the thread and free everything (the TAP and socket stay the caller's)."""
        if self._dp:
            self.channel.detach()
            self._lib.dp_close(self._dp)
            self._dp = None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The thread waits while aioquic builds packets (their numbers come from here)."""
        self._lib.dp_lock(self._dp)
        try:
            yield
        finally:
            self._lib.dp_unlock(self._dp)

    def add_link(self, fast: bool, send: CryptoContext, recv: CryptoContext, next_pn: int,
                 largest: int) -> int:
        """A link whose handshake is done: its first 1-RTT keys. Returns its slot."""
        suite, send_phase, send_key, send_iv, send_hp = packet_keys(send)
        _suite, recv_phase, recv_key, recv_iv, recv_hp = packet_keys(recv)
        slot = self._lib.dp_link_add(self._dp, int(fast), suite, send_hp, recv_hp, next_pn,
                                     largest, self.update_every)
        if slot < 0:
            raise OSError(f"the compiled data path takes no more links (cipher suite {suite:#x})")
        self.keys(slot, True, send_phase, send_key, send_iv)
        self.keys(slot, False, recv_phase, recv_key, recv_iv)
        return slot

    def keys(self, slot: int, send: bool, phase: int, key: bytes, iv: bytes) -> None:
        if self._lib.dp_link_keys(self._dp, slot, int(send), phase, key, iv) != 0:
            raise OSError("the compiled data path refused a key")

    def peer(self, slot: int, cid: bytes, addr: tuple[str, int]) -> None:
        """Where the link's packets go (the peer's connection id, its address)."""
        raw = sockaddr(addr)
        self._lib.dp_link_peer(self._dp, slot, cid, raw, len(raw))

    def cid(self, slot: int, cid: bytes, add: bool = True) -> None:
        """One of our connection ids of the link (``add=False``: retired)."""
        self._lib.dp_cid(self._dp, slot, cid, int(add))

    def remove(self, slot: int) -> None:
        self._lib.dp_link_remove(self._dp, slot)

    def pn(self, slot: int) -> int:
        """The link's next packet number (with :meth:`locked`)."""
        return int(self._lib.dp_pn(self._dp, slot))

    def set_pn(self, slot: int, number: int) -> None:
        self._lib.dp_set_pn(self._dp, slot, number)

    def received(self, slot: int, number: int) -> bool:
        """Record a packet number the endpoint opened itself; False if it came before."""
        return self._lib.dp_received(self._dp, slot, number) == 0

    def drain(self, slot: int) -> tuple[list[tuple[int, int]], int, float, float]:
        """(ranges of packet numbers opened since the last drain, the largest, when it
        came, when the last packet came: 0.0 if none)."""
        count = self._lib.dp_drain(self._dp, slot, self._ranges, MAX_RANGES, self._info)
        ranges = self._ranges
        return ([(ranges[2 * i], ranges[2 * i + 1]) for i in range(count)],
                int(self._info[0]), self._info[1], self._info[2])

    def stats(self, slot: int) -> tuple[int, int, int, int, int]:
        """(tx packets, tx bytes, rx packets, rx bytes, drops) of the link; of slot -1,
        only drops: messages that did not fit in the channel to the endpoint."""
        self._lib.dp_stats(self._dp, slot, self._stats)
        return tuple(self._stats)  # type: ignore[return-value]

    def mac(self, mac: bytes, slot: int) -> None:
        """``mac`` lives behind the link in ``slot`` (-1: forget it)."""
        self._lib.dp_mac(self._dp, mac, slot)

    def local_macs(self) -> set[bytes]:
        """Source MACs the thread saw on the TAP: this host's instances."""
        out = ctypes.create_string_buffer(6 * 1024)
        count = self._lib.dp_local_macs(self._dp, out, 1024)
        return {out.raw[6 * i:6 * i + 6] for i in range(count)}
