"""qmailhost: a personal qmail mail host, as code. The table of contents.

    pyinfra inventory/<site>.py deploy.py [--dry --diff]

Settings are read and validated once (every component's, collected by
qmailhost/settings.py), the platform decided once from facts (qmailhost/platform.py:
Debian or NetBSD, and the names of its package and service backends), and the distfiles
it builds from fetched and verified on the laptop (qmailhost/sources.py) before any
operation; then each component (tasks/<component>.py, with its files in
files/<component>/) adds its operations, one call each, in stage order: packages and
users, builds, configuration, services, checks. pyinfra prints each operation under its
component's name ("stunnel | Write stunnel's config"). Restarts follow real changes only.
"""

from pyinfra import host

from qmailhost import builds, checks, facts
from qmailhost.backends import packages, services
from qmailhost.platform import detect
from qmailhost.registry import needs
from qmailhost.settings import Settings
from tasks import (
    accounts,
    acme,
    backup,
    checkpassword,
    dkim,
    health,
    imap,
    limits,
    mess822,
    qmail,
    resolver,
    smtpd,
    spam,
    spamdyke,
    stunnel,
    submission,
    tls,
    tmda,
    updates,
)

settings = Settings.from_host_data(host.data.dict(), inventory_name=host.name)
platform = detect()
mode = submission.mode_for(settings, platform)
fetched = builds.fetch_all(settings, needs(platform, settings).builds)
checksums = {name: distfile.sha512 for name, (distfile, _) in fetched.items()}
signer = dkim.signer(platform, settings)  # what qmail-send runs as qmail-remote (None: qmail-remote)
facts.watch(settings, platform)

# Packages (what every component declares it needs), users, sources
packages.install(platform, settings)
tmda.converge(platform, mode)  # before anything listens on 587: TMDA's stunnel stanza may hold it
qmail.users(platform)
submission.user(platform)
tls.group(platform)  # before the builds: spamdyke-qrv is installed for this group only
distfiles = builds.upload(fetched)

# Builds (each only when its inputs changed; only what the platform builds itself)
qmail.install(platform, distfiles, checksums)
mess822.install(platform, distfiles, checksums)
checkpassword.install(platform, distfiles, checksums)
spamdyke.install(platform, distfiles, checksums)
builds.run_all()  # side by side, each only when its inputs changed

# Configuration
control = qmail.configure(platform, settings, remote=signer)
qmail.outbound_tls(platform, settings)
qmail.aliases(platform, settings)
qmail.sendmail(platform)
accounts.configure(platform, settings, brake_user=submission.USER)
dkim.configure(platform, settings)  # keys made once; the signer qmail-send runs, the inbound filter
tls_pair = tls.configure(platform, settings)  # self-signed, or the laptop's
tls_pair = acme.configure(platform, settings, tls_pair)  # under tls: acme, the CA's
limits.configure(platform, settings)  # what one address may hold (nftables), before the listeners
updates.configure(platform, settings)  # security updates unattended, restart-stale after apt (NetBSD: the daily audit)

# Services (daemontools or rc.d: qmailhost/backends/services.py)
services.supervisor(platform)
qmail.service(platform, control, qmail.build_identity(checksums), remote=signer)
resolver.configure(platform, settings)
spam.configure(platform, settings)  # after the resolver it asks, before port 25's filter asks it
smtpd.configure(platform, settings)
submission.configure(platform, settings, mode)
stunnel.configure(platform, settings, tls_pair, mode)
imap.configure(platform, settings, tls_pair)
acme.renewal(platform, settings)
backup.configure(platform, settings)  # restic on a schedule (daemontools loop; cron on NetBSD), retired when unset
health.configure(platform, settings)  # the status checks, run by the host itself every health_every; alerts
services.settle(platform)

# Status checks from outside, once the last operation has run (verify_after_deploy=false skips them)
checks.after_deploy(settings, platform)
