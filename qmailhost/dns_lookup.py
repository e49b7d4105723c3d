"""A minimal stub resolver (standard library only), for the status checks that ask DNS.

``Dns(server)`` asks one recursive resolver over UDP, a few seconds per question, for
A, AAAA, MX, TXT, SRV, PTR and NS records; ``resolv_conf_server()`` finds this laptop's.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
import time
from functools import cached_property
from pathlib import Path

DNS_TIMEOUT = 2  # seconds: a laptop without DNS is told so quickly


def _one_line(text, limit: int = 60) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


class DnsError(Exception):
    pass


RECORD_TYPES = {"A": 1, "NS": 2, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33}


def resolv_conf_server(path: str = "/etc/resolv.conf") -> str | None:
    """The first nameserver in resolv.conf, or None."""
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                return words[1]
    return None


class Dns:
    """Ask one recursive resolver over UDP, DNS_TIMEOUT seconds per question. Enough for
    the checks (A, AAAA, MX, TXT, PTR), without a dependency."""

    def __init__(self, server: str | None, port: int = 53, timeout: float = DNS_TIMEOUT):
        self.server, self.port, self.timeout = server, port, timeout

    @cached_property
    def unreachable(self) -> str | None:
        """Why there is no DNS to ask (None: there is), found out once, quickly."""
        if self.server is None:
            return "no nameserver in /etc/resolv.conf"
        try:
            self.lookup(".", "NS")
        except (OSError, DnsError) as error:
            return f"the resolver {self.server} did not answer within {self.timeout:g} s ({_one_line(error)})"
        return None

    def lookup(self, name: str, rtype: str) -> list[str]:
        """The records of TYPE for NAME (names lower-case, without the final dot)."""
        ident = secrets.randbelow(65536)
        query = struct.pack("!6H", ident, 0x0100, 1, 0, 0, 0) + _encode_name(name)
        query += struct.pack("!2H", RECORD_TYPES[rtype], 1)
        family = socket.AF_INET6 if ":" in self.server else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect((self.server, self.port))
            sock.send(query)
            deadline = time.monotonic() + self.timeout
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.01))
                reply = sock.recv(65535)
                if len(reply) >= 12 and struct.unpack_from("!H", reply)[0] == ident:
                    return _parse_reply(reply, RECORD_TYPES[rtype])


def _encode_name(name: str) -> bytes:
    labels = [label for label in name.rstrip(".").split(".") if label]
    return b"".join(bytes([len(label)]) + label.encode("idna") for label in labels) + b"\0"


def _parse_reply(reply: bytes, rtype: int) -> list[str]:
    _, flags, questions, answers, _, _ = struct.unpack_from("!6H", reply)
    rcode = flags & 0x000F
    if rcode == 3:  # NXDOMAIN
        return []
    if rcode:
        raise DnsError(f"the resolver answered rcode {rcode}")
    offset = 12
    for _ in range(questions):
        offset = _read_name(reply, offset)[1] + 4
    records = []
    for _ in range(answers):
        offset = _read_name(reply, offset)[1]
        kind, _, _, length = struct.unpack_from("!HHIH", reply, offset)
        offset += 10
        if kind == rtype:
            records.append(_decode_record(reply, offset, length, kind))
        offset += length
    return records


def _decode_record(reply: bytes, offset: int, length: int, kind: int) -> str:
    data = reply[offset: offset + length]
    if kind == RECORD_TYPES["A"]:
        return socket.inet_ntop(socket.AF_INET, data)
    if kind == RECORD_TYPES["AAAA"]:
        return socket.inet_ntop(socket.AF_INET6, data)
    if kind == RECORD_TYPES["MX"]:
        return _read_name(reply, offset + 2)[0]
    if kind == RECORD_TYPES["SRV"]:  # "priority weight port target"
        priority, weight, port = struct.unpack_from("!3H", reply, offset)
        return f"{priority} {weight} {port} {_read_name(reply, offset + 6)[0]}"
    if kind == RECORD_TYPES["TXT"]:
        strings, at = [], 0
        while at < len(data):
            strings.append(data[at + 1: at + 1 + data[at]].decode(errors="replace"))
            at += 1 + data[at]
        return "".join(strings)
    return _read_name(reply, offset)[0]  # NS, PTR


def _read_name(reply: bytes, offset: int) -> tuple[str, int]:
    """A (possibly compressed) name at OFFSET, and the offset just after it."""
    labels, end = [], None
    for _ in range(128):  # a bound against pointer loops
        length = reply[offset]
        if length & 0xC0 == 0xC0:
            end = offset + 2 if end is None else end
            offset = ((length & 0x3F) << 8) | reply[offset + 1]
            continue
        offset += 1
        if length == 0:
            break
        labels.append(reply[offset: offset + length].decode(errors="replace").lower())
        offset += length
    return ".".join(labels), end if end is not None else offset
