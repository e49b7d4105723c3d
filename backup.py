"""qmailhost's backup, now.

    pyinfra inventory/<site>.py backup.py [--data backup_dir=... --data backup_queue=true]
    pyinfra inventory/<site>.py backup.py --data backup_prune=true

With backup_repository (the host backs itself up with restic on a schedule: tasks/backup.py),
one backup runs now, on the host, with the script its schedule runs, and the snapshot it
saved is reported; nothing else on the host changes. With backup_prune, retention instead:
forget by backup_keep and prune, from the laptop, through backup_prune_repository (a way
to the repository that may delete, where backup_repository is an append-only server).

Without it (the laptop format: run from the laptop, nothing on the host changes), what a
rebuilt host needs and the inventory does not hold is copied into a dated directory on
this laptop. Carried: what the components' backup parts name (every account's Maildir, the
self-signed TLS pair, the TMDA archive if any), the password hashes, and with
backup_queue the pending messages, listed and streamed with the platform's own tools
(GNU find and tar on Debian; find, stat and pax on NetBSD). Unchanged messages are
hard-linked from the previous backup, not fetched again; a full or unwritable
backup_dir is refused before anything is written. See qmailhost/recovery/.
"""

from pyinfra import host
from pyinfra.operations import python

from qmailhost import recovery
from qmailhost.platform import detect
from qmailhost.settings import Settings
from tasks import backup

settings = Settings.from_host_data(host.data.dict(), inventory_name=host.name)
platform = detect()
if settings.backup_prune:
    backup.prune(platform, settings)
elif settings.backup_repository:
    backup.now(platform, settings)
else:
    options = recovery.options(settings)
    remote = recovery.remote_for(host.data.dict(), host.name)
    plan = recovery.plan_backup(remote, settings, options, platform)
    python.call(name=f"Back up {settings.hostname} to {options.backup_root}", function=recovery.run_backup,
                plan=plan)
