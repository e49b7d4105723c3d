"""qmailhost's restore: put a backup back onto a (rebuilt, deployed) host.

    pyinfra inventory/<site>.py deploy.py     # first: a bare host becomes a mail host
    pyinfra inventory/<site>.py restore.py [--data restore_from=SNAPSHOT_ID or a backup directory]

The backup is the newest snapshot of this host in backup_repository (read with the
laptop's restic and backup_password_file, written out privately for this run), or the
one restore_from names: a snapshot ID, or a backup directory of the laptop format (older
backups, or one taken without a repository). It is verified in full first: a
damaged one is refused before the host is changed. So is a tampered one: nothing in a
backup is trusted beyond the paths the components declare. Its modes are masked (no
setuid, setgid or sticky bit), its owners and groups must be those a deploy makes, its
accounts those of the inventory (root never), each entry must lie under a part
(qmailhost/recovery/trust.py). Then only what the host lacks or holds differently is
changed: the missing files of the components' backup parts are added (Maildir messages,
the TMDA archive: nothing on the host is deleted or overwritten), password hashes set
from a file through the platform's password tool (chpasswd -e, or NetBSD's master.passwd
rewrite), each part with a restore hook puts its own files back (the TLS pair replaced
when it differs, then stunnel restarted), pending messages requeued once, and scheduled
backups, held on a rebuilt host until now, run again. A second restore changes nothing. See qmailhost/recovery/.
"""

from pyinfra import host

from qmailhost import ops, recovery
from qmailhost.platform import detect
from qmailhost.settings import Settings

settings = Settings.from_host_data(host.data.dict(), inventory_name=host.name)
options = recovery.options(settings)
platform = detect()


def written_out_snapshot(wanted):
    """The snapshot WANTED (an ID; None: the newest) written out as a backup directory, or None."""
    repository = recovery.repository_for(settings, host.data.dict(), host.name)
    snapshot = recovery.choose(repository, wanted)
    if snapshot is None:
        return None
    host.log(f"Reading snapshot {snapshot.short_id} ({snapshot.time[:19]}Z) from {repository.name}")
    return recovery.materialize(repository, snapshot, platform, recovery.private_directory("qmailhost-snapshot-"))


backup = recovery.open_backup(options, settings, written_out_snapshot)
remote = recovery.remote_for(host.data.dict(), host.name)
view = recovery.look_at_host(remote, backup, platform, settings)
recovery.require_deployed(view, backup, host.name)
recovery.require_within_parts(backup, view, platform, settings)
source = (f"snapshot {backup.header['snapshot'][:8]}" if backup.header.get("snapshot") else backup.directory)
host.log(f"Restoring from {source} (every sha256 verified, every entry vetted)")

recovery.restore_files(name="Restore missing messages and files", remote=remote, backup=backup,
                       missing=recovery.missing_files(backup, view), shell=platform.shell)
recovery.restore_password_hashes(name="Restore the password hashes", hashes=recovery.changed_hashes(backup, view),
                                 apply=platform.password_apply)
for part in recovery.backup_parts(platform):
    if part.restore:
        part.restore(platform, settings, backup)
recovery.requeue(name="Requeue the pending messages", messages=recovery.pending_messages(backup, view),
                 qmail_queue=f"{platform.qmail_bin}/qmail-queue")
# Scheduled backups resume, the first one within minutes (its retry wait forgotten): a rebuilt
# host's first deploy held them for this restore.
ops.decided(name="Let scheduled backups run again (the restore is done)",
            needed=ops.managed_file(recovery.RESTORE_PENDING) is not None, why_not="no backup waits for a restore",
            command=f"rm -f {recovery.RESTORE_PENDING} {' '.join(recovery.WAITED)}")
