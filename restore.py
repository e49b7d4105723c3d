"""qmailhost's restore: put a backup back onto a (rebuilt, deployed) host.

    pyinfra inventory/<site>.py deploy.py     # first: a bare host becomes a mail host
    pyinfra inventory/<site>.py restore.py [--data restore_from=~/qmailhost-backups/HOST/STAMP]

The backup (restore_from, else the newest of this host) is verified in full first: a
damaged one is refused before the host is changed. So is a tampered one: nothing in a
backup is trusted beyond the paths the components declare. Its modes are masked (no
setuid, setgid or sticky bit), its owners and groups must be those a deploy makes, its
accounts those of the inventory (root never), each entry must lie under a part
(qmailhost/recovery/trust.py). Then only what the host lacks or holds differently is
changed: the missing files of the components' backup parts are added (Maildir messages,
the TMDA archive: nothing on the host is deleted or overwritten), password hashes set
from a file through the platform's password tool (chpasswd -e, or NetBSD's master.passwd
rewrite), each part with a restore hook puts its own files back (the TLS pair replaced
when it differs, then stunnel restarted), pending messages requeued once. A second
restore changes nothing. See qmailhost/recovery/.
"""

from pyinfra import host

from qmailhost import recovery
from qmailhost.platform import detect
from qmailhost.settings import Settings

settings = Settings.from_host_data(host.data.dict(), inventory_name=host.name)
options = recovery.options(settings)
backup = recovery.open_backup(options, settings)
platform = detect()
remote = recovery.remote_for(host.data.dict(), host.name)
view = recovery.look_at_host(remote, backup, platform, settings)
recovery.require_deployed(view, backup, host.name)
recovery.require_within_parts(backup, view, platform, settings)
host.log(f"Restoring from {backup.directory} (every sha256 verified, every entry vetted)")

recovery.restore_files(name="Restore missing messages and files", remote=remote, backup=backup,
                       missing=recovery.missing_files(backup, view), shell=platform.shell)
recovery.restore_password_hashes(name="Restore the password hashes", hashes=recovery.changed_hashes(backup, view),
                                 apply=platform.password_apply)
for part in recovery.backup_parts(platform):
    if part.restore:
        part.restore(platform, settings, backup)
recovery.requeue(name="Requeue the pending messages", messages=recovery.pending_messages(backup, view),
                 qmail_queue=f"{platform.qmail_bin}/qmail-queue")
