"""A tiny authoritative-looking DNS server for tests: answers A, AAAA, MX, TXT, SRV and PTR
from a zone ({(name, type): [values]}) or a function of (name, type), NXDOMAIN otherwise
(SERVFAIL when a zone function raises: a name server that fails), over UDP on
ADDRESS (loopback, or the host side of a sandbox's veth) and a port of its own.
Used as the laptop's resolver for the DNS checks, and as the upstream of a sandbox host's
unbound (a blocklist that answers like Spamhaus does to a shared resolver)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

TYPES = {"A": 1, "NS": 2, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33}


def _name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"


def _rdata(kind: str, value) -> bytes:
    """VALUE's wire form; a TXT value is one string, or a list of character-strings (as a zone's
    ( "..." "..." ) gives them), each at most 255 bytes."""
    if kind == "A":
        return socket.inet_pton(socket.AF_INET, value)
    if kind == "AAAA":
        return socket.inet_pton(socket.AF_INET6, value)
    if kind == "MX":
        return struct.pack("!H", 10) + _name(value)
    if kind == "TXT":
        strings = [value] if isinstance(value, str) else list(value)
        return b"".join(bytes([len(s.encode())]) + s.encode() for s in strings)
    if kind == "SRV":  # "priority weight port target"
        priority, weight, port, target = value.split()
        return struct.pack("!3H", int(priority), int(weight), int(port)) + _name(target.rstrip("."))
    return _name(value)


def _question(query: bytes) -> tuple[str, int]:
    """The (uncompressed) name a query asks about, and the offset after it."""
    labels, offset = [], 12
    while query[offset]:
        labels.append(query[offset + 1: offset + 1 + query[offset]].decode())
        offset += 1 + query[offset]
    return ".".join(labels), offset + 1


class DnsServer:
    """Answers from ZONE (a mapping, or a function (name, type) -> values) until closed."""

    def __init__(self, zone: dict | Callable[[str, str], list[str]], address: str = "127.0.0.1", port: int = 0):
        self.zone = zone
        self.asked: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.address, self.port = self.sock.getsockname()
        threading.Thread(target=self._serve, daemon=True).start()

    def values(self, name: str, kind: str) -> list[str]:
        if callable(self.zone):
            return self.zone(name, kind)
        return self.zone.get((name or ".", kind), [])

    def _serve(self) -> None:
        kinds = {v: k for k, v in TYPES.items()}
        while True:
            try:
                query, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            ident = struct.unpack_from("!H", query)[0]
            name, end = _question(query)
            kind = kinds.get(struct.unpack_from("!H", query, end)[0], "?")
            self.asked.append((name.lower(), kind))
            try:
                values, flags = (self.values(name.lower(), kind) if kind != "?" else []), None
            except Exception:
                values, flags = [], 0x8582  # SERVFAIL
            flags = flags or (0x8580 if values or name == "" else 0x8583)
            header = struct.pack("!6H", ident, flags, 1, len(values), 0, 0)
            answers = b"".join(struct.pack("!HHHIH", 0xC00C, TYPES[kind], 1, 60, len(r)) + r
                               for r in (_rdata(kind, v) for v in values))
            self.sock.sendto(header + query[12:end + 4] + answers, peer)

    def close(self) -> None:
        self.sock.close()
