"""Recovery: what backup.py and restore.py share.

A backup carries what a rebuilt host needs that the inventory does not hold: the files
the components declare (their BackupPart: accounts, every account's Maildir; tls, the
self-signed pair; tmda, the TMDA archive), the accounts' password hashes and, with
backup_queue, the queue's pending messages. It is a dated directory on the laptop,
<backup_dir>/<UTC timestamp>/, everything in it mode 600 (directories 700), since mail
is as private as keys:

    manifest.json          one record per line: sha256 and size of every stored file;
                           path, owner, group, mode and mtime of every host file
    manifest.json.sha256   the manifest's own sum
    files/<host path>      the components' files: Maildir messages, the TLS pair, the TMDA archive
    shadow                 the accounts' "name:hash" lines (the platform's password_apply input)
    queue/<id>.msg, .env   pending messages and their qmail-queue envelopes

Transfer: bulk data crosses as one tar stream over OpenSSH's `ssh`, run on the laptop
with the inventory's ssh_* host data (key authentication only). pyinfra's files.get
and files.put make one SFTP round trip per file, and its shell commands return
decoded text lines, unfit for binary data. Unchanged messages (same Maildir folder,
unique name, size and mtime as listed on the host) are hard-linked from the previous
backup and not transferred again. Restore adds only what the host lacks: it never
deletes or overwrites mail there; a component with its own restore hook (tls) puts its
files back itself.

Platform: every command run on the host comes from the platform's shell dialect
(qmailhost/platform.py Shell: the listing, the tar streams, the hash and digest tools) and
its password_apply, so the scripts here hold only POSIX sh. A part's paths are shell
words such as ~alice/Maildir, expanded on the host (shell_word).
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
from typing import BinaryIO

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, FunctionCommand, operation
from pyinfra.api.exceptions import PyinfraError

from qmailhost.component import BackupPart, Component, Setting
from qmailhost.facts import STATE_DIR
from qmailhost.platform import DEBIAN_PASSWORD_APPLY, DEBIAN_SHELL, Platform, Shell
from qmailhost.registry import for_platform
from qmailhost.settings import Settings, SettingsError, boolean

FORMAT = "qmailhost-backup 1"
MANIFEST = "manifest.json"
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

    @contextlib.contextmanager
    def output(self, script: str, feed: bytes, what: str) -> Iterator[BinaryIO]:
        """SCRIPT's stdout as a stream, while FEED goes to its stdin (from another thread: the
        two pipes must flow at once). Exit status 1, "a file changed or vanished while read"
        for tar and pax, is accepted; any other failure is one RecoveryError line."""
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(self.command(script), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=errors)
            feeder = threading.Thread(target=_feed, args=(process.stdin, feed), daemon=True)
            feeder.start()
            try:
                yield process.stdout
                process.stdout.read()
            except BaseException:
                if _exit_status(process) in (0, 1, None):
                    raise  # our side failed: that error is the one to show
            finally:
                feeder.join()
                status = process.wait()
            errors.seek(0)
            if status not in (0, 1):
                raise RecoveryError(f"host {self.name}: {what} failed (exit {status}): {_last_line(errors.read())}")

    @contextlib.contextmanager
    def input(self, script: str, what: str) -> Iterator[BinaryIO]:
        """SCRIPT's stdin as a stream; a one-line RecoveryError when SCRIPT fails or ends early."""
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(self.command(script), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=errors)
            cut_off = False
            try:
                yield process.stdin
            except BrokenPipeError:
                cut_off = True  # the host side ended early: its status and error output say why
            finally:
                with contextlib.suppress(OSError):
                    process.stdin.close()
                status = process.wait()
            errors.seek(0)
            if status != 0 or cut_off:
                raise RecoveryError(f"host {self.name}: {what} failed (exit {status}): {_last_line(errors.read())}")


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


# --- what is backed up: the components' parts, in the host's shell -----------------------


_TILDE = re.compile(r"~([A-Za-z0-9_][A-Za-z0-9_.-]*)(/.*)?")


def backup_parts(platform: Platform) -> list[BackupPart]:
    """The BackupPart of every component (and of the platform's service backend), in order."""
    return [component.backup for component in for_platform(platform) if component.backup]


def part_paths(parts: Iterable[BackupPart], settings: Settings, platform: Platform) -> list[str]:
    return [path for part in parts for path in part.paths(settings, platform)]


def shell_word(path: str) -> str:
    """PATH as one shell word for the host's sh: "~user/rest" keeps its ~user prefix unquoted
    (tilde expansion, to that user's home) and quotes the rest; anything else is quoted whole."""
    if path.startswith("~"):
        match = _TILDE.fullmatch(path)
        if not match:
            raise RecoveryError(f"refusing the backup path {path!r}: ~ must name a user")
        rest = match[2] or ""
        return f"~{match[1]}" + ("/" + shlex.quote(rest[1:]) if rest[1:] else rest)
    if not path.startswith("/"):
        raise RecoveryError(f"refusing the backup path {path!r}: not absolute")
    return shlex.quote(path)


def _words(paths: Iterable[str]) -> str:
    return " ".join(shell_word(p) for p in paths) or "''"


def _printf_end(end: str) -> str:
    """How printf(1) spells the record end END ("\\0" or "\\n")."""
    return {"\0": "\\0", "\n": "\\n"}[end]


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


def _records(output: bytes, end: str = "\0") -> Iterator[list[str]]:
    for raw in output.split(end.encode()):
        if raw:
            yield raw.decode(errors="surrogateescape").split("\t", 7)


def _refuse_long_paths(records: Iterable[Record], what: str) -> None:
    """A path ustar cannot hold would be skipped by pax with a warning: refuse it up front."""
    for record in records:
        if not fits_ustar(record.path):
            raise RecoveryError(f"{record.path} cannot be {what} on this platform: pax's ustar format holds "
                                "paths of at most 100 bytes after a 155-byte directory prefix (rename it)")


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


# One round trip: the accounts' homes and the sha256 of their hashes (never the hashes),
# where each generic part's paths lead on this host ("X": the shell word, expanded) and
# every path under them, the restore markers, the queue's messages, and qmail itself.
_HOST_SCRIPT = r"""
for u in {users}; do
  h=$(getent passwd "$u" | cut -d: -f6)
  [ -n "$h" ] || continue
  printf 'A\t%s\t%s\0' "$u" "$h"
  printf 'H\t%s\t%s\0' "$u" "$({password_field} | tr -d '\n' | {sha256} | cut -c1-64)"
done
for p in {paths}; do printf 'X\t%s\0' "$p"; [ -e "$p" ] && find "$p" {print_p}; done
[ -d {requeued} ] && find {requeued} -type f {print_r}
for f in $(find {queue}/mess -type f 2>/dev/null); do printf 'M\t%s\0' "$({sha256} < "$f" | cut -c1-64)"; done
[ -x {qmail_queue} ] && printf 'Q\0'
true
"""


@dataclass
class HostView:
    homes: dict[str, str] = field(default_factory=dict)  # account -> home
    hash_sums: dict[str, str] = field(default_factory=dict)  # account -> sha256 of its hash
    roots: list[str] = field(default_factory=list)  # the generic parts' paths, expanded on the host
    keys: set[str] = field(default_factory=set)  # message_key of every path under the roots
    requeued: set[str] = field(default_factory=set)  # ids of messages requeued by an earlier restore
    queued: set[str] = field(default_factory=set)  # sha256 of every message in the host's queue
    has_qmail: bool = False


def generic_parts(platform: Platform) -> list[BackupPart]:
    """The parts whose files restore puts back itself: those without a restore hook."""
    return [part for part in backup_parts(platform) if part.restore is None]


def host_script(accounts: Iterable[str], paths: Iterable[str], platform: Platform) -> str:
    """The script look_at_host runs, in PLATFORM's dialect."""
    shell = platform.shell
    return _HOST_SCRIPT.format(
        users=" ".join(shlex.quote(a) for a in accounts) or "''", paths=_words(paths),
        password_field=shell.password_field, sha256=shell.sha256,
        print_p=shell.find_print.format(tag="P"), print_r=shell.find_print.format(tag="R"),
        requeued=REQUEUED_DIR, queue=f"{platform.qmail_home}/queue", qmail_queue=f"{platform.qmail_bin}/qmail-queue")


def look_at_host(remote: Remote, backup: Backup, platform: Platform, settings: Settings) -> HostView:
    script = host_script(backup.header["accounts"], part_paths(generic_parts(platform), settings, platform),
                         platform)
    view = HostView()
    for fields in _records(remote.run(script, "listing what the host already has")):
        kind, rest = fields[0], "\t".join(fields[1:])
        if kind in ("A", "H"):
            account, _, value = rest.partition("\t")
            (view.homes if kind == "A" else view.hash_sums)[account] = value
        elif kind == "X" and _plain(rest.rstrip("/") or "/", absolute=True):
            view.roots.append(rest.rstrip("/"))  # (an unexpanded ~user: no such user here)
        elif kind == "P":
            view.keys.add(message_key(rest))
        elif kind == "R":
            view.requeued.add(rest.rsplit("/", 1)[-1])
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
    """Where restore may write files: where the generic parts' paths lead on this host (the
    Maildirs of the accounts it has, the TMDA archive); never a part with its own hook."""
    return tuple(view.roots)


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
def restore_files(remote: Remote, backup: Backup, missing: list[Record], shell: Shell = DEBIAN_SHELL):
    """Add MISSING files (and directories) from BACKUP, owners, modes and mtimes kept, with the
    host's tar_extract (GNU tar --skip-old-files, pax -k): nothing on the host is overwritten."""
    if not missing:
        host.noop(f"every message and file of {backup.directory.name} is on the host")
        return
    if shell.tar_format == "ustar":
        _refuse_long_paths(missing, "restored")
    files = sum(1 for r in missing if r.kind == "file")
    host.log(f"Will add {files} files and {len(missing) - files} directories from {backup.directory}", logger.info)
    yield FunctionCommand(send_files, (remote, backup.directory, missing, shell), {})


_TAR_FORMATS = {"pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}


def send_files(remote: Remote, directory: Path, records: list[Record], shell: Shell = DEBIAN_SHELL) -> None:
    """Stream RECORDS to the host as one tar in the format its tar_extract reads: pax
    (exact mtimes, any file name) for GNU tar, ustar (whole seconds) for NetBSD's pax."""
    with remote.input(shell.tar_extract, "restoring files") as stream, \
            tarfile.open(fileobj=stream, mode="w|", format=_TAR_FORMATS[shell.tar_format], bufsize=_CHUNK) as archive:
        for record in records:
            _add(archive, directory, record)


def _add(archive: tarfile.TarFile, directory: Path, record: Record) -> None:
    info = tarfile.TarInfo(record.path.lstrip("/"))
    info.type = tarfile.REGTYPE if record.kind == "file" else tarfile.DIRTYPE
    info.mode = int(record.mode, 8)
    info.uname, info.gname = record.owner, record.group
    info.mtime = record.mtime_ns // 10**9
    if archive.format == tarfile.PAX_FORMAT:
        info.pax_headers = {"mtime": _pax_mtime(record.mtime_ns)}
    if record.kind == "file":
        info.size = record.size
        with open(directory / record.stored, "rb") as handle:
            archive.addfile(info, handle)
    else:
        archive.addfile(info)


RESTORE_HASHES = "/root/.qmailhost-chpasswd-restore"


@operation()
def restore_password_hashes(hashes: dict[str, str], apply: str = DEBIAN_PASSWORD_APPLY):
    """Set the accounts' hashes to HASHES through an uploaded "name:hash" file that the
    platform's APPLY ({file}: chpasswd -e, or NetBSD's master.passwd rewrite) feeds to the
    password database and removes; the hashes never appear on a command line or in output."""
    if not hashes:
        host.noop("every account's password hash is the backed-up one")
        return
    host.log(f"Will restore the password hash of {', '.join(sorted(hashes))}", logger.info)
    data = "".join(f"{account}:{hashed}\n" for account, hashed in sorted(hashes.items())).encode()
    yield f"umask 077 && : > {RESTORE_HASHES}"
    yield FileUploadCommand(BytesIO(data), RESTORE_HASHES, remote_temp_filename=RESTORE_HASHES)
    yield apply.format(file=RESTORE_HASHES)


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
