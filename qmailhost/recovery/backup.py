"""Backup: the plan (prepare phase, read-only) and the run (execution phase).

plan_backup lists the host in one round trip (the components' paths and, with
backup_queue, the queue's size), matches it against the previous backup and checks the
laptop side: a full or unwritable backup_dir is refused before anything is written.
Unchanged messages (same Maildir folder, unique name, size and mtime as listed on the
host) are hard-linked from the previous backup and not transferred again. run_backup
(the python.call of the deploy backup.py) streams the changed files as one tar, then
reads the password hashes and the pending messages, into <destination>.partial, renamed
when complete: never a half backup.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from pyinfra import host, logger

from qmailhost.platform import DEBIAN_SHELL, Platform, Shell
from qmailhost.recovery.common import Options, RecoveryError
from qmailhost.recovery.manifest import (
    _CHUNK,
    FORMAT,
    Record,
    _refuse_long_paths,
    _store,
    _write_private,
    backups_in,
    message_key,
    mtime_ns,
    octal_mode,
    private_dirs,
    read_manifest,
    sha256_file,
    stored_path,
    unvis,
    write_manifest,
)
from qmailhost.recovery.parts import _printf_end, _words, backup_parts, part_paths
from qmailhost.recovery.remote import Remote, _records
from qmailhost.settings import Settings, SettingsError

# --- backup: plan (prepare phase, read-only) ---------------------------------------------


# One round trip: every file and directory under the components' backup paths (shell
# words, expanded by the host's sh), and the queue's size when it is carried too.
_LIST_SCRIPT = r"""
list() {{ find "$@" \( -type f -o -type d \) {entries} 2>/dev/null; }}
for p in {paths}; do [ -e "$p" ] && list "$p"; done
[ {queue} = yes ] && [ -d {queue_dir}/mess ] && printf 'Q\t%s{end}' "$({usage})"
true
"""
_TYPES = {"f": "file", "d": "dir", "Regular File": "file", "Directory": "dir"}  # find's %y, stat's %HT


@dataclass
class BackupPlan:
    remote: Remote
    hostname: str
    accounts: tuple[str, ...]
    destination: Path
    records: list[Record]  # every host file and directory the backup will hold
    fetch: list[Record]  # files to stream from the host
    reuse: dict[str, tuple[Path, str]]  # host path -> (the same file in the previous backup, sha256)
    previous: Path | None
    queue_dir: str | None  # None: the queue is not backed up
    queue_bytes: int = 0
    shell: Shell = DEBIAN_SHELL  # the host's dialect (qmailhost/platform.py)


def plan_backup(remote: Remote, settings: Settings, opts: Options, platform: Platform) -> BackupPlan:
    """List the host, match it against the previous backup, check the laptop side."""
    accounts = tuple(a.name for a in settings.accounts)
    queue_dir = f"{platform.qmail_home}/queue" if opts.backup_queue else None
    paths = part_paths(backup_parts(platform), settings, platform)
    records, queue_bytes = _list_for_backup(remote, paths, queue_dir, platform.shell)
    previous = (backups_in(opts.backup_root) or [None])[-1]
    reuse = _reusable(records, previous)
    fetch = [r for r in records if r.kind == "file" and r.path not in reuse]
    if platform.shell.tar_format == "ustar":
        _refuse_long_paths(fetch, "backed up")
    fetch_bytes = sum(_blocks(r.size) for r in fetch)
    _check_destination(opts.backup_root, fetch_bytes + _blocks(queue_bytes) + 400 * len(records) + 65536,
                       len(records) - len(reuse) + 16)
    host.log(f"Will fetch {len(fetch)} files (about {_human(fetch_bytes)}) and link {len(reuse)} unchanged ones"
             + (f" from {previous.name}" if previous else ""), logger.info)
    return BackupPlan(remote, settings.hostname, accounts, _new_destination(opts.backup_root), records, fetch,
                      reuse, previous, queue_dir, queue_bytes, platform.shell)


def listing_script(paths: Iterable[str], queue_dir: str | None, shell: Shell) -> str:
    """The script that lists PATHS (and the queue's size) for a backup, in SHELL's dialect."""
    return _LIST_SCRIPT.format(entries=shell.list_entries, paths=_words(paths), end=_printf_end(shell.list_end),
                               queue="yes" if queue_dir else "no", queue_dir=queue_dir or "/nonexistent",
                               usage=shell.disk_usage.format(dir=f"{queue_dir or '/nonexistent'}/mess"))


def _list_for_backup(remote: Remote, paths: list[str], queue_dir: str | None,
                     shell: Shell) -> tuple[list[Record], int]:
    script = listing_script(paths, queue_dir, shell)
    records, queue_bytes = [], 0
    for fields in _records(remote.run(script, "listing the files to back up"), shell.list_end):
        if fields[0] == "E" and len(fields) == 8 and fields[1] in _TYPES:
            kind, size, mtime, mode, owner, group, path = fields[1:]
            path = unvis(path) if shell.vis_names else path
            if _in_maildir_tmp(path, _TYPES[kind]):
                continue
            records.append(Record(kind=_TYPES[kind], path=path, size=int(size), mtime_ns=mtime_ns(mtime),
                                  mode=octal_mode(mode), owner=owner, group=group))
        elif fields[0] == "Q":
            queue_bytes = int(fields[1] or 0)
    return records, queue_bytes


def _in_maildir_tmp(path: str, kind: str) -> bool:
    """A delivery in progress (a file in a Maildir's tmp/): never backed up."""
    return kind == "file" and path.rsplit("/", 2)[-2:-1] == ["tmp"] and "/Maildir" in path


def _reusable(records: list[Record], previous: Path | None) -> dict[str, tuple[Path, str]]:
    """Host files unchanged since PREVIOUS (same message key, size and mtime):
    path -> (its stored copy there, sha256)."""
    if previous is None:
        return {}
    try:
        _, old = read_manifest(previous)
    except RecoveryError as error:
        logger.warning(f"not reusing {previous}: {error}")
        return {}
    by_key = {(message_key(r.path), r.size, r.mtime_ns): r for r in old if r.kind == "file"}
    reuse = {}
    for record in records:
        match = by_key.get((message_key(record.path), record.size, record.mtime_ns))
        if record.kind == "file" and match:
            copy = previous / match.stored
            if copy.is_file() and copy.stat().st_size == match.size:
                reuse[record.path] = (copy, match.sha256)
    return reuse


def _blocks(size: int) -> int:
    return -(-size // 4096) * 4096


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_destination(root: Path, needed: int, inodes: int) -> None:
    """Refuse (one line, naming backup_dir) a full or unwritable laptop side, writing nothing."""
    existing = _nearest_existing(root)
    if existing.exists() and not existing.is_dir():
        raise SettingsError("backup_dir", f"{existing} is a file, not a directory",
                            "set backup_dir to a directory you can write")
    usage = os.statvfs(existing)
    free = usage.f_bavail * usage.f_frsize
    if free < needed:
        raise SettingsError("backup_dir", f"{existing} has {_human(free)} free but this backup needs about "
                            f"{_human(needed)}", "free some space there or set backup_dir to a disk with room")
    if usage.f_files and usage.f_favail < inodes:
        raise SettingsError("backup_dir", f"{existing} has {usage.f_favail} free inodes but this backup needs "
                            f"about {inodes}", "free some there or set backup_dir to another disk")
    try:  # a directory made and removed where the backup will go: leaves nothing behind
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as error:
        raise SettingsError("backup_dir", f"{root} cannot be written ({error.strerror})",
                            "set backup_dir to a directory you can write") from None


def _human(size: float) -> str:
    if size < 1024:
        return f"{size:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


def _new_destination(root: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate, n = root / stamp, 1
    while candidate.exists() or candidate.with_name(candidate.name + ".partial").exists():
        n += 1
        candidate = root / f"{stamp}-{n}"
    return candidate


# --- backup: run (execution phase) -------------------------------------------------------


def run_backup(plan: BackupPlan) -> None:
    """Write the backup into DESTINATION.partial, then rename it: never a half backup."""
    partial = plan.destination.with_name(plan.destination.name + ".partial")
    private_dirs(plan.destination.parent)
    partial.mkdir(mode=0o700)
    try:
        files = _link_unchanged(plan, partial) + _fetch_changed(plan, partial)
        stored = [_save_shadow(plan, partial)]
        if plan.queue_dir:
            stored += _save_queue(plan, partial)
        header = {"format": FORMAT, "hostname": plan.hostname, "accounts": list(plan.accounts),
                  "created": datetime.now(UTC).isoformat(timespec="seconds"),
                  "previous": plan.previous.name if plan.previous else None}
        dirs = [r for r in plan.records if r.kind == "dir"]
        write_manifest(partial, header, sorted(dirs + files, key=lambda r: r.path) + stored)
        partial.rename(plan.destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    fetched = sum(r.size for r in files if r.path not in plan.reuse)
    queued = sum(1 for r in stored if r.kind == "message")
    host.log(f"Backed up to {plan.destination}: {len(files) - len(plan.reuse)} files ({_human(fetched)}) "
             f"fetched, {len(plan.reuse)} unchanged ones linked, {queued} pending messages", logger.info)


def _link_unchanged(plan: BackupPlan, partial: Path) -> list[Record]:
    by_path = {r.path: r for r in plan.records}
    linked = []
    for path, (copy, sha256) in plan.reuse.items():
        target = partial / stored_path(path)
        private_dirs(target.parent)
        os.link(copy, target)
        linked.append(replace(by_path[path], stored=stored_path(path), sha256=sha256))
    return linked


def _fetch_changed(plan: BackupPlan, partial: Path) -> list[Record]:
    """Stream the changed files as one tar from the host; store each with its sha256."""
    if not plan.fetch:
        return []
    wanted = {r.path.lstrip("/"): r for r in plan.fetch}
    names = b"".join(name.encode(errors="surrogateescape") + b"\0" for name in wanted)
    fetched = []
    with _tar_from(plan.remote, plan.shell.tar_create, names, "streaming the files to back up") as archive:
        for member in archive:
            record = wanted.get(member.name)
            if record is None or not member.isfile():
                continue
            sha, size = _store(archive.extractfile(member), partial / stored_path(record.path))
            fetched.append(replace(record, stored=stored_path(record.path), sha256=sha, size=size))
    return fetched


@contextlib.contextmanager
def _tar_from(remote: Remote, script: str, feed: bytes, what: str) -> Iterator[tarfile.TarFile]:
    """The tar (or pax) stream SCRIPT writes on the host, read while FEED goes to its stdin
    (Remote.output: exit status 1, a file that changed or vanished, is accepted)."""
    with remote.output(script, feed, what) as stream, tarfile.open(fileobj=stream, mode="r|",
                                                                  bufsize=_CHUNK) as archive:
        yield archive


def hashes_script(accounts: Iterable[str], shell: Shell) -> str:
    """Prints "name:hash" of each of ACCOUNTS that has a hash (the platform's password field)."""
    users = " ".join(shlex.quote(a) for a in accounts) or "''"
    return (f"for u in {users}; do h=$({shell.password_field}); "
            "[ -n \"$h\" ] && printf '%s:%s\\n' \"$u\" \"$h\"; done; true")


def _save_shadow(plan: BackupPlan, partial: Path) -> Record:
    """The accounts' password hashes, into `shadow` (mode 600); never printed."""
    lines = plan.remote.run(hashes_script(plan.accounts, plan.shell), "reading the password hashes")
    return _write_private(partial, "shadow", "shadow", lines)


def _save_queue(plan: BackupPlan, partial: Path) -> list[Record]:
    """Each pending message as queue/<id>.msg and its qmail-queue envelope as queue/<id>.env."""
    queue, messages = {}, {}
    script = f"cd {plan.queue_dir} && {plan.shell.tar_trees} mess info local remote todo"
    with _tar_from(plan.remote, script, b"", "streaming the queue") as archive:
        for member in archive:
            if not member.isfile():
                continue
            part, number = member.name.split("/", 1)[0], member.name.rsplit("/", 1)[-1]
            if part == "mess":
                messages[number] = partial / "queue" / f"incoming-{number}"
                _store(archive.extractfile(member), messages[number])
            else:
                queue.setdefault(number, {})[part] = archive.extractfile(member).read()
    stored = []
    for number, incoming in messages.items():
        envelope = envelope_of(queue.get(number, {}))
        stored += keep_queued(partial, number, incoming, envelope) if envelope else []
        incoming.unlink(missing_ok=True)
    return stored


def envelope_of(parts: dict[str, bytes]) -> bytes | None:
    """qmail-queue's envelope (F sender, T recipients still pending) from a message's
    queue files: todo/ before qmail-send has read it, else info/ with local/ and remote/."""
    if "todo" in parts:
        fields = parts["todo"].split(b"\0")
        senders = [f for f in fields if f.startswith(b"F")]
        recipients = [f for f in fields if f.startswith(b"T")]
    elif "info" in parts:
        senders = [f for f in parts["info"].split(b"\0")[:1] if f.startswith(b"F")]
        pending = parts.get("local", b"") + parts.get("remote", b"")
        recipients = [f for f in pending.split(b"\0") if f.startswith(b"T")]
    else:
        return None
    if not senders or not recipients:
        return None
    return b"".join(f + b"\0" for f in [senders[0], *recipients]) + b"\0"


def keep_queued(partial: Path, number: str, incoming: Path, envelope: bytes) -> list[Record]:
    """Keep one pending message; its id (queue number, envelope, content) makes requeueing once-only."""
    message_sha = sha256_file(incoming)
    ident = hashlib.sha256(f"{number}\0{message_sha}\0".encode() + envelope).hexdigest()[:32]
    message = partial / "queue" / f"{ident}.msg"
    os.rename(incoming, message)
    env = _write_private(partial, f"queue/{ident}.env", "envelope", envelope)
    return [Record(kind="message", stored=f"queue/{ident}.msg", size=message.stat().st_size,
                   sha256=message_sha, envelope=env.stored), env]
