"""Recovery: what backup.py and restore.py share.

A backup is a restic snapshot the host makes of itself (tasks/backup.py): the files the
components declare (their BackupPart: every account's Maildir, the TLS pair, DKIM keys,
certbot's lineage, the TMDA archive), the accounts' password hashes and, with
backup_queue, a copy of the queue. restore.py reads it with the laptop's restic and writes
it out (snapshots.materialize) as a backup directory, the format backup.py wrote on the
laptop until 2026-12, which restore.py still reads as it is (restore_from): everything in
it mode 600 (directories 700), since mail is as private as keys:

    manifest.json          one record per line: sha256 and size of every stored file;
                           path, owner, group, mode and mtime of every host file
    manifest.json.sha256   the manifest's own sum
    files/<host path>      the components' files: Maildir messages, the TLS pair, the TMDA archive
    shadow                 the accounts' "name:hash" lines (the platform's password_apply input)
    queue/<id>.msg, .env   pending messages and their qmail-queue envelopes

Transfer: what a restore sends crosses as one tar stream over OpenSSH's `ssh`, run on the
laptop with the inventory's ssh_* host data (key authentication only): pyinfra's files.put
makes one SFTP round trip per file. Restore adds only what the host lacks: it never
deletes or overwrites mail there; a component with its own restore hook (tls) puts its
files back itself.

Platform: every command run on the host comes from the platform's shell dialect
(qmailhost/platform.py Shell: the listing, the tar streams, the hash and digest tools) and
its password_apply, so the scripts here hold only POSIX sh. A part's paths are shell
words such as ~alice/Maildir, expanded on the host (shell_word).

The package, by concern (each module's header says more):

    common.py     RecoveryError, and the options the recovery settings give (Options, options)
    remote.py     the SSH side: Remote (scripts and tar streams over ssh), remote_for
    parts.py      what is backed up: the components' BackupParts, as words for the host's shell
    manifest.py   files and the manifest: Record, stored paths, vis(3) names, read_manifest and
                  write_manifest, the backups on this laptop (backups_in, newest_backup)
    backup.py     what a backup holds beyond files: the hashes script, the queue's envelopes
    snapshots.py  the host's restic repository read from the laptop: this host's snapshots, one
                  written out as a backup directory (materialize) for restore, the newest one
                  that a bare host's deploy asks (newest_holding)
    trust.py      what a backup may say: no more than a deploy makes (modes masked; owners,
                  groups, kinds, paths and accounts vetted), since anyone who can write a
                  backup can edit it and restore runs as root
    restore.py    restore: the backup verified and vetted (open_backup), what the host has
                  (look_at_host, require_within_parts), the operations that add what it lacks
                  (restore_files, ..., requeue)

Here: the recovery settings (COMPONENT, which qmailhost.registry reads), and every public
name of those modules, so ``recovery.X`` and ``from qmailhost.recovery import X`` work as
when recovery was one module. A test patches a name where the code looks it up: in its
own module (``qmailhost.recovery.backup.host``), not here.
"""

from __future__ import annotations

import os
from pathlib import Path

from qmailhost.component import Component, Setting
from qmailhost.recovery.backup import envelope_of, hashes_script, keep_queued
from qmailhost.recovery.common import Options, RecoveryError, options
from qmailhost.recovery.manifest import (
    FORMAT,
    MANIFEST,
    Record,
    backups_in,
    fits_ustar,
    message_key,
    mtime_ns,
    newest_backup,
    octal_mode,
    private_dirs,
    read_manifest,
    sha256_file,
    stored_path,
    unvis,
    write_manifest,
)
from qmailhost.recovery.parts import backup_parts, part_paths, shell_word
from qmailhost.recovery.remote import Remote, remote_for
from qmailhost.recovery.restore import (
    REQUEUED_DIR,
    RESTORE_HASHES,
    Backup,
    HostView,
    changed_hashes,
    generic_parts,
    host_script,
    look_at_host,
    missing_files,
    open_backup,
    pending_messages,
    requeue,
    require_deployed,
    require_within_parts,
    restore_files,
    restore_password_hashes,
    restore_roots,
    send_files,
    verify,
)
from qmailhost.recovery.snapshots import (
    RESTORE_PENDING,
    TAG,
    WAITED,
    Holding,
    Repository,
    Snapshot,
    choose,
    hashes_path,
    materialize,
    newest_holding,
    private_directory,
    repository_for,
    shown,
)
from qmailhost.recovery.trust import MODE_CAP, ROOT_GROUPS, SERVICE_GROUPS, SERVICE_OWNERS, trusted_backup, vetted
from qmailhost.settings import SettingsError, boolean

__all__ = [
    "COMPONENT", "FORMAT", "MANIFEST", "REQUEUED_DIR", "RESTORE_HASHES",
    # common
    "Options", "RecoveryError", "options",
    # remote
    "Remote", "remote_for",
    # parts
    "backup_parts", "part_paths", "shell_word",
    # manifest
    "Record", "backups_in", "fits_ustar", "message_key", "mtime_ns", "newest_backup", "octal_mode",
    "private_dirs", "read_manifest", "sha256_file", "stored_path", "unvis", "write_manifest",
    # backup
    "envelope_of", "hashes_script", "keep_queued",
    # restore
    "Backup", "HostView", "changed_hashes", "generic_parts", "host_script", "look_at_host", "missing_files",
    "open_backup", "pending_messages", "require_deployed", "require_within_parts", "requeue", "restore_files",
    "restore_password_hashes", "restore_roots", "send_files", "verify",
    # snapshots
    "RESTORE_PENDING", "WAITED", "TAG", "Holding", "Repository", "Snapshot", "choose", "hashes_path",
    "materialize", "newest_holding", "private_directory", "repository_for", "shown",
    # trust
    "MODE_CAP", "ROOT_GROUPS", "SERVICE_GROUPS", "SERVICE_OWNERS", "trusted_backup", "vetted",
]


# --- settings ----------------------------------------------------------------------------


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
                "where backups of the older laptop format are (one `<UTC stamp>/` each): restore.py and a bare "
                "deploy still read them; default: `~/qmailhost-backups/<hostname>`"),
        Setting("restore_from", None, _path("restore_from"),
                "what `restore.py` puts back: a snapshot ID in `backup_repository`, or a backup directory; "
                "default: the newest snapshot (else the newest backup in `backup_dir`)"),
        Setting("backup_queue", False, boolean("backup_queue"),
                "also carry pending messages (re-queued once on restore)"),
    ),
)
