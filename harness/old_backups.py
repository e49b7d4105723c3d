"""Backups of the older format, made as backup.py wrote them until 2026-12 (a dated directory
of plain files and a manifest on the laptop), for the tests of what still reads them.

backup.py now runs restic on the host (tasks/backup.py); restore.py still puts back a backup
directory of this format (how an existing backup moves over: restore it onto a host that
has backup_repository, and its next snapshot carries it), and a bare deploy still holds
back the DKIM key or certificate such a directory holds. So the tests make such
directories here, with the writer that made them: the host listed in one round trip
through recovery's Remote (the model NetBSD host answers it in tests), its files streamed
as one tar, the password hashes and, with QUEUE, the pending messages with their
envelopes, into <root>/<UTC stamp>/ by way of .partial.
"""

from __future__ import annotations

import contextlib
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from qmailhost.platform import Platform
from qmailhost.recovery import Remote
from qmailhost.recovery.backup import envelope_of, hashes_script, keep_queued
from qmailhost.recovery.manifest import (
    _CHUNK,
    FORMAT,
    Record,
    _store,
    _write_private,
    mtime_ns,
    octal_mode,
    private_dirs,
    stored_path,
    unvis,
    write_manifest,
)
from qmailhost.recovery.parts import _words, backup_parts, part_paths
from qmailhost.recovery.remote import _records
from qmailhost.settings import Settings

LISTING = r"""
list() {{ find "$@" \( -type f -o -type d \) {entries} 2>/dev/null; }}
for p in {paths}; do [ -e "$p" ] && list "$p"; done
true
"""
KINDS = {"f": "file", "d": "dir", "Regular File": "file", "Directory": "dir"}  # find's %y, stat's %HT


@dataclass(frozen=True)
class Dialect:
    """How the writer listed and streamed on each platform: GNU find and tar on Debian; on
    NetBSD, stat(1) over find's batches (its %#N path vis(3)-encoded, so a newline, tab or
    backslash cannot break a record, each record newline-ended) and pax in ustar format."""

    list_entries: str  # find(1) arguments: "E<TAB>type<TAB>size<TAB>mtime<TAB>mode<TAB>owner<TAB>group<TAB>path"
    list_end: str
    vis_names: bool
    tar_create: str  # from /: a tar stream of the NUL-separated paths read from stdin, each alone
    tar_trees: str  # a tar stream of the trees named after it


DIALECTS = {
    "debian": Dialect("-printf 'E\\t%y\\t%s\\t%T@\\t%m\\t%u\\t%g\\t%p\\0'", "\0", False,
                      "tar -C / --no-recursion --null --verbatim-files-from -T - --ignore-failed-read -cf -",
                      "tar --ignore-failed-read -cf -"),
    "netbsd": Dialect("-exec stat -f 'E%t%HT%t%z%t%.9Fm%t%OMp%OLp%t%Su%t%Sg%t%#N' {} +", "\n", True,
                      "cd / && pax -w -d -0 -x ustar", "pax -w -x ustar"),
}


def write(remote: Remote, settings: Settings, platform: Platform, root: Path, queue: bool = False) -> Path:
    """A backup of the host REMOTE reaches into ROOT/<UTC stamp>/: its path."""
    records = _listed(remote, part_paths(backup_parts(platform), settings, platform), platform)
    stamp, number = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"), 1
    destination = root / stamp
    while destination.exists():  # (a second backup within the second)
        number += 1
        destination = root / f"{stamp}-{number}"
    partial = destination.with_name(destination.name + ".partial")
    private_dirs(root)
    partial.mkdir(mode=0o700)
    try:
        files = _fetched(remote, [r for r in records if r.kind == "file"], partial, platform)
        accounts = [a.name for a in settings.accounts]
        stored = [_write_private(partial, "shadow", "shadow",
                                 remote.run(hashes_script(accounts, platform.shell), "reading the password hashes"))]
        if queue:
            stored += _queued(remote, f"{platform.qmail_home}/queue", partial, platform)
        header = {"format": FORMAT, "hostname": settings.hostname, "accounts": accounts,
                  "created": datetime.now(UTC).isoformat(timespec="seconds"), "previous": None}
        dirs = [r for r in records if r.kind == "dir"]
        write_manifest(partial, header, sorted(dirs + files, key=lambda r: r.path) + stored)
        partial.rename(destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return destination


def _listed(remote: Remote, paths: list[str], platform: Platform) -> list[Record]:
    shell = DIALECTS[platform.name]
    script = LISTING.format(entries=shell.list_entries, paths=_words(paths))
    records = []
    for fields in _records(remote.run(script, "listing the files to back up"), shell.list_end):
        if fields[0] == "E" and len(fields) == 8 and fields[1] in KINDS:
            kind, size, mtime, mode, owner, group, path = fields[1:]
            path = unvis(path) if shell.vis_names else path
            if KINDS[kind] == "file" and path.rsplit("/", 2)[-2:-1] == ["tmp"] and "/Maildir" in path:
                continue  # a delivery in progress
            records.append(Record(kind=KINDS[kind], path=path, size=int(size), mtime_ns=mtime_ns(mtime),
                                  mode=octal_mode(mode), owner=owner, group=group))
    return records


def _fetched(remote: Remote, wanted: list[Record], partial: Path, platform: Platform) -> list[Record]:
    by_name = {r.path.lstrip("/"): r for r in wanted}
    names = b"".join(name.encode(errors="surrogateescape") + b"\0" for name in by_name)
    fetched = []
    with _tar_from(remote, DIALECTS[platform.name].tar_create, names, "streaming the files to back up") as archive:
        for member in archive:
            record = by_name.get(member.name)
            if record is not None and member.isfile():
                sha, size = _store(archive.extractfile(member), partial / stored_path(record.path))
                fetched.append(replace(record, stored=stored_path(record.path), sha256=sha, size=size))
    return fetched


def _queued(remote: Remote, queue_dir: str, partial: Path, platform: Platform) -> list[Record]:
    parts, messages = {}, {}
    script = f"cd {queue_dir} && {DIALECTS[platform.name].tar_trees} mess info local remote todo"
    with _tar_from(remote, script, b"", "streaming the queue") as archive:
        for member in archive:
            if member.isfile():
                part, number = member.name.split("/", 1)[0], member.name.rsplit("/", 1)[-1]
                if part == "mess":
                    messages[number] = partial / "queue" / f"incoming-{number}"
                    _store(archive.extractfile(member), messages[number])
                else:
                    parts.setdefault(number, {})[part] = archive.extractfile(member).read()
    stored = []
    for number, incoming in messages.items():
        envelope = envelope_of(parts.get(number, {}))
        stored += keep_queued(partial, number, incoming, envelope) if envelope else []
        incoming.unlink(missing_ok=True)
    return stored


@contextlib.contextmanager
def _tar_from(remote: Remote, script: str, feed: bytes, what: str) -> Iterator[tarfile.TarFile]:
    with remote.output(script, feed, what) as stream, tarfile.open(fileobj=stream, mode="r|",
                                                                  bufsize=_CHUNK) as archive:
        yield archive
