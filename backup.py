"""qmailhost's backup, now.

    pyinfra inventory/<site>.py backup.py
    pyinfra inventory/<site>.py backup.py --data backup_prune=true

The host backs itself up with restic on a schedule (tasks/backup.py, backup_repository).
Here one backup runs now, on the host, with the script its schedule runs, and the snapshot
it saved is reported; nothing else on the host changes. With backup_prune, retention
instead: forget by backup_keep and prune, from the laptop, through backup_prune_repository
(a way to the repository that may delete, where backup_repository is an append-only
server). Without backup_repository there is nothing to back up to: one line says how to
set one (the laptop itself can be the sftp target), before anything runs.
"""

from pyinfra import host

from qmailhost.platform import detect
from qmailhost.settings import Settings, SettingsError
from tasks import backup

settings = Settings.from_host_data(host.data.dict(), inventory_name=host.name)
platform = detect()
if not settings.backup_repository:
    raise SettingsError("backup_repository", "is not set, and backups are restic snapshots the host makes of itself",
                        "set it (sftp:you@laptop:/path makes this laptop the target; see the README's Backups)")
if settings.backup_prune:
    backup.prune(platform, settings)
else:
    backup.now(platform, settings)
