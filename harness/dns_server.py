"""A tiny authoritative-looking DNS server for tests: answers A, AAAA, MX, TXT, SRV and PTR
from a zone ({(name, type): [values]}) or a function of (name, type), NXDOMAIN otherwise
(SERVFAIL when a zone function raises: a name server that fails), over UDP on
ADDRESS (loopback, or the host side of a sandbox's veth) and a port of its own.
Used as the laptop's resolver for the DNS checks, and as the upstream of a sandbox host's
unbound (a blocklist that answers like Spamhaus does to a shared resolver)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

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


def zone_from_text(text: str) -> dict:
    """A zone file's records (records.py prints one) as DnsServer serves them, read by
    dnspython's zone parser: {(name, type): [values]}, a TXT value as its character-strings."""
    from dns import rdatatype, zone

    served: dict = {}
    for name, node in zone.from_text(text, origin=".", relativize=False, check_origin=False).nodes.items():
        for rdataset in node.rdatasets:
            kind = rdatatype.to_text(rdataset.rdtype)
            values = served.setdefault((name.to_text().rstrip(".").lower(), kind), [])
            for rdata in rdataset:
                if kind == "TXT":
                    values.append([s.decode() for s in rdata.strings])
                elif kind == "MX":
                    values.append(rdata.exchange.to_text().rstrip("."))
                else:
                    values.append(rdata.to_text())
    return served


class DnsServer:
    """Answers from ZONE (a mapping, or a function (name, type) -> values) until closed."""

    def __init__(self, zone: dict | Callable[[str, str], list[str]], address: str = "127.0.0.1", port: int = 0):
        self.zone = zone
        self.asked: list[tuple[str, str]] = []
        self.errors: list[str] = []  # what made it answer SERVFAIL
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.address, self.port = self.sock.getsockname()
        threading.Thread(target=self._serve, daemon=True).start()

    def values(self, name: str, kind: str) -> list[str]:
        if callable(self.zone):
            return self.zone(name, kind)
        return self.zone.get((name or ".", kind), [])

    def exists(self, name: str) -> bool:
        """Does NAME own records, or is it above names that do (an empty non-terminal such as
        _domainkey.example.org)? Then a question with no answer is NODATA, not NXDOMAIN: a
        resolver that minimises its questions (unbound) stops at an NXDOMAIN above the name."""
        if callable(self.zone):
            return False
        return name == "" or any(owner == name or owner.endswith("." + name) for owner, _ in list(self.zone))

    def _serve(self) -> None:
        kinds = {v: k for k, v in TYPES.items()}
        while True:
            try:
                query, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            ident = struct.unpack_from("!H", query)[0]
            name, end = _question(query)
            number = struct.unpack_from("!H", query, end)[0]
            kind = kinds.get(number, f"TYPE{number}")
            self.asked.append((name.lower(), kind))
            try:
                values = self.values(name.lower(), kind) if kind in TYPES else []
                flags = 0x8580 if values or self.exists(name.lower()) else 0x8583
                answers = b"".join(struct.pack("!HHHIH", 0xC00C, TYPES[kind], 1, 60, len(r)) + r
                                   for r in (_rdata(kind, v) for v in values))
            except Exception as error:  # a failing zone function, or a value the wire cannot carry
                self.errors.append(f"{name} {kind}: {error}")
                values, flags, answers = [], 0x8582, b""  # SERVFAIL
            header = struct.pack("!6H", ident, flags, 1, len(values), 0, 0)
            self.sock.sendto(header + query[12:end + 4] + answers, peer)

    def close(self) -> None:
        self.sock.close()


class ZoneFileServer(DnsServer):
    """Answers from a zone file (zone-file text, as records.py prints it), read again whenever
    it changed: the built-in host's DNS, rewritten after each of its deploys."""

    def __init__(self, path: str, address: str, port: int = 53):
        self.path, self._read = Path(path), None
        super().__init__({}, address=address, port=port)

    def _fresh(self) -> None:
        stamp = self.path.stat().st_mtime_ns if self.path.exists() else None
        if stamp != self._read:
            self.zone = zone_from_text(self.path.read_text()) if stamp else {}
            self._read = stamp

    def values(self, name: str, kind: str) -> list:
        self._fresh()
        return super().values(name, kind)


def serve_zone_file(address: str, path: str) -> None:
    """Serve the zone file PATH on ADDRESS port 53 until killed (python -m harness.sandbox dns)."""
    ZoneFileServer(path, address)
    threading.Event().wait()


@contextlib.contextmanager
def dnspython_asking(answer):
    """dnspython's default resolver asks a DnsServer answering with ANSWER, for the length of
    the block (as a host's python3 asks its unbound): yields the server."""
    import dns.resolver

    server = DnsServer(answer)
    previous = dns.resolver.default_resolver
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], server.port
    dns.resolver.default_resolver = resolver
    try:
        yield server
    finally:
        dns.resolver.default_resolver = previous
        server.close()
