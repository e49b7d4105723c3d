"""Files and the manifest: a backup's records, and the backups on this laptop.

A backup is a dated directory, <backup_dir>/<UTC timestamp>/, everything in it mode 600
(directories 700). manifest.json holds one Record per line (sha256 and size of every
stored file; path, owner, group, mode and mtime of every host file), and
manifest.json.sha256 its own sum. Here: the Record and where a host file is stored in a
backup (stored_path); the host tools' spellings read back (find's mtimes and modes,
vis(3) names, what ustar can hold); private files written with their sha256; the manifest
written and read back (checked); and the complete backups on the laptop (backups_in,
newest_backup, which a deploy of a bare host asks too).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path

from qmailhost.recovery.common import RecoveryError, options
from qmailhost.settings import Settings

FORMAT = "qmailhost-backup 1"
MANIFEST = "manifest.json"
_STAMP = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
_CHUNK = 1 << 20


# --- files and the manifest --------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One line of the manifest. kind: "file" or "dir" (a host path), "shadow",
    "message" or "envelope" (stored only). Host paths carry owner, group, mode, mtime."""

    kind: str
    path: str = ""
    stored: str = ""
    size: int = 0
    sha256: str = ""
    mtime_ns: int = 0
    mode: str = ""
    owner: str = ""
    group: str = ""
    envelope: str = ""  # a message's envelope (stored path)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in ("", 0) or k == "kind"},
                          ensure_ascii=True)


def stored_path(path: str) -> str:
    """Where host file PATH is kept inside a backup."""
    if not _plain(path, absolute=True):
        raise RecoveryError(f"refusing the unsafe path {path!r}")
    return "files" + path


def _plain(path: str, absolute: bool) -> bool:
    """No . or .. components, and absolute (or relative) as asked: safe to join and write."""
    parts = path.split("/")
    return path.startswith("/") == absolute and not any(p in (".", "..") for p in parts[1 if absolute else 0:])


def message_key(path: str) -> str:
    """A path's identity for "is it there already": a Maildir message is the same message in
    cur/ or new/, whatever its flags (the part after ':'); any other path is itself."""
    parent, _, name = path.rpartition("/")
    folder, _, sub = parent.rpartition("/")
    if sub in ("cur", "new") and name:
        return f"{folder}/*/{name.split(':', 1)[0]}"
    return path


def mtime_ns(text: str) -> int:
    """find's %T@ ("1764230780.1234567890") as whole nanoseconds, exactly."""
    seconds, _, fraction = text.partition(".")
    return int(seconds) * 10**9 + int((fraction + "000000000")[:9])


def octal_mode(text: str) -> str:
    """A mode as octal digits without leading zeros, as find's %m prints it (stat's
    %OMp%OLp prints "0700" for 700)."""
    return format(int(text, 8), "o")


_VIS_CSTYLE = {ord("n"): b"\n", ord("t"): b"\t", ord("r"): b"\r", ord("s"): b" ", ord("a"): b"\a",
               ord("b"): b"\b", ord("f"): b"\f", ord("v"): b"\v", ord("E"): b"\x1b", ord("\\"): b"\\"}


def unvis(text: str) -> str:
    """The name vis(3) encoded as TEXT (strunvis: \\ooo octal, C-style \\n \\t \\s ...,
    \\M- meta, \\^ control); text without a backslash is itself (bytes kept as surrogates)."""
    if "\\" not in text:
        return text
    data, out, i = text.encode(errors="surrogateescape"), bytearray(), 0
    while i < len(data):
        c = data[i]
        i += 1
        if c != 0x5C or i == len(data):
            out.append(c)
            continue
        c = data[i]
        i += 1
        if 0x30 <= c <= 0x37:  # up to three octal digits
            value, digits = c - 0x30, 1
            while digits < 3 and i < len(data) and 0x30 <= data[i] <= 0x37:
                value, digits, i = value * 8 + data[i] - 0x30, digits + 1, i + 1
            out.append(value & 0xFF)
        elif c in _VIS_CSTYLE:
            out += _VIS_CSTYLE[c]
        elif c == ord("M") and i + 1 < len(data) and data[i] in b"-^":
            kind, char = data[i], data[i + 1]
            i += 2
            out.append(0x80 | (char if kind == ord("-") else (0x7F if char == ord("?") else char & 0x1F)))
        elif c == ord("^") and i < len(data):
            out.append(0x7F if data[i] == ord("?") else data[i] & 0x1F)
            i += 1
        elif c in (ord("$"), ord("\n")):
            pass  # a hidden marker, a continued line: nothing
        else:
            out.append(c)
    return out.decode(errors="surrogateescape")


def fits_ustar(path: str) -> bool:
    """Can a ustar archive (what NetBSD's pax writes and reads) hold PATH (relative to /)?"""
    try:
        tarfile.TarInfo(path.lstrip("/")).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    except ValueError:
        return False
    return True


def _refuse_long_paths(records: Iterable[Record], what: str) -> None:
    """A path ustar cannot hold would be skipped by pax with a warning: refuse it up front."""
    for record in records:
        if not fits_ustar(record.path):
            raise RecoveryError(f"{record.path} cannot be {what} on this platform: pax's ustar format holds "
                                "paths of at most 100 bytes after a 155-byte directory prefix (rename it)")


def _pax_mtime(ns: int) -> str:
    return f"{ns // 10**9}.{ns % 10**9:09d}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _store(source, destination: Path) -> tuple[str, int]:
    """Copy the file object SOURCE to DESTINATION (new, mode 600): its sha256 and size."""
    private_dirs(destination.parent)
    digest, size = hashlib.sha256(), 0
    with os.fdopen(os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


def private_dirs(path: Path) -> None:
    """PATH and every missing parent, each mode 700 (mkdir's parents=True gives them 755)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)


def _write_private(directory: Path, stored: str, kind: str, data: bytes) -> Record:
    sha, size = _store(BytesIO(data), directory / stored)
    return Record(kind=kind, stored=stored, sha256=sha, size=size)


def write_manifest(directory: Path, header: dict, records: Iterable[Record]) -> None:
    """manifest.json (valid JSON, one record per line) and its sha256 beside it."""
    body = ",\n".join(r.to_json() for r in records)
    data = (json.dumps(header)[:-1] + ', "records": [\n' + body + "\n]}\n").encode()
    _store(BytesIO(data), directory / MANIFEST)
    _store(BytesIO(f"{hashlib.sha256(data).hexdigest()}  {MANIFEST}\n".encode()), directory / f"{MANIFEST}.sha256")


def read_manifest(directory: Path) -> tuple[dict, list[Record]]:
    """The manifest's header and records, after checking its own sum; RecoveryError if bad."""
    try:
        data = (directory / MANIFEST).read_bytes()
        recorded = (directory / f"{MANIFEST}.sha256").read_text().split()[0]
    except (OSError, IndexError):
        raise RecoveryError(f"{directory} is not a complete qmailhost backup (no {MANIFEST} or its sum)") from None
    if hashlib.sha256(data).hexdigest() != recorded:
        raise RecoveryError(f"{directory}/{MANIFEST} is damaged (its sha256 does not match)")
    try:
        document = json.loads(data)
    except ValueError:
        raise RecoveryError(f"{directory}/{MANIFEST} is damaged (not JSON)") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise RecoveryError(f"{directory}: unknown backup format {_format_of(document)!r}")
    entries = document.pop("records", None)
    if not isinstance(entries, list):
        raise RecoveryError(f"{directory}/{MANIFEST} is damaged (no list of records)")
    return document, [_record(directory, n, r) for n, r in enumerate(entries)]


_FIELDS = frozenset(Record.__dataclass_fields__)


def _format_of(document) -> object:
    return document.get("format") if isinstance(document, dict) else None


def _record(directory: Path, number: int, entry) -> Record:
    """A manifest line as a Record; a field a Record does not have (a link's target) is refused."""
    if not isinstance(entry, dict) or "kind" not in entry or not set(entry) <= _FIELDS:
        unknown = sorted(set(entry) - _FIELDS) if isinstance(entry, dict) else []
        name = entry.get("path") or entry.get("stored") if isinstance(entry, dict) else None
        raise RecoveryError(f"{directory}/{MANIFEST}: entry {name or number!r} is none backup.py writes"
                            + (f" (unknown fields: {', '.join(map(str, unknown))})" if unknown else ""))
    return Record(**entry)


def backups_in(root: Path) -> list[Path]:
    """The complete backups in ROOT, oldest first (dated names; .partial ones excluded)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _STAMP.match(p.name) and (p / MANIFEST).is_file())


def newest_backup(settings: Settings) -> tuple[Path, list[Record]] | None:
    """The newest complete backup on this laptop and its records (None: none, or it is damaged):
    what a deploy of a bare host asks before making anew what restore.py would put back."""
    backups = backups_in(options(settings).backup_root)
    if not backups:
        return None
    try:
        return backups[-1], read_manifest(backups[-1])[1]
    except RecoveryError:
        return None
