"""qmailhost: a personal qmail mail host, as code. The table of contents.

    pyinfra inventory/<site>.py deploy.py [--dry --diff]

Settings are read and validated once (every component's, collected by
qmailhost/core/settings.py), the platform decided once from facts
(qmailhost/core/platform.py: Debian or NetBSD, with its package and service backends)
and the distfiles it builds from fetched and verified on the laptop
(qmailhost/core/sources.py) before any operation; then each component
(qmailhost/<component>/) adds its operations, one call each, in stage order: packages
and users, builds, configuration, services, checks. Restarts follow real changes only.
"""

from pyinfra import host

from qmailhost import (
    accounts,
    acme,
    checkpassword,
    dkim,
    imap,
    mess822,
    qmail,
    resolver,
    smtpd,
    spamdyke,
    stunnel,
    submission,
    tls,
    tmda,
)
from qmailhost.backends import packages, services
from qmailhost.core import builds, checks, facts
from qmailhost.core.platform import detect
from qmailhost.core.settings import Settings

settings = Settings.from_host_data(host.data.dict(), inventory_name=host.name)
platform = detect()
mode = submission.mode_for(settings, platform)
fetched = builds.fetch_all(settings, platform.builds_from_source)
checksums = {name: distfile.sha512 for name, (distfile, _) in fetched.items()}
facts.watch(settings, platform)

# Packages, users, sources
packages.install(platform, (*mode.packages, *imap.packages(platform, settings), *acme.packages(platform, settings),
                            *dkim.packages(platform, settings)))
tmda.converge(platform, mode)  # before anything listens on 587: TMDA's stunnel stanza may hold it
qmail.users(platform)
submission.user(platform)
distfiles = builds.upload(fetched)

# Builds (each only when its inputs changed; only what the platform builds itself)
qmail.install(platform, distfiles, checksums)
mess822.install(platform, distfiles, checksums)
checkpassword.install(platform, distfiles, checksums)
spamdyke.install(platform, distfiles, checksums)
builds.run_all()  # side by side, each only when its inputs changed

# Configuration
control = qmail.configure(platform, settings, remote=dkim.signer(platform, settings))
qmail.outbound_tls.configure(platform, settings)
qmail.aliases(platform, settings)
qmail.sendmail(platform)
accounts.configure(platform, settings)
dkim.configure(platform, settings)  # keys made once; the signer qmail-send runs, the inbound filter
tls_pair = tls.configure(platform, settings)  # self-signed, or the laptop's
tls_pair = acme.configure(platform, settings, tls_pair)  # under tls: acme, the CA's

# Services (daemontools or rc.d: qmailhost/backends/services.py)
services.backend(platform).supervisor(platform)
qmail.service(platform, control, qmail.build_identity(checksums), remote=dkim.signer(platform, settings))
resolver.configure(platform, settings)
smtpd.configure(platform, settings)
submission.configure(platform, settings, mode)
stunnel.configure(platform, settings, tls_pair, mode)
imap.configure(platform, settings, tls_pair)
acme.renewal(platform, settings)
services.backend(platform).settle(platform)

# Status checks from outside, once the last operation has run (verify_after_deploy=false skips them)
checks.after_deploy(settings, platform)
