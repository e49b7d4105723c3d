"""Recovery: what backup.py and restore.py share.

A backup carries what a rebuilt host needs that the inventory does not hold: every
account's Maildir, the self-signed TLS pair, the accounts' password hashes, the TMDA
archive if any and, with backup_queue, the queue's pending messages. It is a dated
directory on the laptop, <backup_dir>/<UTC timestamp>/, everything in it mode 600
(directories 700), since mail is as private as keys:

    manifest.json          one record per line: sha256 and size of every stored file;
                           path, owner, group, mode and mtime of every host file
    manifest.json.sha256   the manifest's own sum
    files/<host path>      Maildir messages, the TLS pair, the TMDA archive
    shadow                 the accounts' "name:hash" lines (chpasswd -e input)
    queue/<id>.msg, .env   pending messages and their qmail-queue envelopes

Transfer: bulk data crosses as one tar stream over OpenSSH's `ssh`, run on the laptop
with the inventory's ssh_* host data (key authentication only). pyinfra's files.get
and files.put make one SFTP round trip per file, and its shell commands return
decoded text lines, unfit for binary data. Unchanged messages (same Maildir folder,
unique name, size and mtime as listed on the host) are hard-linked from the previous
backup and not transferred again. Restore adds only what the host lacks: it never
deletes or overwrites mail there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, FunctionCommand, operation
from pyinfra.api.exceptions import PyinfraError

from qmailhost.core.component import Component, Setting
from qmailhost.core.facts import STATE_DIR
from qmailhost.core.platform import Platform
from qmailhost.core.settings import Settings, SettingsError, boolean

FORMAT = "qmailhost-backup 1"
MANIFEST = "manifest.json"
TMDA_ARCHIVE = f"{STATE_DIR}/tmda-archive"  # tmda/ ARCHIVE_DIR
REQUEUED_DIR = f"{STATE_DIR}/requeued"  # one marker per requeued message: idempotent restores
_STAMP = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
_CHUNK = 1 << 20


class RecoveryError(PyinfraError):
    """A refusal or failure of backup or restore, in one line."""


# --- settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    backup_root: Path
    restore_from: Path | None
    backup_queue: bool


def options(settings: Settings) -> Options:
    """Where backups go and which one restore puts back, from the settings."""
    root = settings.backup_dir or f"~/qmailhost-backups/{settings.hostname}"
    return Options(Path(os.path.expanduser(str(root))), settings.restore_from, settings.backup_queue)


def _path(setting: str):
    def parse(value, _values=None) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str | os.PathLike):
            raise SettingsError(setting, f"{value!r} is not a path", f"set {setting} to a directory")
        return Path(os.path.expanduser(value))

    return parse


COMPONENT = Component(
    name="recovery",
    settings=(
        Setting("backup_dir", None, _path("backup_dir"),
                "where backups go, one `<UTC stamp>/` per run; default: `~/qmailhost-backups/<hostname>`"),
        Setting("restore_from", None, _path("restore_from"),
                "the backup `restore.py` puts back; default: the newest backup in `backup_dir`"),
        Setting("backup_queue", False, boolean("backup_queue"),
                "also carry pending messages (re-queued once on restore)"),
    ),
)


# --- the SSH side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Remote:
    """The host reached by OpenSSH's ssh with the inventory's ssh_* data, for streams."""

    name: str
    argv: tuple[str, ...]

    def command(self, script: str) -> list[str]:
        return [*self.argv, "sh -c " + shlex.quote(script)]

    def run(self, script: str, what: str) -> bytes:
        """SCRIPT's stdout (bytes); a one-line RecoveryError when it fails."""
        result = subprocess.run(self.command(script), stdin=subprocess.DEVNULL, capture_output=True)
        if result.returncode != 0:
            raise RecoveryError(f"host {self.name}: {what} failed (exit {result.returncode}): "
                                f"{_last_line(result.stderr)}")
        return result.stdout


_SSH_OPTIONS = {
    "ssh_port": lambda v: ["-p", str(v)],
    "ssh_user": lambda v: ["-l", str(v)],
    "ssh_key": lambda v: ["-i", os.path.expanduser(str(v)), "-o", "IdentitiesOnly=yes"],
    "ssh_config_file": lambda v: ["-F", os.path.expanduser(str(v))],
    "ssh_known_hosts_file": lambda v: ["-o", f"UserKnownHostsFile={os.path.expanduser(str(v))}"],
    "ssh_strict_host_key_checking": lambda v: ["-o", f"StrictHostKeyChecking={ {'off': 'no'}.get(v, v)}"],
}


def remote_for(data: dict, name: str) -> Remote:
    """A Remote from pyinfra host data (the same data the deploy connects with)."""
    if data.get("ssh_password"):
        raise SettingsError("ssh_password", "backup and restore stream over OpenSSH with keys only",
                            "set ssh_key (or load the key into an ssh agent)")
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR",
            "-o", "ServerAliveInterval=30"]
    for key, flags in _SSH_OPTIONS.items():
        if data.get(key) not in (None, ""):
            argv += flags(data[key])
    if data.get("ssh_allow_agent") is False:
        argv += ["-o", "IdentityAgent=none"]
    return Remote(name, (*argv, "--", str(data.get("ssh_hostname") or name)))


def _last_line(stderr: bytes) -> str:
    """The telling line of an error output (not tar's closing "Exiting with failure status")."""
    lines = [line for line in stderr.decode(errors="replace").strip().splitlines()
             if "Exiting with failure status" not in line]
    return lines[-1] if lines else "no error output"


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
    document = json.loads(data)
    if document.get("format") != FORMAT:
        raise RecoveryError(f"{directory}: unknown backup format {document.get('format')!r}")
    records = [Record(**r) for r in document.pop("records")]
    return document, records


def backups_in(root: Path) -> list[Path]:
    """The complete backups in ROOT, oldest first (dated names; .partial ones excluded)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _STAMP.match(p.name) and (p / MANIFEST).is_file())


# --- backup: plan (prepare phase, read-only) ---------------------------------------------


_LIST_SCRIPT = r"""
list() {{ find "$@" \( -type f -o -type d \) -printf 'E\t%y\t%s\t%T@\t%m\t%u\t%g\t%p\0' 2>/dev/null; }}
for u in {users}; do
  h=$(getent passwd "$u" | cut -d: -f6)
  [ -n "$h" ] && [ -d "$h/Maildir" ] && list "$h/Maildir"
done
for f in {tls}; do [ -f "$f" ] && list "$f"; done
[ -d {archive} ] && list {archive}
[ {queue} = yes ] && [ -d {queue_dir}/mess ] && printf 'Q\t%s\0' "$(du -sb {queue_dir}/mess | cut -f1)"
true
"""


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


def plan_backup(remote: Remote, settings: Settings, opts: Options, platform: Platform) -> BackupPlan:
    """List the host, match it against the previous backup, check the laptop side."""
    accounts = tuple(a.name for a in settings.accounts)
    queue_dir = f"{platform.qmail_home}/queue" if opts.backup_queue else None
    from qmailhost import tls

    listing = _list_for_backup(remote, accounts, tls.paths(platform) if settings.self_signed else (), queue_dir)
    records, queue_bytes = listing
    previous = (backups_in(opts.backup_root) or [None])[-1]
    reuse = _reusable(records, previous)
    fetch = [r for r in records if r.kind == "file" and r.path not in reuse]
    fetch_bytes = sum(_blocks(r.size) for r in fetch)
    _check_destination(opts.backup_root, fetch_bytes + _blocks(queue_bytes) + 400 * len(records) + 65536,
                       len(records) - len(reuse) + 16)
    host.log(f"Will fetch {len(fetch)} files (about {_human(fetch_bytes)}) and link {len(reuse)} unchanged ones"
             + (f" from {previous.name}" if previous else ""), logger.info)
    return BackupPlan(remote, settings.hostname, accounts, _new_destination(opts.backup_root), records, fetch,
                      reuse, previous, queue_dir, queue_bytes)


def _list_for_backup(remote: Remote, accounts, tls_files, queue_dir) -> tuple[list[Record], int]:
    script = _LIST_SCRIPT.format(
        users=" ".join(shlex.quote(a) for a in accounts) or "''",
        tls=" ".join(shlex.quote(f) for f in tls_files) or "/nonexistent",
        archive=TMDA_ARCHIVE, queue="yes" if queue_dir else "no", queue_dir=queue_dir or "/nonexistent")
    records, queue_bytes = [], 0
    for fields in _records(remote.run(script, "listing the files to back up")):
        if fields[0] == "E" and len(fields) == 8 and not _in_maildir_tmp(fields[7], fields[1]):
            kind, size, mtime, mode, owner, group, path = fields[1:]
            records.append(Record(kind="file" if kind == "f" else "dir", path=path, size=int(size),
                                  mtime_ns=mtime_ns(mtime), mode=mode, owner=owner, group=group))
        elif fields[0] == "Q":
            queue_bytes = int(fields[1] or 0)
    return records, queue_bytes


def _records(output: bytes) -> Iterator[list[str]]:
    for raw in output.split(b"\0"):
        if raw:
            yield raw.decode(errors="surrogateescape").split("\t", 7)


def _in_maildir_tmp(path: str, kind: str) -> bool:
    """A delivery in progress (a file in a Maildir's tmp/): never backed up."""
    return kind == "f" and path.rsplit("/", 2)[-2:-1] == ["tmp"] and "/Maildir" in path


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
    script = "tar -C / --no-recursion --null --verbatim-files-from -T - --ignore-failed-read -cf -"
    fetched = []
    with _tar_from(plan.remote, script, names, "streaming the files to back up") as archive:
        for member in archive:
            record = wanted.get(member.name)
            if record is None or not member.isfile():
                continue
            sha, size = _store(archive.extractfile(member), partial / stored_path(record.path))
            fetched.append(replace(record, stored=stored_path(record.path), sha256=sha, size=size))
    return fetched


@contextlib.contextmanager
def _tar_from(remote: Remote, script: str, feed: bytes, what: str) -> Iterator[tarfile.TarFile]:
    """The tar SCRIPT writes on the host, read as a stream while FEED goes to its stdin (from
    another thread: the two pipes must flow at once). Exit status 1 of tar, "a file changed
    or vanished while read", is accepted; any other failure is one RecoveryError line."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(remote.command(script), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=errors)
        feeder = threading.Thread(target=_feed, args=(process.stdin, feed), daemon=True)
        feeder.start()
        try:
            with tarfile.open(fileobj=process.stdout, mode="r|", bufsize=_CHUNK) as archive:
                yield archive
            process.stdout.read()
        except BaseException:
            if _exit_status(process) in (0, 1, None):
                raise  # our side failed: that error is the one to show
        finally:
            feeder.join()
            status = process.wait()
        errors.seek(0)
        if status not in (0, 1):
            raise RecoveryError(f"host {remote.name}: {what} failed (exit {status}): {_last_line(errors.read())}")


def _exit_status(process: subprocess.Popen) -> int | None:
    """The status of a process that is ending anyway; None (after killing it) if it goes on."""
    try:
        return process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        return None


def _feed(pipe, data: bytes) -> None:
    with contextlib.suppress(OSError):
        pipe.write(data)
    with contextlib.suppress(OSError):
        pipe.close()


def _save_shadow(plan: BackupPlan, partial: Path) -> Record:
    """The accounts' password hashes, into `shadow` (mode 600); never printed."""
    users = " ".join(shlex.quote(a) for a in plan.accounts) or "''"
    lines = plan.remote.run(f"getent shadow {users} | cut -d: -f1,2; true", "reading the password hashes")
    return _write_private(partial, "shadow", "shadow", lines)


def _save_queue(plan: BackupPlan, partial: Path) -> list[Record]:
    """Each pending message as queue/<id>.msg and its qmail-queue envelope as queue/<id>.env."""
    queue, messages = {}, {}
    script = f"cd {plan.queue_dir} && tar --ignore-failed-read -cf - mess info local remote todo"
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
        stored += _keep_queued(partial, number, incoming, envelope) if envelope else []
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


def _keep_queued(partial: Path, number: str, incoming: Path, envelope: bytes) -> list[Record]:
    """Keep one pending message; its id (queue number, envelope, content) makes requeueing once-only."""
    message_sha = sha256_file(incoming)
    ident = hashlib.sha256(f"{number}\0{message_sha}\0".encode() + envelope).hexdigest()[:32]
    message = partial / "queue" / f"{ident}.msg"
    os.rename(incoming, message)
    env = _write_private(partial, f"queue/{ident}.env", "envelope", envelope)
    return [Record(kind="message", stored=f"queue/{ident}.msg", size=message.stat().st_size,
                   sha256=message_sha, envelope=env.stored), env]


# --- restore: the backup, verified (prepare phase) ---------------------------------------


@dataclass
class Backup:
    directory: Path
    header: dict
    records: list[Record]

    def host_files(self) -> dict[str, Record]:
        return {r.path: r for r in self.records if r.kind in ("file", "dir")}

    def read(self, record: Record) -> bytes:
        return (self.directory / record.stored).read_bytes()


def open_backup(opts: Options, settings: Settings) -> Backup:
    """The backup to restore (restore_from, else the newest), fully verified; a one-line
    SettingsError naming restore_from for a missing, foreign or damaged one."""
    directory = opts.restore_from or (backups_in(opts.backup_root) or [None])[-1]
    if directory is None:
        raise SettingsError("restore_from", f"no backup of {settings.hostname} in {opts.backup_root}",
                            "run backup.py first, or set restore_from to a backup directory")
    try:
        header, records = read_manifest(directory)
        verify(directory, records)
    except RecoveryError as error:
        raise SettingsError("restore_from", str(error),
                            "restore from another backup (set restore_from) or take a new one") from None
    if header["hostname"] != settings.hostname:
        raise SettingsError("restore_from", f"{directory} is a backup of {header['hostname']}, not of "
                            f"{settings.hostname}", "set restore_from to a backup of this host")
    return Backup(directory, header, records)


def verify(directory: Path, records: list[Record]) -> None:
    """Every stored file is there with its size and sha256; RecoveryError on the first that is not."""
    stored = {r.stored for r in records if r.stored}
    for record in records:
        if (record.path and not _plain(record.path, absolute=True)) or (
                record.stored and not _plain(record.stored, absolute=False)):
            raise RecoveryError(f"{directory} is damaged: an unsafe path in the manifest ({record.path!r})")
        if not record.stored:
            continue
        if record.envelope and record.envelope not in stored:
            raise RecoveryError(f"{directory} is damaged: the envelope of {record.stored} is missing")
        path = directory / record.stored
        if not path.is_file() or path.stat().st_size != record.size or sha256_file(path) != record.sha256:
            raise RecoveryError(f"{directory} is damaged: {record.stored} does not match its sha256 "
                                "in the manifest")


# --- restore: what the host has (prepare phase, read-only) -------------------------------


_HOST_SCRIPT = r"""
for u in {users}; do
  h=$(getent passwd "$u" | cut -d: -f6)
  [ -n "$h" ] || continue
  printf 'A\t%s\t%s\0' "$u" "$h"
  printf 'H\t%s\t%s\0' "$u" "$(getent shadow "$u" | cut -d: -f2 | tr -d '\n' | sha256sum | cut -c1-64)"
  [ -d "$h/Maildir" ] && find "$h/Maildir" -printf 'P\t%p\0'
done
[ -d {archive} ] && find {archive} -printf 'P\t%p\0'
[ -d {requeued} ] && find {requeued} -type f -printf 'R\t%f\0'
for f in $(find {queue}/mess -type f 2>/dev/null); do printf 'M\t%s\0' "$(sha256sum < "$f" | cut -c1-64)"; done
[ -x {qmail_queue} ] && printf 'Q\0'
true
"""


@dataclass
class HostView:
    homes: dict[str, str] = field(default_factory=dict)  # account -> home
    hash_sums: dict[str, str] = field(default_factory=dict)  # account -> sha256 of its hash
    keys: set[str] = field(default_factory=set)  # message_key of every path under the roots
    requeued: set[str] = field(default_factory=set)  # ids of messages requeued by an earlier restore
    queued: set[str] = field(default_factory=set)  # sha256 of every message in the host's queue
    has_qmail: bool = False


def look_at_host(remote: Remote, backup: Backup, platform: Platform) -> HostView:
    script = _HOST_SCRIPT.format(
        users=" ".join(shlex.quote(a) for a in backup.header["accounts"]) or "''", archive=TMDA_ARCHIVE,
        requeued=REQUEUED_DIR, queue=f"{platform.qmail_home}/queue",
        qmail_queue=f"{platform.qmail_home}/bin/qmail-queue")
    view = HostView()
    for fields in _records(remote.run(script, "listing what the host already has")):
        kind, rest = fields[0], "\t".join(fields[1:])
        if kind in ("A", "H"):
            account, _, value = rest.partition("\t")
            (view.homes if kind == "A" else view.hash_sums)[account] = value
        elif kind == "P":
            view.keys.add(message_key(rest))
        elif kind == "R":
            view.requeued.add(rest)
        elif kind == "M":
            view.queued.add(rest)
        elif kind == "Q":
            view.has_qmail = True
    return view


def require_deployed(view: HostView, backup: Backup, name: str) -> None:
    """Restore goes onto a deployed host: refuse a bare one; warn of accounts it lacks."""
    if not view.has_qmail:
        raise RecoveryError(f"host {name} has no qmail yet: run deploy.py first, then restore.py")
    for account in backup.header["accounts"]:
        if account not in view.homes:
            host.log(f"Account {account} is in the backup but not on the host: its mail and password "
                     "are not restored (add it to accounts and deploy first)", logger.warning)


def restore_roots(backup: Backup, view: HostView) -> tuple[str, ...]:
    """Where restore may write files: the Maildirs of accounts on the host, the TMDA archive."""
    return (*(f"{home}/Maildir" for account, home in view.homes.items() if account in backup.header["accounts"]),
            TMDA_ARCHIVE)


def missing_files(backup: Backup, view: HostView) -> list[Record]:
    """The backup's files and directories the host lacks (a message counts as there in cur/ or
    new/, whatever its flags), within restore_roots, parents first."""
    roots = restore_roots(backup, view)
    wanted = [r for r in backup.host_files().values()
              if any(r.path == root or r.path.startswith(root + "/") for root in roots)]
    return sorted((r for r in wanted if message_key(r.path) not in view.keys), key=lambda r: r.path)


def changed_hashes(backup: Backup, view: HostView) -> dict[str, str]:
    """account -> backed-up hash, for accounts on the host whose hash differs from it."""
    record = next(r for r in backup.records if r.kind == "shadow")
    changed = {}
    for line in backup.read(record).decode().splitlines():
        account, _, hashed = line.partition(":")
        current = view.hash_sums.get(account)
        if current and account in view.homes and current != hashlib.sha256(hashed.encode()).hexdigest():
            changed[account] = hashed
    return changed


def pending_messages(backup: Backup, view: HostView) -> list[tuple[str, bytes, bytes]]:
    """(id, message, envelope) of the backup's pending messages that are neither in the host's
    queue (restoring onto the original host) nor requeued there by an earlier restore."""
    stored = {r.stored: r for r in backup.records}
    pending = []
    for record in (r for r in backup.records if r.kind == "message"):
        ident = Path(record.stored).stem
        if f"{ident}.done" not in view.requeued and record.sha256 not in view.queued:
            pending.append((ident, backup.read(record), backup.read(stored[record.envelope])))
    return pending


# --- restore: operations -----------------------------------------------------------------


@operation()
def restore_files(remote: Remote, backup: Backup, missing: list[Record]):
    """Add MISSING files (and directories) from BACKUP, owners, modes and mtimes kept;
    tar --skip-old-files: nothing already on the host is overwritten."""
    if not missing:
        host.noop(f"every message and file of {backup.directory.name} is on the host")
        return
    files = sum(1 for r in missing if r.kind == "file")
    host.log(f"Will add {files} files and {len(missing) - files} directories from {backup.directory}", logger.info)
    yield FunctionCommand(send_files, (remote, backup.directory, missing), {})


def send_files(remote: Remote, directory: Path, records: list[Record]) -> None:
    """Stream RECORDS to the host as one tar (pax: exact mtimes, any file name)."""
    script = "tar -C / --skip-old-files --same-owner -xpf -"
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(remote.command(script), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=errors)
        cut_off = False
        try:
            with tarfile.open(fileobj=process.stdin, mode="w|", format=tarfile.PAX_FORMAT,
                              bufsize=_CHUNK) as archive:
                for record in records:
                    _add(archive, directory, record)
        except BrokenPipeError:
            cut_off = True  # the host side ended early: its status and error output say why
        finally:
            with contextlib.suppress(OSError):
                process.stdin.close()
            status = process.wait()
        errors.seek(0)
        if status != 0 or cut_off:
            raise RecoveryError(f"host {remote.name}: restoring files failed (exit {status}): "
                                f"{_last_line(errors.read())}")


def _add(archive: tarfile.TarFile, directory: Path, record: Record) -> None:
    info = tarfile.TarInfo(record.path.lstrip("/"))
    info.type = tarfile.REGTYPE if record.kind == "file" else tarfile.DIRTYPE
    info.mode = int(record.mode, 8)
    info.uname, info.gname = record.owner, record.group
    info.mtime = record.mtime_ns // 10**9
    info.pax_headers = {"mtime": _pax_mtime(record.mtime_ns)}
    if record.kind == "file":
        info.size = record.size
        with open(directory / record.stored, "rb") as handle:
            archive.addfile(info, handle)
    else:
        archive.addfile(info)


@operation()
def restore_password_hashes(hashes: dict[str, str]):
    """Set the accounts' hashes to HASHES through an uploaded file and chpasswd -e; the
    hashes never appear on a command line or in output."""
    if not hashes:
        host.noop("every account's password hash is the backed-up one")
        return
    host.log(f"Will restore the password hash of {', '.join(sorted(hashes))}", logger.info)
    data = "".join(f"{account}:{hashed}\n" for account, hashed in sorted(hashes.items())).encode()
    temp = "/root/.qmailhost-chpasswd-restore"
    yield f"umask 077 && : > {temp}"
    yield FileUploadCommand(BytesIO(data), temp, remote_temp_filename=temp)
    yield f"chmod 600 {temp} && chpasswd -e < {temp}; status=$?; rm -f {temp}; exit $status"


@operation()
def requeue(messages: list[tuple[str, bytes, bytes]], qmail_queue: str):
    """Queue each (id, message, envelope) again with qmail-queue, once: a marker per id."""
    if not messages:
        host.noop("every pending message of the backup is queued already")
        return
    yield f"mkdir -p {REQUEUED_DIR} && chmod 700 {REQUEUED_DIR}"
    for ident, message, envelope in messages:
        base = f"{REQUEUED_DIR}/{ident}"
        yield FileUploadCommand(BytesIO(message), f"{base}.msg", remote_temp_filename=f"{base}.msg")
        yield FileUploadCommand(BytesIO(envelope), f"{base}.env", remote_temp_filename=f"{base}.env")
        yield f"{qmail_queue} <{base}.msg 1<{base}.env && touch {base}.done && rm -f {base}.msg {base}.env"
