"""Restore: the backup verified, what the host has, and the operations that add the rest.

open_backup takes the backup to put back (restore_from: a backup directory, or a snapshot
ID in backup_repository; else the newest snapshot, else the newest in backup_dir; a
snapshot is first written out as a backup directory, snapshots.materialize), verifies
every stored file's size and sha256 first, then holds what it says to what a deploy makes
(trust.py: modes masked; owners, groups, kinds and paths vetted; only the inventory's
accounts): nothing a backup says reaches the host unvetted. look_at_host
reads in one round trip what the host already has: the accounts' homes and the sha256 of
their hashes (never the hashes), every path under the generic parts' paths, earlier
requeues, the queue; with it, require_within_parts refuses an entry that lies outside
the parts there. Restore adds only what the host lacks (restore_files,
restore_password_hashes, requeue): it never deletes or overwrites mail there; a
component with its own restore hook (tls, acme) puts its files back itself.
"""

from __future__ import annotations

import hashlib
import shlex
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, FunctionCommand, operation

from qmailhost.component import BackupPart
from qmailhost.facts import STATE_DIR
from qmailhost.platform import DEBIAN_PASSWORD_APPLY, DEBIAN_SHELL, Platform, Shell
from qmailhost.recovery.common import Options, RecoveryError
from qmailhost.recovery.manifest import (
    _CHUNK,
    MANIFEST,
    Record,
    _pax_mtime,
    _plain,
    _refuse_long_paths,
    backups_in,
    message_key,
    read_manifest,
    sha256_file,
)
from qmailhost.recovery.parts import _words, backup_parts, part_paths
from qmailhost.recovery.remote import Remote, _records
from qmailhost.recovery.snapshots import SNAPSHOT_ID, shown
from qmailhost.recovery.trust import refuse_outside_parts, trusted_backup, vetted
from qmailhost.settings import Settings, SettingsError

REQUEUED_DIR = f"{STATE_DIR}/requeued"  # one marker per requeued message: idempotent restores


# --- restore: the backup, verified (prepare phase) ---------------------------------------


@dataclass
class Backup:
    """A verified backup, held to what a deploy makes (trust.py): RECORDS vetted (modes
    masked), ACCOUNTS the header's that the inventory has, HASHES theirs (account -> hash)."""

    directory: Path
    header: dict
    records: list[Record]
    accounts: tuple[str, ...] = ()
    hashes: dict[str, str] = field(default_factory=dict, repr=False)

    def host_files(self) -> dict[str, Record]:
        return {r.path: r for r in self.records if r.kind in ("file", "dir")}

    def read(self, record: Record) -> bytes:
        return (self.directory / record.stored).read_bytes()


def open_backup(opts: Options, settings: Settings, snapshot_source: Callable[[str | None], Path | None]) -> Backup:
    """The backup to restore, fully verified and held to what a deploy makes; a one-line
    SettingsError naming restore_from for a missing, foreign, damaged or tampered one. Which:
    restore_from when it is a backup directory; else, with backup_repository, the snapshot
    restore_from names (an ID) or the newest, written out by SNAPSHOT_SOURCE (wanted ID or None
    -> its directory, None: the repository holds no snapshot); else the newest backup directory."""
    wanted = opts.restore_from
    directory = wanted if wanted is not None and wanted.exists() else None
    if directory is None and wanted is not None and not SNAPSHOT_ID.fullmatch(str(wanted)):
        raise SettingsError("restore_from", f"{wanted} is neither a backup directory nor a snapshot ID",
                            "name a backup directory, or a snapshot ID that restic snapshots lists")
    if directory is None and settings.backup_repository:
        directory = snapshot_source(str(wanted) if wanted is not None else None)
    elif directory is None and wanted is not None:
        raise SettingsError("restore_from", f"{wanted} names a snapshot, but backup_repository is not set",
                            "set backup_repository, or set restore_from to a backup directory")
    directory = directory or (backups_in(opts.backup_root) or [None])[-1]
    if directory is None:
        raise SettingsError("restore_from", f"no backup of {settings.hostname} in "
                            f"{shown(settings.backup_repository) if settings.backup_repository else opts.backup_root}",
                            "let the host back up first (backup.py backs up now), or set restore_from")
    try:
        header, records = read_manifest(directory)
        verify(directory, records)
    except RecoveryError as error:
        raise SettingsError("restore_from", str(error),
                            "restore from another backup (set restore_from) or take a new one") from None
    if header.get("hostname") != settings.hostname:
        raise SettingsError("restore_from", f"{directory} is a backup of {header.get('hostname')}, not of "
                            f"{settings.hostname}", "set restore_from to a backup of this host")
    try:
        shadows = [r for r in records if r.kind == "shadow"]
        if len(shadows) != 1:
            raise RecoveryError(f"{directory}/{MANIFEST}: {len(shadows)} shadow entries, not one")
        shadow = (directory / shadows[0].stored).read_bytes()
        accounts, hashes, records = trusted_backup(directory, header, records, shadow, settings)
    except RecoveryError as error:
        raise SettingsError("restore_from", str(error),
                            "restore from a backup you trust (set restore_from), or take a new one") from None
    return Backup(directory, header, records, accounts, hashes)


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
    script = host_script(backup.accounts, part_paths(generic_parts(platform), settings, platform), platform)
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
    for account in backup.accounts:
        if account not in view.homes:
            host.log(f"Account {account} is in the backup but not on the host: its mail and password "
                     "are not restored (add it to accounts and deploy first)", logger.warning)


def require_within_parts(backup: Backup, view: HostView, platform: Platform, settings: Settings) -> None:
    """Every file and directory of BACKUP lies under a path the components' parts declare, as
    this host leads ~user there, and a Maildir's entries are its user's: else one SettingsError
    line naming the entry, before anything changes (trust.py)."""
    words = part_paths(backup_parts(platform), settings, platform)
    refuse_outside_parts(backup.host_files().values(), backup.directory, words, view.homes, backup.accounts)


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
    """account -> backed-up hash, for the backup's accounts on the host whose hash differs from it."""
    changed = {}
    for account, hashed in backup.hashes.items():
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
    (exact mtimes, any file name) for GNU tar, ustar (whole seconds) for NetBSD's pax.

    tar_extract keeps owners and modes (GNU tar -p --same-owner, pax -pe) and never
    overwrites. What it keeps is only ever this archive's, written here from vetted records:
    regular files and directories, modes within trust.MODE_CAP (no setuid, setgid or sticky
    bit), owners and groups the deploy makes. So each record is checked once more before
    anything streams (the last gate), and a host never sees a backup's own tar."""
    for record in records:
        if not vetted(record):
            raise RecoveryError(f"refusing to restore {record.path!r} ({record.kind}, mode {record.mode!r}, "
                                f"{record.owner!r}:{record.group!r}): not vetted by open_backup")
    with remote.input(shell.tar_extract, "restoring files") as stream, \
            tarfile.open(fileobj=stream, mode="w|", format=_TAR_FORMATS[shell.tar_format], bufsize=_CHUNK) as archive:
        for record in records:
            _add(archive, directory, record)


def _add(archive: tarfile.TarFile, directory: Path, record: Record) -> None:
    info = tarfile.TarInfo(record.path.lstrip("/"))
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE}[record.kind]
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
    for ident, message, envelope in messages:  # (an ident is 32 hex digits: trust.py; quoted all the same)
        base = f"{REQUEUED_DIR}/{ident}"
        msg, env, done = (shlex.quote(f"{base}.{suffix}") for suffix in ("msg", "env", "done"))
        yield FileUploadCommand(BytesIO(message), f"{base}.msg", remote_temp_filename=f"{base}.msg")
        yield FileUploadCommand(BytesIO(envelope), f"{base}.env", remote_temp_filename=f"{base}.env")
        yield f"{shlex.quote(qmail_queue)} <{msg} 1<{env} && touch {done} && rm -f {msg} {env}"
